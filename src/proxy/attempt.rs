//! One upstream attempt: select a key, forward, classify the answer, report it to the store.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;

use super::body::{Ending, ObservedBody, UpstreamResponse};
use super::key_budget::{pool_rate_limit_headers, provider_hints, BudgetTicket};
use super::outcome::{keygate_headers, Failure, Step};
use super::report::{report_in_background, report_success, Reported};
use super::{forward, Call};
use crate::error::ApiError;
use crate::pool::{KeyId, KeyState, Outcome};
use crate::state::upstream_client::Lease;
use crate::state::AppState;
use crate::store::KeyStoreExt;
use crate::store::{random_draw, Chosen, Report, SelectRequest, Selection, Unavailable};
use crate::upstream::classify::{
    classify, client_cause, is_model_not_found, success_verdict, Verdict,
};
use crate::upstream::headers::read_hints;
use crate::upstream::scrub::StreamScrub;
use crate::usage::Usage;

/// Error bodies are read whole to classify them (quota, model not found, the client's own
/// doing); at most this much.
const MAX_ERROR_BODY: usize = 64 * 1024;

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
        // The pool (an Arc, not its name copied): `call` is borrowed mutably below.
        let pool = call.pool.clone();
        let pool_name = pool.config.name.as_str();
        let req = SelectRequest {
            route: call.route,
            exclude: self.tried,
            rand: random_draw(),
            now_ms: None,
            tokens: call.tokens,
        };
        let chosen = match call.state.store.select(pool_name, &req).await {
            Ok(Selection::Key(c)) => c,
            Ok(Selection::None(u)) => {
                call.state
                    .metrics
                    .no_key_available
                    .with_label_values(&[pool_name])
                    .inc();
                let mut e = ApiError::no_key(retry_after_s(&u), &u.counts, u.budget_bound);
                tracing::info!(request_id = %call.request_id, pool = %pool_name, code = e.code,
                    counts = ?u.counts, "no key selectable");
                if e.code == "pool_exhausted" {
                    let pool = crate::health::pool_headroom(&call.state, pool_name, u.now_ms);
                    e.headers = pool_rate_limit_headers(&pool.await);
                }
                return Step::NoKey(e.retry_after_at_most(call.max_retry_after_s));
            }
            Err(e) => {
                tracing::error!(request_id = %call.request_id, pool = %pool_name, error = %e, "store select failed");
                return Step::NoKey(ApiError::store_unavailable());
            }
        };
        // Ends the request's lease and settles its tokens when dropped (on every path).
        let mut ticket = BudgetTicket::new(&call.state, pool_name, &chosen, call.tokens);
        if chosen.wait_ms > 0 {
            // A reserved future slot: the key's budget has room from then on.
            let wait = Duration::from_millis(chosen.wait_ms);
            let until = (tokio::time::Instant::now() + wait).min(call.deadline);
            tokio::time::sleep_until(until).await;
            (call
                .state
                .metrics
                .budget_wait
                .with_label_values(&[pool_name]))
            .observe(wait.as_secs_f64());
        }
        let Some(key_auth) = pool.auth.get(&chosen.key) else {
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
                .with_label_values(&[pool_name, &chosen.group, fb])
                .inc();
        }
        call.attempts += 1;
        let now = tokio::time::Instant::now();
        let remaining =
            (call.deadline.min(call.first_byte_deadline)).saturating_duration_since(now);
        let first_byte =
            Duration::from_millis(call.pool.config.timeouts.first_byte_ms).min(remaining);
        let mut upstream = http::Request::new(self.body.clone());
        *upstream.method_mut() = call.method.clone();
        *upstream.uri_mut() = call.uri.clone();
        *upstream.headers_mut() =
            forward::upstream_headers(&call.headers, &pool.config.headers, key_auth);
        let started = Instant::now();
        let answer = tokio::time::timeout(first_byte, call.pool.http.send(upstream)).await;
        if let Ok(Ok((resp, _))) = &answer {
            call.pool.http.answered_over(resp.version());
        }
        match answer {
            Err(_) => failed(call, chosen, Outcome::Timeout, 0, None, started).await,
            Ok(Err(e)) => {
                // A connect timeout is a connect error too (the pool's connect_ms).
                let outcome = if e.is_connect() {
                    Outcome::ConnectError
                } else {
                    Outcome::ServerError
                };
                // hyper's errors name no URL and no header: nothing secret to strip.
                tracing::debug!(request_id = %call.request_id, error = %e, "upstream transport error");
                failed(call, chosen, outcome, 0, None, started).await
            }
            Ok(Ok((resp, _lease))) if forward::is_encoded(resp.headers()) => {
                encoded(call, chosen, &resp)
            }
            Ok(Ok((resp, lease))) if resp.status().is_success() => {
                let held = (ticket.take(), lease);
                succeeded(call, chosen, resp, started, self.model, held)
            }
            Ok(Ok((resp, _lease))) => answered_error(call, chosen, resp, started).await,
        }
    }
}

