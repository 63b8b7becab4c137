//! The admin API (README.md, "Operate"): operators list pools and keys and change
//! them at run time. It exists only when `[admin]` found a token; without one every `/admin` path
//! answers 404 `admin_disabled`, whose message names the variable to set on `keygate serve`.
//!
//! Every request carries `Authorization: Bearer <admin token>`, compared in constant time on
//! SHA-256 digests (so neither a matching prefix nor the token's length leaks). A refusal is
//! logged with the peer address and counted (`keygate_admin_auth_failures_total`); a peer with
//! too many refusals gets 429 for a while (`throttle`). Path ids are
//! checked with [`is_valid_id`] before anything else sees them, so `..`, `%2F`, `{`, `*` or `:`
//! never reach a Redis key name. Every change is one store call (one Lua script on Redis), so it
//! holds for every replica at once; each is logged at info level with pool, key and action.
//!
//! Endpoints (JSON in and out, errors in the OpenAI error shape):
//!
//! | method and path | body | effect |
//! |---|---|---|
//! | `GET /admin/pools` | | `{"pools": [PoolView]}` |
//! | `GET /admin/pools/{pool}/keys` | | the pool's [`PoolView`], every key |
//! | `POST /admin/pools/{pool}/keys/{key}/enable` | | key → `active`, errors cleared |
//! | `POST .../disable`, `POST .../drain` | | key → `disabled` / `draining` (reason `admin`) |
//! | `POST .../reset` | | errors, strikes, successes, failures → 0 |
//! | `PUT /admin/pools/{pool}/keys/{key}/weight` | `{"weight": 3}` (0..=1000) | |
//! | `PUT /admin/pools/{pool}/keys/{key}/group` | `{"group": "canary"}` | `stable` or the pool's canary group |
//! | `PUT /admin/pools/{pool}/canary` | `{"percent": 25}` (0..=100) | |
//! | `POST /admin/reload` | | re-reads the config file; 400 with every problem if invalid |
//! | `GET`/`POST /admin/pools/{pool}/rotation`, `POST .../rotation/{pause,resume,abort}` | | see `rotation.rs` |
//!
//! Layout: this file holds the router, the token check and the error mapping; `views` the
//! listings and their JSON shapes (shared with the CLI); `actions` the changes.

mod actions;
pub mod rotation;
mod throttle;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::pool::{is_valid_id, KeyId};
use crate::state::{AppState, PoolRuntime};
use crate::store::StoreError;
use throttle::AdminThrottle;

pub use views::{KeyView, PoolList, PoolView};

/// The admin routes, behind the token check (which also hides them when no token is set).
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let key = "/pools/{pool}/keys/{key}";
    Router::new()
        .route("/pools", get(views::list_pools))
        .route("/pools/{pool}/keys", get(views::list_keys))
        .route(&format!("{key}/enable"), post(actions::enable))
        .route(&format!("{key}/disable"), post(actions::disable))
        .route(&format!("{key}/drain"), post(actions::drain))
        .route(&format!("{key}/reset"), post(actions::reset))
        .route(&format!("{key}/weight"), put(actions::set_weight))
        .route(&format!("{key}/group"), put(actions::set_group))
        .route("/pools/{pool}/canary", put(actions::set_canary))
        .route(
            "/pools/{pool}/rotation",
            get(rotation::get_status).post(rotation::start),
        )
        .route("/pools/{pool}/rotation/{action}", post(rotation::control))
        .route("/reload", post(actions::reload))
        // `layer`, not `route_layer`: a wrong method must not reveal a route to a stranger.
        .layer(from_fn_with_state(
            (state, Arc::new(AdminThrottle::default())),
            require_admin_token,
        ))
}

/// 404 `admin_disabled`: this replica was started without an admin token, and says how to give
/// it one (the same answer whatever the path or method, so it reveals no route).
fn admin_disabled(token_env: Option<&str>) -> Response {
    let variable = token_env.unwrap_or(crate::config::DEFAULT_ADMIN_TOKEN_ENV);
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "admin_disabled",
        format!("This replica has no admin API: set {variable} on `keygate serve` to enable it."),
    )
    .into_response()
}

