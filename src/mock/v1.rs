//! The `/v1` handler: records and counts each request, takes its key's next behaviour, and
//! answers it on the endpoint asked for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use super::behavior::Behavior;
use super::openai::{self, error_response, json_response};
use super::pace::{paced_json, sse_response, Pace};
use super::responses;
use super::state::MockState;

/// Larger request bodies answer 413.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Numbers completion ids: unique within the process, and cheaper than a UUID per request.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The endpoint a request asks for.
enum Endpoint {
    Chat,
    Embeddings,
    Responses,
    Models,
    Model(String),
    Unknown { method: Method, path: String },
}

impl Endpoint {
    fn of(method: &Method, path: &str) -> Endpoint {
        let trimmed = path.trim_end_matches('/');
        match (method, trimmed) {
            (&Method::POST, "/v1/chat/completions") => Endpoint::Chat,
            (&Method::POST, "/v1/embeddings") => Endpoint::Embeddings,
            (&Method::POST, "/v1/responses") => Endpoint::Responses,
            (&Method::GET, "/v1/models") => Endpoint::Models,
            (&Method::GET, _) if trimmed.starts_with("/v1/models/") => {
                Endpoint::Model(trimmed["/v1/models/".len()..].to_owned())
            }
            _ => Endpoint::Unknown {
                method: method.clone(),
                path: path.to_owned(),
            },
        }
    }
}

/// One request being answered.
struct Call {
    state: Arc<MockState>,
    endpoint: Endpoint,
    body: Bytes,
    /// The bearer secret, for the 401 message.
    secret: String,
}

/// `ANY /v1/{*path}`.
pub(super) async fn serve_v1(State(state): State<Arc<MockState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        let message = "The request body is too large or could not be read.";
        let kind = "invalid_request_error";
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, message, kind, None);
    };
    let secret = bearer_secret(&parts.headers);
    let endpoint = Endpoint::of(&parts.method, parts.uri.path());
    let refusal = state.rule_refusal(parts.uri.path(), &parts.headers, &body);
    state.record(parts.method, &parts.uri, parts.headers, body.clone());
    let Some(behavior) = state.next_behavior(secret.as_deref()) else {
        let message = "You didn't provide an API key. You need to provide your API key in an \
                       Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).";
        let kind = "invalid_request_error";
        return error_response(StatusCode::UNAUTHORIZED, message, kind, None);
    };
    let delay_ms = state.delay_ms();
    if delay_ms > 0 && !state.pause(delay_ms).await {
        return shutting_down();
    }
    if let (Behavior::Ok, Some(refusal)) = (&behavior, refusal) {
        return refusal;
    }
    let call = Call {
        state,
        endpoint,
        body,
        secret: secret.unwrap_or_default(),
    };
    answer(&call, behavior).await
}

/// Everything outside `/v1/...`.
pub(super) async fn fallback(method: Method, uri: axum::http::Uri) -> Response {
    openai::not_found(method.as_str(), uri.path())
}

fn bearer_secret(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    let secret = secret.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then(|| secret.to_owned())
}

fn shutting_down() -> Response {
    let message = "The mock upstream is shutting down.";
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        message,
        "server_error",
        None,
    )
}

/// Waits out `Delay` and `Hang`, then answers.
async fn answer(call: &Call, mut behavior: Behavior) -> Response {
    while let Behavior::Delay { ms, then } = behavior {
        if !call.state.pause(ms).await {
            return shutting_down();
        }
        behavior = *then;
    }
    if behavior == Behavior::Hang {
        // Only the server shutting down (or going away) ends the wait.
        let _ = call.state.stopping().wait_for(|stopping| *stopping).await;
        return shutting_down();
    }
    respond(call, behavior)
}

/// The answer for a behaviour that neither waits nor hangs.
fn respond(call: &Call, behavior: Behavior) -> Response {
    match behavior {
        Behavior::Ok => endpoint_answer(call, Pace::AllAtOnce),
        Behavior::StreamThenDrop { events } => endpoint_answer(call, Pace::DropAfter(events)),
        Behavior::SlowStream { interval_ms } => endpoint_answer(call, Pace::Every(interval_ms)),
        Behavior::RemainingZero { reset } => remaining_zero(call, &reset),
        Behavior::Leak { form, status } => super::leak::leak_response(&call.secret, form, status),
        Behavior::Status {
            status,
            headers,
            body,
        } => status_response(status, &headers, body),
        Behavior::RateLimited { retry_after } => rate_limited(retry_after.as_deref()),
        Behavior::Quota => {
            let message =
                "You exceeded your current quota, please check your plan and billing details.";
            let (status, quota) = (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota");
            error_response(status, message, quota, Some(quota))
        }
        Behavior::Unauthorized => {
            let message = format!(
                "Incorrect API key provided: {}. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                openai::masked(&call.secret)
            );
            let (status, kind) = (StatusCode::UNAUTHORIZED, "invalid_request_error");
            error_response(status, &message, kind, Some("invalid_api_key"))
        }
        Behavior::ServerError(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message =
                "The server had an error while processing your request. Sorry about that!";
            error_response(status, message, "server_error", None)
        }
        // `answer` has already waited these out.
        Behavior::Delay { .. } | Behavior::Hang => shutting_down(),
    }
}

fn rate_limited(retry_after: Option<&str>) -> Response {
    let body = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    let mut response = json_response(StatusCode::TOO_MANY_REQUESTS, body);
    if let Some(value) = retry_after.and_then(|value| HeaderValue::from_str(value).ok()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn status_response(status: u16, headers: &[(String, String)], body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, body);
    for (name, value) in headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => tracing::warn!(header = %name, "mock upstream skipped an invalid scripted header"),
        }
    }
    response
}