fn succeeded(
    call: &mut Call,
    chosen: Chosen,
    resp: UpstreamResponse,
    started: Instant,
    model: Option<&str>,
    held: (Option<BudgetTicket>, Lease),
) -> Step {
    let pool = call.pool.config.name.clone();
    // A 2xx: its verdict and, in a pool with budgets, its hints for the store, from one read.
    let read = read_hints(resp.headers(), SystemTime::now());
    let verdict = success_verdict(&read);
    let hints = (call.pool.has_budgets)
        .then(|| provider_hints(&read))
        .filter(|h| !h.is_empty())
        .map(|h| match call.pool.limits.get(&chosen.key) {
            Some(limits) => h.that_bind(limits, call.pool.spec.budget.max_request_tokens),
            None => h,
        });
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
        hints,
    );
    let status = resp.status();
    let mut headers = forward::downstream_headers(resp.headers(), &call.pool.config.headers);
    call.pool.scrubber.scrub_headers(&mut headers);
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
        model.map(label_of),
        reported,
        held,
    );
    let scrub = StreamScrub::new(call.pool.scrubber.clone());
    let body = ObservedBody::new(resp, call.deadline, scrub, on_end);
    let mut out = Response::new(Body::from_stream(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Step::Done(out)
}

/// A model name's first 64 characters, for a metric label. A name of at most 64 bytes (every
/// real model's) is copied whole, not character by character: collecting its characters cost
/// about 900 instructions a copy, twice a request (BENCHMARKS.md, "Where a request's CPU goes").
fn label_of(m: &str) -> String {
    if m.len() <= 64 {
        return m.to_string();
    }
    match m.char_indices().nth(64) {
        Some((i, _)) => m[..i].to_string(),
        None => m.to_string(),
    }
}

/// Counts tokens when the body ends; a body the upstream broke counts against the key.
fn stream_end(
    state: Arc<AppState>,
    pool: String,
    chosen: Chosen,
    model: Option<String>,
    success_report: Reported,
    (mut ticket, lease): (Option<BudgetTicket>, Lease),
) -> super::body::OnEnd {
    Box::new(
        move |ending: Ending, usage: Option<Usage>, answered: Option<String>| {
            // The upstream stream is over: its place on the upstream connection is free.
            drop(lease);
            if let (Some(t), Some(u)) = (ticket.as_mut(), &usage) {
                t.set_usage(u.total_tokens.max(u.prompt_tokens + u.completion_tokens));
            }
            drop(ticket);
            if let Some(u) = usage {
                // The requested model (allowlisted when the pool has a list), else the one the
                // upstream named; bounded in length either way.
                let answered: Option<String> = answered.as_deref().map(label_of);
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

/// What an error answer means for its key: nothing when the client's request caused it (passed
/// through as the upstream sent it, no other key tried), else its classification.
fn blame(
    call: &Call,
    key: &KeyId,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Verdict {
    let Some(cause) = client_cause(status, body, call.inference) else {
        return classify(status, headers, Some(body), SystemTime::now());
    };
    tracing::info!(request_id = %call.request_id, client = %call.client, key = %key,
        status = status.as_u16(), cause = cause.as_str(), "upstream answer blamed on the request");
    Verdict {
        outcome: Outcome::ClientError,
        cooldown: None,
    }
}

async fn answered_error(
    call: &mut Call,
    chosen: Chosen,
    resp: UpstreamResponse,
    started: Instant,
) -> Step {
    let status = resp.status();
    let headers = resp.headers().clone();
    let remaining = call
        .deadline
        .saturating_duration_since(tokio::time::Instant::now());
    let read = http_body_util::Limited::new(resp.into_body(), MAX_ERROR_BODY).collect();
    let body = match tokio::time::timeout(remaining, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => Bytes::new(),
    };
    let verdict = blame(call, &chosen.key, status, &headers, &body);
    // What may reach the client (a passed-through 4xx) never carries a key of the pool.
    let mut headers = headers;
    call.pool.scrubber.scrub_headers(&mut headers);
    let body = call.pool.scrubber.scrub_whole(body);
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
    let mut h = forward::downstream_headers(&headers, &call.pool.config.headers);
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

/// An answer encoded although keygate asked for `identity`: keygate cannot scrub it, so the
/// client gets a 502 instead; the key is not blamed (the encoding is the upstream's doing).
fn encoded(call: &Call, chosen: Chosen, resp: &UpstreamResponse) -> Step {
    tracing::warn!(request_id = %call.request_id, pool = %call.pool.config.name, key = %chosen.key,
        status = resp.status().as_u16(), "upstream sent an encoded answer; refused, keygate passes on only what it can scrub");
    let message = "The upstream answered with a Content-Encoding; keygate passes on only \
                   unencoded answers, which it can check for secrets.";
    let error = ApiError::new(
        http::StatusCode::BAD_GATEWAY,
        "upstream_error",
        "upstream_encoding_unsupported",
        message,
    );
    let mut out = error.into_response();
    let attempts = call.attempts;
    keygate_headers(
        out.headers_mut(),
        Some(&chosen.key),
        Some(&chosen.group),
        attempts,
    );
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
    let retry_after_s = report_failure(call, &chosen, outcome, status, hint).await;
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

/// Reports a failed attempt to the store; returns the seconds until the key's new deadline, for
/// the client's `Retry-After`. A 401/403 may be the client's doing in a way no classifier knows:
/// the key is benched, not disabled, and keygate's own probe confirms (probe.rs).
async fn report_failure(
    call: &Call,
    chosen: &Chosen,
    outcome: Outcome,
    status: u16,
    hint: Option<u64>,
) -> Option<u64> {
    let pool = call.pool.config.name.as_str();
    let hint = match outcome {
        Outcome::Unauthorized => Some(call.pool.config.policy.auth_bench_s.saturating_mul(1000)),
        _ => hint,
    };
    let r = Report {
        key: &chosen.key,
        outcome,
        cooldown_ms: hint,
        http_status: status,
        probe: chosen.probe,
        now_ms: None,
    };
    let rc = match call.state.store.report(pool, &r).await {
        Ok(rc) => rc,
        Err(e) => {
            tracing::warn!(request_id = %call.request_id, pool = %pool, error = %e, "store report failed");
            return None;
        }
    };
    if rc.changed {
        (call.state.metrics).record_cooldown(pool, chosen.key.as_str(), rc.state, outcome);
    }
    if outcome == Outcome::Unauthorized && rc.changed && rc.state == KeyState::Cooling {
        let (pool, key) = (call.pool.clone(), chosen.key.clone());
        super::probe::confirm_in_background(&call.state, pool, key, call.client.clone());
    }
    (rc.cooldown_until_ms > 0).then(|| {
        (rc.cooldown_until_ms.saturating_sub(rc.now_ms))
            .div_ceil(1000)
            .max(1)
    })
}

#[cfg(test)]
mod tests {
    use super::label_of;
    use proptest::prelude::*;

    proptest! {
        /// The same label as the first 64 characters collected one by one, for names of any
        /// length and any characters.
        #[test]
        fn a_labels_first_64_characters_are_kept_whatever_the_name(m in "\\PC{0,80}|[a-z0-9.-]{60,70}") {
            prop_assert_eq!(label_of(&m), m.chars().take(64).collect::<String>());
        }
    }
}