/// Lets a request through only with the configured admin token; 404 `admin_disabled` when
/// there is none.
/// The token is read from the current config on every request, so a reload applies to it.
/// Refusals are logged with the peer address (never what it sent), counted, and throttled.
async fn require_admin_token(
    State((state, throttle)): State<(Arc<AppState>, Arc<AdminThrottle>)>,
    request: Request,
    next: Next,
) -> Response {
    let gateway = state.gateway();
    let Some(token) = &gateway.config.admin.token else {
        return admin_disabled(gateway.config.admin.token_env.as_deref());
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let peer_ip = peer.map(|p| p.ip());
    if let Some(retry_after_s) = peer_ip.and_then(|ip| throttle.blocked_for(ip)) {
        return too_many_failures(retry_after_s).into_response();
    }
    if let Some(presented) = bearer(request.headers()) {
        if token_matches(presented, token.expose()) {
            if let Some(ip) = peer_ip {
                throttle.succeeded(ip);
            }
            return next.run(request).await;
        }
    }
    state.metrics.limits.admin_auth_failures.inc();
    let failures = peer_ip.map_or(0, |ip| throttle.failed(ip));
    let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
    tracing::warn!(%peer, failures_in_window = failures, method = %request.method(),
        path = %request.uri().path(), "admin request refused: bad or missing admin token");
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "invalid_admin_token",
        "Invalid or missing admin token (Authorization: Bearer <admin token>).",
    )
    .into_response()
}

fn too_many_failures(retry_after_s: u64) -> ApiError {
    let message = format!(
        "Too many admin requests with a wrong token from this address; retry in {retry_after_s} s."
    );
    ApiError {
        retry_after_s: Some(retry_after_s),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "admin_auth_throttled",
            message,
        )
    }
}

/// The token of an `Authorization: Bearer <token>` header, if non-empty.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Constant-time equality of the two tokens' SHA-256 digests: the time taken depends on
/// neither the position of the first difference nor the configured token's length.
fn token_matches(presented: &str, configured: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(configured.as_bytes());
    !configured.is_empty() && bool::from(a.ct_eq(&b))
}

/// The pool named in the path, from this replica's current config.
fn pool_runtime(state: &AppState, pool: &str) -> Result<Arc<PoolRuntime>, ApiError> {
    check_id("pool", pool)?;
    state
        .gateway()
        .pools
        .get(pool)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("Unknown pool `{pool}`.")))
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_id",
            format!(
                "Invalid {what} id: ids are 1..=64 characters of [A-Za-z0-9._-], not starting with '.'."
            ),
        ))
    }
}

fn key_id(key: &str) -> Result<KeyId, ApiError> {
    check_id("key", key)?;
    KeyId::new(key).ok_or_else(|| ApiError::bad_request("invalid_id", "Invalid key id."))
}

/// A path that could not be decoded (bad percent-encoding, not UTF-8) is a bad id too.
fn path_error(rejection: PathRejection) -> ApiError {
    tracing::debug!(error = %rejection.body_text(), "admin path rejected");
    ApiError::bad_request("invalid_id", "Invalid id in the path.")
}

fn json_error(rejection: JsonRejection) -> ApiError {
    ApiError::bad_request("invalid_json", rejection.body_text())
}

/// Store errors as answers: unknown pool/key → 404; an outage → 503 with the detail only logged.
fn store_error(error: StoreError, pool: &str, key: Option<&KeyId>) -> ApiError {
    match error {
        StoreError::UnknownPool(_) => {
            ApiError::not_found(format!("Pool `{pool}` is not in the store."))
        }
        StoreError::UnknownKey(_) => ApiError::not_found(match key {
            Some(k) => format!("Unknown key `{k}` in pool `{pool}`."),
            None => format!("Unknown key in pool `{pool}`."),
        }),
        StoreError::InvalidArgument(message) => ApiError::bad_request("invalid_argument", message),
        outage => {
            tracing::error!(pool = %pool, key = %key.map_or("-", KeyId::as_str), error = %outage, "admin: store call failed");
            ApiError::store_unavailable()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_non_empty_token_matches() {
        assert!(token_matches("s3cret-admin", "s3cret-admin"));
        assert!(!token_matches("s3cret-admi", "s3cret-admin"));
        assert!(!token_matches("s3cret-admin2", "s3cret-admin"));
        assert!(!token_matches("", ""));
    }

    #[test]
    fn bearer_needs_the_scheme_and_a_token() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for (value, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("Bearer ", None),
            ("Bearer", None),
            ("Basic abc", None),
        ] {
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer(&h), want, "{value:?}");
        }
    }
}
