//! Readiness and the key-state gauges: both read the store, so both are bounded and cached.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::state::{AppState, Health};

/// `GET /readyz`: 200 when the store answers (or the replica serves in degraded mode).
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.store.degraded() {
        return (
            StatusCode::OK,
            "ready (degraded: Redis unreachable, serving from the in-process store)\n",
        )
            .into_response();
    }
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: store unreachable\n",
            )
                .into_response()
        }
    }
}

/// Refreshes `keygate_key_state` and friends from snapshots of every pool, at most once per
/// `store.snapshot_cache_ms`.
pub async fn refresh_key_gauges(state: &AppState) {
    let gw = state.gateway();
    let max_age = Duration::from_millis(gw.config.store.snapshot_cache_ms);
    let fresh = |h: &Health| {
        h.gauges_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < max_age)
    };
    if fresh(&state.health) {
        return;
    }
    let _one_at_a_time = state.health.refresh.lock().await;
    if fresh(&state.health) {
        return;
    }
    let mut snaps = Vec::new();
    for name in gw.pools.keys() {
        match state.store.snapshot(name, None).await {
            Ok(s) => snaps.push((name.clone(), s)),
            Err(e) => tracing::warn!(pool = %name, error = %e, "snapshot for metrics failed"),
        }
    }
    // Overwrite in place and drop only what disappeared: a concurrent scrape never sees a
    // pool without its key series. A pool whose snapshot failed keeps what it showed.
    let mut seen: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (name, s) in &snaps {
        for k in &s.keys {
            let cooldown_ms = k.cooldown_until_ms.saturating_sub(s.now_ms);
            (state.metrics).set_key_gauges(name, &k.id, k.status, cooldown_ms, k.weight);
        }
        seen.insert(name, s.keys.iter().map(|k| k.id.as_str()).collect());
    }
    state
        .metrics
        .retain_key_gauges(|pool, key| match seen.get(pool) {
            Some(ids) => ids.contains(key),
            None => gw.pools.contains_key(pool),
        });
    state
        .metrics
        .store_degraded
        .set(i64::from(state.store.degraded()));
    *state
        .health
        .gauges_at
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
}
