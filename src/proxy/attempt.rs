//! One upstream attempt: select a key, forward, classify the answer, report it to the store.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::task::JoinHandle;

use super::body::{Ending, ObservedBody};
use super::successes::Ticket;
use super::{forward, Call};
use crate::app::AppState;
use crate::error::ApiError;
use crate::pool::classify::{classify, is_model_not_found};
use crate::pool::{KeyId, Outcome};
use crate::store::{random_draw, Chosen, Report, SelectRequest, Selection, Unavailable};
use crate::usage::Usage;

/// Error bodies are read whole to classify them (quota, model not found); at most this much.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub(crate) enum Step {
    /// An answer for the client (success, or the caller's own 4xx passed through).
    Done(Response),
    /// No key could be selected before any attempt failed.
    NoKey(ApiError),
    Failed(Failure),
}

/// What the failed attempts of a request add up to.
#[derive(Default)]
pub(crate) struct Failure {
    pub attempts: u32,
    pub key: Option<KeyId>,
    pub group: Option<String>,
    pub outcome: Option<Outcome>,
    pub timed_out: bool,
    /// Some attempt failed for a reason the upstream itself caused (5xx, timeout, connect).
    pub upstream_broke: bool,
    pub model_missing: bool,
    /// The upstream's own answer to pass through (model not found on the last model).
    pub passthrough: Option<(StatusCode, HeaderMap, Bytes)>,
    pub no_key: Option<ApiError>,
    /// Every failure so far took its key out of rotation by rate limit, quota or revocation.
    pub keys_refused: bool,
    /// Seconds until the earliest cooldown this request caused ends.
    pub retry_after_s: Option<u64>,
}

