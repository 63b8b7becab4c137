//! The admin API (DESIGN section 3, issue 4): operators list pools and keys and change them at
//! run time. It exists only when `[admin]` found a token; without one every `/admin` path
//! answers 404, as if the API did not exist.
//!
//! Every request carries `Authorization: Bearer <admin token>`, compared in constant time on
//! SHA-256 digests (so neither a matching prefix nor the token's length leaks). Path ids are
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
pub mod views;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::{AppState, PoolRuntime};
use crate::error::ApiError;
use crate::pool::{is_valid_id, KeyId};
use crate::store::StoreError;

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
        .layer(from_fn_with_state(state, require_admin_token))
}

/// Lets a request through only with the configured admin token; 404 when there is none.
/// The token is read from the current config on every request, so a reload applies to it.
async fn require_admin_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let gateway = state.gateway();
    let Some(token) = &gateway.config.admin.token else {
        return crate::app::not_found().await;
    };
    match bearer(request.headers()) {
        Some(presented) if token_matches(presented, token.expose()) => next.run(request).await,
        _ => {
            tracing::info!(method = %request.method(), path = %request.uri().path(), "admin request refused: bad or missing admin token");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_admin_token",
                "Invalid or missing admin token (Authorization: Bearer <admin token>).",
            )
            .into_response()
        }
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
            tracing::error!(pool = %pool, key = ?key, error = %outage, "admin: store call failed");
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