/// A normal answer that says the key has no requests left until `reset`.
fn remaining_zero(call: &Call, reset: &str) -> Response {
    let mut response = endpoint_answer(call, Pace::AllAtOnce);
    if response.status().is_success() {
        let headers = response.headers_mut();
        headers.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("0"),
        );
        if let Ok(reset) = HeaderValue::from_str(reset) {
            headers.insert("x-ratelimit-reset-requests", reset);
        }
    }
    response
}

/// The endpoint's own answer (or its 400/404), at `pace`.
fn endpoint_answer(call: &Call, pace: Pace) -> Response {
    let mut response = match &call.endpoint {
        Endpoint::Chat => match parse_request(call) {
            Ok((request, model)) => chat(call, &request, &model, pace),
            Err(rejected) => rejected.into_response(),
        },
        Endpoint::Embeddings => match parse_request(call) {
            Ok((request, model)) => paced_json(openai::embeddings(&model, &request), pace),
            Err(rejected) => rejected.into_response(),
        },
        Endpoint::Responses => match parse_request(call) {
            Ok((request, model)) => responses(call, &request, &model, pace),
            Err(rejected) => rejected.into_response(),
        },
        Endpoint::Models => {
            let models = call.state.listed_models();
            paced_json(openai::model_list(models.into_iter()), pace)
        }
        Endpoint::Model(model) if call.state.is_missing(model) => openai::model_not_found(model),
        Endpoint::Model(model) => paced_json(openai::model_object(model).to_string(), pace),
        Endpoint::Unknown { method, path } => openai::not_found(method.as_str(), path),
    };
    if response.status().is_success() {
        let headers = response.headers_mut();
        headers.insert(
            "x-ratelimit-limit-requests",
            HeaderValue::from_static("10000"),
        );
        headers.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("9999"),
        );
    }
    response
}

/// Why a request body was refused before any answer was built.
enum Rejected {
    Malformed(String),
    NoModel,
    MissingModel(String),
}

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        match self {
            Rejected::Malformed(error) => {
                let message =
                    format!("We could not parse the JSON body of your request. ({error})");
                openai::bad_request(&message, None)
            }
            Rejected::NoModel => {
                openai::bad_request("you must provide a model parameter", Some("model"))
            }
            Rejected::MissingModel(model) => openai::model_not_found(&model),
        }
    }
}

/// The JSON body and its `model`.
fn parse_request(call: &Call) -> Result<(Value, String), Rejected> {
    let request: Value = serde_json::from_slice(&call.body)
        .map_err(|error| Rejected::Malformed(error.to_string()))?;
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return Err(Rejected::NoModel);
    };
    if call.state.is_missing(model) {
        return Err(Rejected::MissingModel(model.to_owned()));
    }
    let model = model.to_owned();
    Ok((request, model))
}

fn chat(call: &Call, request: &Value, model: &str, pace: Pace) -> Response {
    let prompt_tokens = openai::chat_prompt_tokens(request);
    let id = format!(
        "chatcmpl-mock{:012x}",
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    );
    if !request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let body = openai::chat_completion(&id, model, prompt_tokens);
        return paced_json(body, pace);
    }
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let events = openai::chat_events(&id, model, prompt_tokens, include_usage);
    sse_response(
        events,
        pace,
        call.state.stopping(),
        call.state.open_streams_counter(),
    )
}

/// `POST /v1/responses`: the Responses API answer, JSON or (with `"stream": true`) named events.
fn responses(call: &Call, request: &Value, model: &str, pace: Pace) -> Response {
    let input_tokens = responses::input_tokens(request);
    let id = format!("resp_mock{:012x}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    if !request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return paced_json(responses::response(&id, model, input_tokens), pace);
    }
    let events = responses::response_events(&id, model, input_tokens);
    sse_response(
        events,
        pace,
        call.state.stopping(),
        call.state.open_streams_counter(),
    )
}