impl Failure {
    pub fn merge(self, next: Failure) -> Failure {
        Failure {
            attempts: self.attempts + next.attempts,
            key: next.key.or(self.key),
            group: next.group.or(self.group),
            outcome: next.outcome.or(self.outcome),
            timed_out: next
                .outcome
                .map_or(self.timed_out, |o| o == Outcome::Timeout),
            upstream_broke: self.upstream_broke || next.upstream_broke,
            model_missing: next.model_missing,
            passthrough: next.passthrough.or(self.passthrough),
            no_key: next.no_key.or(self.no_key),
            keys_refused: next.keys_refused && (self.keys_refused || self.attempts == 0),
            retry_after_s: match (self.retry_after_s, next.retry_after_s) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    pub fn into_response(self, call: &Call) -> Response {
        let mut resp =
            if let (true, Some((status, headers, body))) = (self.model_missing, self.passthrough) {
                let mut r = (status, body).into_response();
                *r.headers_mut() = forward::downstream_headers(&headers);
                r
            } else if self.timed_out {
                ApiError::upstream_failed(true, call.attempts).into_response()
            } else if self.upstream_broke || self.outcome.is_none() {
                ApiError::upstream_failed(false, call.attempts).into_response()
            } else if let Some(e) = self.no_key {
                e.into_response()
            } else if self.keys_refused {
                ApiError::no_key(self.retry_after_s).into_response()
            } else {
                ApiError::upstream_failed(false, call.attempts).into_response()
            };
        tracing::warn!(request_id = %call.request_id, pool = %call.pool.config.name,
            key = ?self.key.as_ref().map(KeyId::as_str), outcome = ?self.outcome.map(Outcome::as_str),
            attempts = call.attempts, status = resp.status().as_u16(),
            latency_ms = call.started.elapsed().as_millis() as u64, "request failed upstream");
        keygate_headers(
            resp.headers_mut(),
            self.key.as_ref(),
            self.group.as_deref(),
            call.attempts,
        );
        resp
    }
}

fn keygate_headers(h: &mut HeaderMap, key: Option<&KeyId>, group: Option<&str>, attempts: u32) {
    if let Some(k) = key {
        forward::set_header(h, "x-keygate-key", k.as_str());
    }
    if let Some(g) = group {
        forward::set_header(h, "x-keygate-group", g);
    }
    forward::set_header(h, "x-keygate-attempts", &attempts.to_string());
}

/// Seconds until the earliest recovery (at least 1), on the store's clock.
fn retry_after_s(u: &Unavailable) -> Option<u64> {
    u.retry_at_ms
        .map(|at| at.saturating_sub(u.now_ms).div_ceil(1000).max(1))
}

pub(crate) struct Attempt<'a> {
    pub body: &'a Bytes,
    pub model: Option<&'a str>,
    pub tried: &'a [KeyId],
}

impl Attempt<'_> {
    pub async fn run(self, call: &mut Call) -> Step {
        let pool_name = call.pool.config.name.clone();
        let req = SelectRequest {
            route: call.route,
            exclude: self.tried,
            rand: random_draw(),
            now_ms: None,
        };
        let chosen = match call.state.store.select(&pool_name, &req).await {
            Ok(Selection::Key(c)) => c,
            Ok(Selection::None(u)) => {
                call.state
                    .metrics
                    .no_key_available
                    .with_label_values(&[&pool_name])
                    .inc();
                return Step::NoKey(ApiError::no_key(retry_after_s(&u)));
            }
            Err(e) => {
                tracing::error!(request_id = %call.request_id, pool = %pool_name, error = %e, "store select failed");
                return Step::NoKey(ApiError::store_unavailable());
            }
        };
        let Some(auth) = call.pool.auth.get(&chosen.key).cloned() else {
            // Another replica's newer config added this key; this replica has no secret for it.
            return Step::Failed(Failure {
                key: Some(chosen.key),
                ..Failure::default()
            });
        };
        if !call.canary_counted {
            call.canary_counted = true;
            let fb = if chosen.fallback { "true" } else { "false" };
            call.state
                .metrics
                .canary_requests
                .with_label_values(&[&pool_name, &chosen.group, fb])
                .inc();
        }
        call.attempts += 1;
        let remaining = call
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        let first_byte =
            Duration::from_millis(call.pool.config.timeouts.first_byte_ms).min(remaining);
        let send = call
            .pool
            .http
            .request(call.method.clone(), call.url.clone())
            .headers(forward::upstream_headers(&call.headers, &auth))
            .body(self.body.clone())
            .send();
        let started = Instant::now();
        match tokio::time::timeout(first_byte, send).await {
            Err(_) => failed(call, chosen, Outcome::Timeout, 0, None, started).await,
            Ok(Err(e)) => {
                let outcome = if e.is_connect() {
                    Outcome::ConnectError
                } else if e.is_timeout() {
                    Outcome::Timeout
                } else {
                    Outcome::ServerError
                };
                tracing::debug!(request_id = %call.request_id, error = %e.without_url(), "upstream transport error");
                failed(call, chosen, outcome, 0, None, started).await
            }
            Ok(Ok(resp)) if resp.status().is_success() => {
                succeeded(call, chosen, resp, started, self.model)
            }
            Ok(Ok(resp)) => answered_error(call, chosen, resp, started).await,
        }
    }
}

/// Where a success report stands: sent by its own background task, or buffered in a batch.
enum Reported {
    Task(JoinHandle<()>),
    Batched(Ticket),
}

impl Reported {
    /// Returns once the success reached the store (flushing its batch early if need be).
    async fn landed(self) {
        match self {
            Reported::Task(task) => {
                let _ = task.await;
            }
            Reported::Batched(ticket) => ticket.landed().await,
        }
    }
}

/// Reports a success without holding up the response: buffered for the next batch when it is a
/// plain one; a probe's (it closes the breaker) and one with a cooldown hint go at once.
fn report_success(
    state: &Arc<AppState>,
    pool: &str,
    chosen: &Chosen,
    cooldown_ms: Option<u64>,
    status: u16,
) -> Reported {
    if !chosen.probe && cooldown_ms.is_none() {
        if let Some(ticket) = state.successes.record(pool, &chosen.key, status) {
            return Reported::Batched(ticket);
        }
    }
    Reported::Task(report_in_background(
        state,
        pool,
        chosen,
        Outcome::Success,
        cooldown_ms,
        status,
        None,
    ))
}

