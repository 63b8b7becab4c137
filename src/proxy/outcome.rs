//! What an attempt comes to ([`Step`]), and what the failed attempts of one request add up to
//! ([`Failure`]): the answer the client gets when no attempt succeeded.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::{forward, Call};
use crate::error::ApiError;
use crate::pool::{KeyId, Outcome};

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
                *r.headers_mut() = forward::downstream_headers(&headers, &call.pool.config.headers);
                r
            } else if self.timed_out {
                ApiError::upstream_failed(true, call.attempts).into_response()
            } else if self.upstream_broke || self.outcome.is_none() {
                ApiError::upstream_failed(false, call.attempts).into_response()
            } else if let Some(e) = self.no_key {
                e.into_response()
            } else if self.keys_refused {
                // This request's own attempts were refused by rate limits, quota or revocation.
                let e = match self.retry_after_s {
                    Some(s) => ApiError::keys_cooling(s),
                    None => ApiError::no_key_usable(),
                };
                e.retry_after_at_most(call.max_retry_after_s)
                    .into_response()
            } else {
                ApiError::upstream_failed(false, call.attempts).into_response()
            };
        tracing::warn!(request_id = %call.request_id, pool = %call.pool.config.name,
            key = %self.key.as_ref().map_or("-", KeyId::as_str),
            outcome = %self.outcome.map_or("-", Outcome::as_str),
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

/// The `x-keygate-*` headers of an answer: the key and group of its last attempt, and how many
/// attempts the request made.
pub(crate) fn keygate_headers(
    h: &mut HeaderMap,
    key: Option<&KeyId>,
    group: Option<&str>,
    attempts: u32,
) {
    if let Some(k) = key {
        forward::set_header(h, forward::X_KEYGATE_KEY, k.as_str());
    }
    match group {
        // The usual group, without copying it for each answer.
        Some("stable") => {
            h.insert(forward::X_KEYGATE_GROUP, HeaderValue::from_static("stable"));
        }
        Some(g) => forward::set_header(h, forward::X_KEYGATE_GROUP, g),
        None => {}
    }
    h.insert(forward::X_KEYGATE_ATTEMPTS, HeaderValue::from(attempts));
}
