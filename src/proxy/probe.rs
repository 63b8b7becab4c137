//! Confirming a 401/403 before a key is disabled: the key that answered it was benched
//! (cooling, reason `auth_unconfirmed`) and this replica asks the upstream itself, with that key
//! alone, on a cheap authenticated path (`[pools.policy] auth_probe_path`, `GET models` by
//! default). Its answer decides (README.md, "Key states"): 401/403 → `disabled`, reason
//! `unauthorized`; 2xx → `active`; anything else, or no answer in time → the key stays benched
//! until its deadline. The store applies the answer only to a key still benched, so an operator's
//! newer action always wins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use super::forward;
use crate::pool::{KeyId, KeyState, Outcome};
use crate::state::{AppState, PoolRuntime};
use crate::store::{KeyStoreExt, Report};
use crate::upstream::classify::client_cause;

/// A probe's error body is read this far, to tell a revoked key from a restricted one.
const MAX_PROBE_BODY: usize = 16 * 1024;

/// What the probe learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finding {
    /// The key works: back to active.
    Valid,
    /// The upstream refused the key itself: disable it.
    Revoked,
    /// Nothing certain (5xx, 429, a timeout, a refusal of the probe's path): stay benched.
    Unsure,
}

/// Probes `key` in a tracked background task; the request that benched it does not wait. When
/// the key turns out fine, the 401/403 was `client`'s doing after all: it counts toward the
/// client's circuit (`circuit.rs`), so a genuinely revoked key never counts against a client.
pub(crate) fn confirm_in_background(
    state: &Arc<AppState>,
    pool: Arc<PoolRuntime>,
    key: KeyId,
    client: String,
) {
    let state2 = state.clone();
    state.tasks.spawn(async move {
        let finding = probe(&pool, &key).await;
        let pool_name = pool.config.name.as_str();
        tracing::info!(pool = %pool_name, key = %key, finding = ?finding, "auth probe answered");
        if finding == Finding::Valid {
            let (policy, now) = (&pool.config.policy, Instant::now());
            if (state2.circuits).record_damage(pool_name, &client, policy, now) {
                tracing::warn!(pool = %pool_name, client = %client,
                    "client circuit opened: its requests keep getting sound keys refused");
            }
        }
        let (outcome, status) = match finding {
            Finding::Valid => (Outcome::Success, 200),
            Finding::Revoked => (Outcome::Unauthorized, 401),
            Finding::Unsure => return,
        };
        // No hint and probe = true: the probe's own answer, applied only to a benched key.
        let report = Report {
            key: &key,
            outcome,
            cooldown_ms: None,
            http_status: status,
            probe: true,
            now_ms: None,
        };
        match state2.store.report(pool_name, &report).await {
            // Not counted in keygate_cooldowns_total again: the bench took the key out of
            // rotation and was counted then.
            Ok(rc) if rc.changed && rc.state == KeyState::Disabled => {
                tracing::warn!(pool = %pool_name, key = %key, "key disabled: the upstream refused it on keygate's own probe");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(pool = %pool_name, key = %key, error = %e, "store report of the auth probe failed")
            }
        }
    });
}

/// One `GET {base_url}/{auth_probe_path}` with the key, within the pool's first-byte timeout
/// (at most the bench time: after it the answer no longer matters).
async fn probe(pool: &PoolRuntime, key: &KeyId) -> Finding {
    let Some(auth) = pool.auth.get(key) else {
        return Finding::Unsure;
    };
    let policy = &pool.config.policy;
    let Ok(uri) = forward::upstream_uri(&pool.base_url, &policy.auth_probe_path, None) else {
        return Finding::Unsure;
    };
    let mut request = http::Request::new(bytes::Bytes::new());
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(http::header::AUTHORIZATION, auth.header.clone());
    headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    // The key's account, as every attempt sends it: a key that belongs to an organisation or
    // project is probed in it, or a sound key would be refused as a mismatch.
    headers.insert(
        http::header::ACCEPT_ENCODING,
        http::HeaderValue::from_static("identity"),
    );
    if let Some(org) = auth.organization() {
        headers.insert("openai-organization", org.clone());
    }
    if let Some(project) = auth.project() {
        headers.insert("openai-project", project.clone());
    }
    let limit = Duration::from_millis(pool.config.timeouts.first_byte_ms)
        .min(Duration::from_secs(policy.auth_bench_s));
    let answer = async {
        let (resp, _lease) = pool.http.send(request).await.ok()?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_PROBE_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Some((status, body))
    };
    match tokio::time::timeout(limit, answer).await {
        Ok(Some((status, body))) => finding(status, &body),
        _ => Finding::Unsure,
    }
}

/// What the probe's answer says about the key. A refusal that names the request (a scope the
/// probe path needs, an organisation) proves the key authenticates, but not that it serves the
/// pool: unsure.
fn finding(status: http::StatusCode, body: &[u8]) -> Finding {
    match status.as_u16() {
        200..=299 => Finding::Valid,
        401 | 403 if client_cause(status, body, false).is_none() => Finding::Revoked,
        _ => Finding::Unsure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn only_a_plain_refusal_of_the_key_revokes_it() {
        let bad_key =
            br#"{"error":{"message":"Incorrect API key provided","code":"invalid_api_key"}}"#;
        let scopes = br#"{"error":{"message":"You have insufficient permissions for this operation. Missing scopes: model.read."}}"#;
        assert_eq!(finding(StatusCode::OK, b"{}"), Finding::Valid);
        assert_eq!(finding(StatusCode::UNAUTHORIZED, bad_key), Finding::Revoked);
        assert_eq!(finding(StatusCode::FORBIDDEN, b""), Finding::Revoked);
        assert_eq!(finding(StatusCode::UNAUTHORIZED, scopes), Finding::Unsure);
        for s in [429, 500, 503, 404] {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::IM_A_TEAPOT);
            assert_eq!(finding(status, b""), Finding::Unsure, "{s}");
        }
    }
}