/// Reports an outcome without holding up the response; when `after` is given (the success
/// reported when a streamed answer began), waits until it landed first, so a mid-stream failure
/// is applied after that success and not wiped out by it.
fn report_in_background(
    state: &Arc<AppState>,
    pool: &str,
    chosen: &Chosen,
    outcome: Outcome,
    cooldown_ms: Option<u64>,
    status: u16,
    after: Option<Reported>,
) -> JoinHandle<()> {
    let (state2, pool, key, probe) = (
        state.clone(),
        pool.to_string(),
        chosen.key.clone(),
        chosen.probe,
    );
    state.tasks.spawn(async move {
        if let Some(first) = after {
            first.landed().await;
        }
        let r = Report {
            key: &key,
            outcome,
            cooldown_ms,
            http_status: status,
            probe,
            now_ms: None,
        };
        match state2.store.report(&pool, &r).await {
            Ok(rc) if rc.changed => {
                state2
                    .metrics
                    .record_cooldown(&pool, key.as_str(), rc.state, outcome)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(pool = %pool, key = %key, error = %e, "store report failed"),
        }
    })
}

fn succeeded(
    call: &mut Call,
    chosen: Chosen,
    resp: reqwest::Response,
    started: Instant,
    model: Option<&str>,
) -> Step {
    let pool = call.pool.config.name.clone();
    let verdict = classify(resp.status(), resp.headers(), None, SystemTime::now());
    call.state.metrics.record_attempt(
        &pool,
        chosen.key.as_str(),
        &chosen.group,
        Outcome::Success,
        started,
    );
    let cooldown = verdict.cooldown.map(|d| d.as_millis() as u64);
    let reported = report_success(
        &call.state,
        &pool,
        &chosen,
        cooldown,
        resp.status().as_u16(),
    );
    let status = resp.status();
    let mut headers = forward::downstream_headers(resp.headers());
    keygate_headers(
        &mut headers,
        Some(&chosen.key),
        Some(&chosen.group),
        call.attempts,
    );
    tracing::info!(request_id = %call.request_id, pool = %pool, key = %chosen.key, group = %chosen.group,
        outcome = "success", status = status.as_u16(), attempts = call.attempts,
        latency_ms = started.elapsed().as_millis() as u64, "proxied");
    let on_end = stream_end(
        call.state.clone(),
        pool,
        chosen,
        model.map(|m| m.chars().take(64).collect()),
        reported,
    );
    let body = ObservedBody::new(resp, call.deadline, on_end);
    let mut out = Response::new(Body::from_stream(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Step::Done(out)
}

/// Counts tokens when the body ends; a body the upstream broke counts against the key.
fn stream_end(
    state: Arc<AppState>,
    pool: String,
    chosen: Chosen,
    model: Option<String>,
    success_report: Reported,
) -> super::body::OnEnd {
    Box::new(
        move |ending: Ending, usage: Option<Usage>, answered: Option<String>| {
            if let Some(u) = usage {
                // The requested model (allowlisted when the pool has a list), else the one the
                // upstream named; bounded in length either way.
                let answered: Option<String> = answered.map(|m| m.chars().take(64).collect());
                let m = model
                    .as_deref()
                    .or(answered.as_deref())
                    .unwrap_or("unknown");
                let key = chosen.key.as_str();
                state
                    .metrics
                    .record_tokens(&pool, key, m, u.prompt_tokens, u.completion_tokens);
            }
            if ending == Ending::UpstreamError {
                tracing::warn!(pool = %pool, key = %chosen.key, "upstream broke off the response body");
                let after = Some(success_report);
                report_in_background(&state, &pool, &chosen, Outcome::ServerError, None, 0, after);
            }
        },
    )
}

async fn answered_error(
    call: &mut Call,
    chosen: Chosen,
    resp: reqwest::Response,
    started: Instant,
) -> Step {
    let status = resp.status();
    let headers = resp.headers().clone();
    let remaining = call
        .deadline
        .saturating_duration_since(tokio::time::Instant::now());
    let read = http_body_util::Limited::new(reqwest::Body::from(resp), MAX_ERROR_BODY).collect();
    let body = match tokio::time::timeout(remaining, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => Bytes::new(),
    };
    let verdict = classify(status, &headers, Some(&body), SystemTime::now());
    // What may reach the client (a passed-through 4xx) never carries the key it was sent with.
    let mut headers = headers;
    let secret = (call.pool.config.keys.iter())
        .find(|k| k.id == chosen.key.as_str())
        .map(|k| &k.secret);
    let body = match secret {
        Some(secret) => forward::redact_secret(&mut headers, body, secret),
        None => body,
    };
    if verdict.outcome != Outcome::ClientError {
        let hint = verdict.cooldown.map(|d| d.as_millis() as u64);
        return failed(
            call,
            chosen,
            verdict.outcome,
            status.as_u16(),
            hint,
            started,
        )
        .await;
    }
    let pool = call.pool.config.name.clone();
    call.state.metrics.record_attempt(
        &pool,
        chosen.key.as_str(),
        &chosen.group,
        Outcome::ClientError,
        started,
    );
    if chosen.probe {
        report_in_background(
            &call.state,
            &pool,
            &chosen,
            Outcome::ClientError,
            None,
            status.as_u16(),
            None,
        );
    }
    if is_model_not_found(status, &body) {
        return Step::Failed(Failure {
            key: Some(chosen.key),
            group: Some(chosen.group),
            outcome: Some(Outcome::ClientError),
            model_missing: true,
            passthrough: Some((status, headers, body)),
            ..Failure::default()
        });
    }
    let mut out = (status, body).into_response();
    let mut h = forward::downstream_headers(&headers);
    h.remove(http::header::CONTENT_LENGTH);
    keygate_headers(
        &mut h,
        Some(&chosen.key),
        Some(&chosen.group),
        call.attempts,
    );
    out.headers_mut().extend(h);
    Step::Done(out)
}

async fn failed(
    call: &mut Call,
    chosen: Chosen,
    outcome: Outcome,
    status: u16,
    hint: Option<u64>,
    started: Instant,
) -> Step {
    let pool = call.pool.config.name.clone();
    call.state
        .metrics
        .record_attempt(&pool, chosen.key.as_str(), &chosen.group, outcome, started);
    let r = Report {
        key: &chosen.key,
        outcome,
        cooldown_ms: hint,
        http_status: status,
        probe: chosen.probe,
        now_ms: None,
    };
    let mut retry_after_s = None;
    match call.state.store.report(&pool, &r).await {
        Ok(rc) => {
            if rc.changed {
                call.state
                    .metrics
                    .record_cooldown(&pool, chosen.key.as_str(), rc.state, outcome);
            }
            if rc.cooldown_until_ms > 0 {
                retry_after_s = Some(
                    rc.cooldown_until_ms
                        .saturating_sub(rc.now_ms)
                        .div_ceil(1000)
                        .max(1),
                );
            }
        }
        Err(e) => {
            tracing::warn!(request_id = %call.request_id, pool = %pool, error = %e, "store report failed")
        }
    }
    tracing::info!(request_id = %call.request_id, pool = %pool, key = %chosen.key, outcome = outcome.as_str(),
        status, attempt = call.attempts, "attempt failed; trying another key");
    let broke = matches!(
        outcome,
        Outcome::ServerError | Outcome::Timeout | Outcome::ConnectError
    );
    Step::Failed(Failure {
        attempts: 1,
        key: Some(chosen.key),
        group: Some(chosen.group),
        outcome: Some(outcome),
        timed_out: outcome == Outcome::Timeout,
        upstream_broke: broke,
        keys_refused: !broke,
        retry_after_s,
        ..Failure::default()
    })
}
