//! The `/v1/*` handler: authenticate the client, read and check the body, route (canary), then
//! select → forward → report → retry on another key, falling back to other models when asked.
//! See `attempt.rs` for one upstream attempt.

mod attempt;
pub mod auth;
pub mod body;
pub mod forward;
mod outcome;
mod report;
pub mod request;
pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::error::ApiError;
use crate::pool::{KeyId, Outcome};
use crate::state::{AppState, PoolRuntime};
use crate::store::Route;
use attempt::Attempt;
use outcome::{Failure, Step};

/// Everything one request carries through its attempts.
pub(crate) struct Call {
    pub state: Arc<AppState>,
    pub pool: Arc<PoolRuntime>,
    pub request_id: String,
    pub method: http::Method,
    /// The upstream URI (`forward::upstream_uri`, built once for every attempt).
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub route: Route,
    pub started: Instant,
    pub deadline: tokio::time::Instant,
    /// Upstream attempts made so far (all models).
    pub attempts: u32,
    pub canary_counted: bool,
}

/// `ANY /v1/{*path}`. The path is taken from the request as sent, still percent-encoded, not
/// from the decoded route parameter: the upstream gets exactly the path the client sent (no
/// decode-then-encode changing what `%2F`, `%25` or `%3F` mean), and `upstream_url` sees (and
/// refuses) encoded dots, slashes and backslashes.
pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let path = req
        .uri()
        .path()
        .strip_prefix("/v1/")
        .unwrap_or_default()
        .to_string();
    proxy(state, path, remote, req).await
}

/// `/v1` itself: nothing to proxy.
pub async fn handle_root() -> Response {
    ApiError::not_found("Unknown path; keygate serves /v1/*.").into_response()
}

async fn proxy(
    state: Arc<AppState>,
    path: String,
    remote: Option<SocketAddr>,
    req: Request,
) -> Response {
    let request_id = route::request_id(req.headers());
    let mut resp = match prepare_and_run(state, path, remote, req, &request_id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(request_id = %request_id, status = e.status.as_u16(), code = e.code, "request refused");
            e.into_response()
        }
    };
    forward::set_header(resp.headers_mut(), "x-request-id", &request_id);
    resp
}

async fn prepare_and_run(
    state: Arc<AppState>,
    path: String,
    remote: Option<SocketAddr>,
    req: Request,
    request_id: &str,
) -> Result<Response, ApiError> {
    let gw = state.gateway();
    let (parts, body) = req.into_parts();
    let client = auth::authenticate(&gw, &parts.headers).ok_or_else(ApiError::unauthorized)?;
    let pool = auth::choose_pool(&gw, client, &parts.headers)?;
    let uri = forward::upstream_uri(&pool.base_url, &path, parts.uri.query())?;
    let server = &gw.config.server;
    let bytes = request::read_body(
        body,
        &parts.headers,
        server.max_body_bytes,
        Duration::from_millis(server.body_read_timeout_ms),
    )
    .await?;
    let fallbacks = &pool.config.fallbacks;
    let inspected = request::inspect(&parts.method, &parts.headers, &bytes, |m| {
        fallbacks.contains_key(m)
    })?;
    if let Some(m) = &inspected.model {
        let allowed = &pool.config.models;
        if !allowed.is_empty() && !allowed.contains(m) {
            return Err(ApiError::bad_request(
                "model_not_allowed",
                format!(
                    "The model `{m}` is not allowed on this pool. Allowed models: {}.",
                    allowed.join(", ")
                ),
            ));
        }
    }
    let route = route::route_for(&parts.headers, &client.name, remote);
    let total = Duration::from_millis(pool.config.timeouts.total_ms);
    let mut call = Call {
        state: state.clone(),
        pool,
        request_id: request_id.to_string(),
        method: parts.method,
        uri,
        headers: parts.headers,
        route,
        started: Instant::now(),
        deadline: tokio::time::Instant::now() + total,
        attempts: 0,
        canary_counted: false,
    };
    Ok(run_models(&mut call, bytes, inspected).await)
}

/// Runs the requested model, then its fallbacks while the upstream says the model is missing
/// or every key failed for it.
async fn run_models(call: &mut Call, body: Bytes, inspected: request::Inspected) -> Response {
    let mut chain: Vec<Option<String>> = vec![inspected.model.clone()];
    if let Some(m) = &inspected.model {
        if let Some(next) = call.pool.config.fallbacks.get(m) {
            chain.extend(next.iter().cloned().map(Some));
        }
    }
    let mut last = Failure::default();
    for (i, model) in chain.iter().enumerate() {
        let body = match (&inspected.json, model) {
            (Some(json), Some(m)) if i > 0 => request::with_model(json, m),
            _ => body.clone(),
        };
        match run_keys(call, &body, model.as_deref()).await {
            Step::Done(mut resp) => {
                if let Some(m) = model {
                    forward::set_header(resp.headers_mut(), "x-keygate-model", m);
                }
                return resp;
            }
            Step::NoKey(e) => return e.into_response(),
            Step::Failed(f) => {
                if i + 1 < chain.len() {
                    tracing::info!(request_id = %call.request_id, model = ?model, "falling back to the next model");
                }
                last = f;
            }
        }
    }
    last.into_response(call)
}

/// Tries keys for one model until one answers, up to `max_attempts`.
async fn run_keys(call: &mut Call, body: &Bytes, model: Option<&str>) -> Step {
    let mut tried: Vec<KeyId> = Vec::new();
    let mut failure = Failure::default();
    let mut model_attempts = 0;
    while model_attempts < call.pool.config.max_attempts {
        if tokio::time::Instant::now() >= call.deadline {
            failure.timed_out = true;
            break;
        }
        let attempt = Attempt {
            body,
            model,
            tried: &tried,
        };
        match attempt.run(call).await {
            Step::Done(r) => return Step::Done(r),
            Step::NoKey(e) if failure.attempts == 0 => return Step::NoKey(e),
            Step::NoKey(e) => {
                failure.no_key = Some(e);
                break;
            }
            Step::Failed(f) => {
                model_attempts += 1;
                if let Some(k) = &f.key {
                    tried.push(k.clone());
                }
                let reason = f.outcome.unwrap_or(Outcome::ServerError);
                if f.model_missing {
                    return Step::Failed(failure.merge(f));
                }
                failure = failure.merge(f);
                if model_attempts < call.pool.config.max_attempts {
                    call.state
                        .metrics
                        .retries
                        .with_label_values(&[&call.pool.config.name, reason.as_str()])
                        .inc();
                }
            }
        }
    }
    Step::Failed(failure)
}
