//! Client authentication (SHA-256 of the bearer token, compared in constant time against every
//! configured client) and the choice of pool.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::{ClientAuth, Gateway, PoolRuntime};

/// The token of `Authorization: Bearer <token>`, if well-formed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The client owning the request's token. Every client's hash is compared (no early exit), so
/// timing says nothing about which or how many clients exist.
pub fn authenticate<'g>(gw: &'g Gateway, headers: &HeaderMap) -> Option<&'g ClientAuth> {
    let token = bearer(headers)?;
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for c in &gw.clients {
        if bool::from(c.token_sha256.ct_eq(&digest)) {
            found = Some(c);
        }
    }
    found
}

/// The pool of `X-Keygate-Pool` (which the client must be allowed), else the client's first.
pub fn choose_pool(
    gw: &Gateway,
    client: &ClientAuth,
    headers: &HeaderMap,
) -> Result<Arc<PoolRuntime>, ApiError> {
    const X_KEYGATE_POOL: HeaderName = HeaderName::from_static("x-keygate-pool");
    let name = match headers.get(X_KEYGATE_POOL) {
        Some(v) => v
            .to_str()
            .map_err(|_| {
                ApiError::bad_request("invalid_pool", "X-Keygate-Pool is not valid text.")
            })?
            .trim(),
        None => client.pools.first().map(String::as_str).unwrap_or_default(),
    };
    if !client.pools.iter().any(|p| p == name) {
        return Err(ApiError::forbidden(format!(
            "This client may use the pools {:?}; X-Keygate-Pool names another.",
            client.pools
        )));
    }
    gw.pools
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::forbidden("The requested pool is not configured."))
}
