//! Errors keygate itself answers, in the OpenAI error shape
//! `{"error":{"message":…,"type":…,"code":…,"param":null}}`. Internal detail (store errors,
//! upstream transport errors) is logged by the caller and never put on the wire.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: &'static str,
    /// Seconds for a `Retry-After` header (429/503).
    pub retry_after_s: Option<u64>,
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

    pub fn no_key(retry_after_s: Option<u64>) -> ApiError {
        match retry_after_s {
            Some(s) => ApiError {
                retry_after_s: Some(s),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "all_keys_cooling",
                    format!("Every upstream key of this pool is cooling down; retry in {s} s."))
            },
            None => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "no_key_available",
                "No upstream key of this pool is usable and none will recover by itself; an operator must act."),
        }
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
        resp
    }
}
