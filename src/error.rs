//! Errors keygate itself answers, in the OpenAI error shape
//! `{"error":{"message":…,"type":…,"code":…,"param":null}}`. Internal detail (store errors,
//! upstream transport errors) is logged by the caller and never put on the wire.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::pool::StateCounts;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: &'static str,
    /// Seconds for a `Retry-After` header (429/503).
    pub retry_after_s: Option<u64>,
    /// `x-should-retry: false` for the SDKs (which honour it before their own status rules):
    /// set where waiting cannot help.
    pub dont_retry: bool,
    /// Further headers of the answer (429 `pool_exhausted`: the pool's `x-ratelimit-*`).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            code,
            retry_after_s: None,
            dont_retry: false,
            headers: Vec::new(),
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Invalid or missing keygate client token (Authorization: Bearer <token>).",
        )
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "pool_not_allowed",
            message,
        )
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("Request body exceeds the limit of {limit} bytes."),
        )
    }

    /// No key of the pool is selectable. `retry_after_s`: when the first one recovers by itself
    /// (`None`: none will); `counts`: the pool's keys by state, which name the cause. Keys
    /// benched only by their breakers (upstream errors, timeouts, refused connections) mean an
    /// upstream outage, not a rate limit: 503 `upstream_unavailable`. Cooling keys (a 429, or a
    /// rate-limit header at 0) give 429 `all_keys_cooling`.
    /// `budget_bound`: the first key to recover is held back by its own budget (README
    /// "Budgets"), so the answer is 429 `pool_exhausted` whatever else the pool's keys do.
    pub fn no_key(
        retry_after_s: Option<u64>,
        counts: &StateCounts,
        budget_bound: bool,
    ) -> ApiError {
        match retry_after_s {
            Some(s) if budget_bound => ApiError::pool_exhausted(s),
            Some(s) if counts.cooling == 0 && counts.open + counts.half_open > 0 => {
                ApiError::upstream_unavailable(s, counts)
            }
            Some(s) => ApiError::keys_cooling(s),
            None => ApiError::no_key_usable(),
        }
    }

    /// 503 `upstream_unavailable`: the keys are benched by breakers, the next probe in `s`.
    pub fn upstream_unavailable(s: u64, counts: &StateCounts) -> ApiError {
        let message = format!("The upstream is failing: every usable key of this pool has its circuit breaker open after upstream errors (server errors, timeouts or refused connections; {} open, {} half-open). The next probe is in {s} s.", counts.open, counts.half_open);
        ApiError {
            retry_after_s: Some(s),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "upstream_unavailable",
                message,
            )
        }
    }

    /// 429 `all_keys_cooling`: rate limits benched the keys; the first recovers in `s`.
    pub fn keys_cooling(s: u64) -> ApiError {
        let message = format!(
            "Every upstream key of this pool is cooling down after rate limits; retry in {s} s."
        );
        ApiError {
            retry_after_s: Some(s),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "all_keys_cooling",
                message,
            )
        }
    }

    /// 429 `pool_exhausted`: every key of the pool has spent its budget (README "Budgets") and
    /// none regains headroom within the pool's `max_wait_ms`; the first does in `s`.
    pub fn pool_exhausted(s: u64) -> ApiError {
        let message = format!(
            "Every upstream key of this pool has spent its configured budget (requests, tokens or \
             requests in flight); the first has headroom again in {s} s."
        );
        ApiError {
            retry_after_s: Some(s),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "pool_exhausted",
                message,
            )
        }
    }

    /// 503 `no_key_available` with `x-should-retry: false`: only an operator can help.
    pub fn no_key_usable() -> ApiError {
        ApiError {
            dont_retry: true,
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "no_key_available",
                "No upstream key of this pool is usable and none will recover by itself; an operator must act.")
        }
    }

    /// Announces at most `max_s` in `Retry-After`; a longer wait also says `x-should-retry:
    /// false` (the message keeps the true wait): an SDK that waited minutes for one retry would
    /// only hold its caller.
    pub fn retry_after_at_most(mut self, max_s: u64) -> ApiError {
        if self.retry_after_s.is_some_and(|s| s > max_s) {
            self.retry_after_s = Some(max_s);
            self.dont_retry = true;
        }
        self
    }

    pub fn upstream_failed(timeout: bool, attempts: u32) -> ApiError {
        if timeout {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                "upstream_timeout",
                format!("The upstream did not answer in time ({attempts} attempts)."),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_failed",
                format!("The upstream failed on every attempt ({attempts} attempts)."),
            )
        }
    }

    pub fn store_unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "store_unavailable",
            "The key store is unavailable; retry shortly.",
        )
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            message,
        )
    }

    /// A path keygate does not serve: the router's fallback, and the admin API of a gateway
    /// without an admin token (which must look like any other unknown path).
    pub fn unknown_path() -> ApiError {
        ApiError::not_found("Unknown path; keygate serves /v1/*.")
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.code, "param": null}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
        }
        if self.dont_retry {
            let no = HeaderValue::from_static("false");
            resp.headers_mut().insert("x-should-retry", no);
        }
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                resp.headers_mut().insert(*name, v);
            }
        }
        resp
    }
}
