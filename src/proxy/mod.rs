//! The `/v1/*` handler: authenticate the client, read and check the body, route (canary), then
//! select → forward → report → retry on another key, falling back to other models when asked.
//! See `attempt.rs` for one upstream attempt.

mod attempt;
pub mod auth;
pub mod body;
pub mod forward;
pub mod key_budget;
mod model_list;
pub mod models;
mod outcome;
mod probe;
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
    /// The client's name (from its token), for the per-client circuit.
    pub client: String,
    /// The path is an inference endpoint (`classify::is_inference_path`).
    pub inference: bool,
    pub route: Route,
    pub started: Instant,
    pub deadline: tokio::time::Instant,
    /// Until the response head of some attempt must have arrived (`first_byte_total_ms`): a
    /// hung upstream fails the request once, not once per attempt.
    pub first_byte_deadline: tokio::time::Instant,
    /// The longest `Retry-After` keygate announces (`server.max_retry_after_s`).
    pub max_retry_after_s: u64,
    /// Upstream attempts made so far (all models).
    pub attempts: u32,
    pub canary_counted: bool,
    /// The tokens each attempt reserves on a key with a token budget (0: the pool has none).
    pub tokens: u64,
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
    proxy(state, remote, req).await
}

/// A request `routes::public` sends here without the router: what [`handle`] does, with the
/// peer address from the connection.
pub async fn serve(state: Arc<AppState>, remote: SocketAddr, req: Request) -> Response {
    proxy(state, Some(remote), req).await
}

/// `/v1` itself: nothing to proxy.
pub async fn handle_root() -> Response {
    ApiError::unknown_path().into_response()
}

async fn proxy(state: Arc<AppState>, remote: Option<SocketAddr>, req: Request) -> Response {
    let path = req
        .uri()
        .path()
        .strip_prefix("/v1/")
        .unwrap_or_default()
        .to_string();
    let request_id = route::request_id(req.headers());
    let mut resp = match prepare_and_run(state, path, remote, req, &request_id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(request_id = %request_id, status = e.status.as_u16(), code = e.code, "request refused");
            e.into_response()
        }
    };
    forward::set_header(resp.headers_mut(), forward::X_REQUEST_ID, &request_id);
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
    if let Some(list) = model_list::allowlist_answer(&parts.method, &path, &pool.config) {
        return Ok(list);
    }
    let uri = forward::upstream_uri(&pool.base_url, &path, parts.uri.query())?;
    forward::check_path(&pool.config.paths, &path)?;
    let server = &gw.config.server;
    let limits = &state.metrics.limits;
    let metrics = (&limits.buffered_bytes, &limits.budget_refusals);
    let mut admission = (state.budgets).admit(client, server.max_buffered_bytes, metrics)?;
    let bytes = request::read_body(
        body,
        &parts.headers,
        server.max_body_bytes,
        Duration::from_millis(server.body_read_timeout_ms),
        &mut admission,
    )
    .await?;
    let fallbacks = &pool.config.fallbacks;
    let inspected = request::inspect(&parts.method, &parts.headers, &bytes, |m| {
        fallbacks.contains_key(m)
    })?;
    let inference = crate::upstream::classify::is_inference_path(&path);
    let (method, headers) = (&parts.method, &parts.headers);
    models::check_allowed(method, headers, &bytes, &pool.config.models, inference)?;
    let tokens = match pool.spec.budget.token_budgets {
        true => key_budget::reservation(
            bytes.len(),
            inspected.max_completion,
            &pool.spec,
            pool.config.limits.default_completion_tokens,
        )?,
        false => 0,
    };
    let who = route::Identity {
        headers: &parts.headers,
        client: &client.name,
        body_user: inspected.user.as_deref(),
        remote,
    };
    let route = route::route_for(&who, pool.config.canary.sticky_by);
    let total = Duration::from_millis(pool.config.timeouts.total_ms);
    let first_byte = Duration::from_millis(pool.config.timeouts.first_byte_budget_ms());
    let now = tokio::time::Instant::now();
    let mut call = Call {
        state: state.clone(),
        pool,
        request_id: request_id.to_string(),
        method: parts.method,
        uri,
        headers: parts.headers,
        client: client.name.clone(),
        inference,
        route,
        started: Instant::now(),
        deadline: now + total,
        first_byte_deadline: now + first_byte,
        max_retry_after_s: server.max_retry_after_s,
        attempts: 0,
        canary_counted: false,
        tokens,
    };
    let resp = run_models(&mut call, bytes, inspected).await;
    // The body is no longer held; the client's place is, until the answer has been sent.
    admission.release_bytes();
    Ok(resp.map(|body| crate::server::Guarded::wrap(body, admission)))
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
                    forward::set_header(resp.headers_mut(), forward::X_KEYGATE_MODEL, m);
                }
                return resp;
            }
            Step::NoKey(e) => return e.into_response(),
            Step::Failed(f) => {
                if i + 1 < chain.len() {
                    tracing::info!(request_id = %call.request_id, model = %model.as_deref().unwrap_or("-"), "falling back to the next model");
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
        let now = tokio::time::Instant::now();
        if now >= call.deadline || now >= call.first_byte_deadline {
            failure.timed_out = true;
            break;
        }
        if let Some(refused) = circuit_refusal(call) {
            return Step::NoKey(refused);
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

/// The 429 for a client whose circuit is open on this pool (counted), if it is.
fn circuit_refusal(call: &Call) -> Option<ApiError> {
    let pool = call.pool.config.name.as_str();
    let left = (call.state.circuits).open_for(pool, &call.client, Instant::now())?;
    (call.state.metrics.client_rejections)
        .with_label_values(&[call.client.as_str(), crate::state::circuit::CIRCUIT_OPEN])
        .inc();
    tracing::warn!(request_id = %call.request_id, pool = %pool, client = %call.client,
        "request refused: the client's circuit is open");
    Some(crate::state::circuit::refusal(left))
}
