//! Readiness and the key-state gauges: both read the store, so both are bounded and cached.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::pool::KeyState;
use crate::state::{AppState, Health};
use crate::store::budget::{BudgetRecord, PoolHeadroom};
use crate::store::redis::RedisStore;

impl Health {
    pub fn new(redis: Option<Arc<RedisStore>>) -> Health {
        Health {
            store_reached: std::sync::atomic::AtomicBool::new(redis.is_none()),
            redis,
            ..Health::default()
        }
    }

    /// Asks the configured Redis once at start-up; a Redis that does not answer is logged
    /// as a warning (the failover layer would otherwise serve from memory in silence).
    pub async fn check_store_at_start(&self) {
        if !self.reach_store().await {
            tracing::warn!("the configured Redis (store section) does not answer at start-up; this replica serves from its in-process store, shares no key state with other replicas, and /readyz answers 503 until Redis answers once");
        }
    }

    /// Whether the configured Redis has answered since start, asking it now if it has not.
    async fn reach_store(&self) -> bool {
        if self.store_reached.load(Ordering::Acquire) {
            return true;
        }
        let Some(redis) = &self.redis else {
            return true;
        };
        let reached = redis.ping_redis().await.is_ok();
        if reached {
            self.store_reached.store(true, Ordering::Release);
            tracing::info!("the configured Redis answered");
        }
        reached
    }
}

/// `GET /readyz`: 503 until the configured Redis answered once since start (a replica that never
/// reached it shares nothing with the others); then 200 when the store answers, or while the
/// replica serves in degraded mode.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if !state.health.reach_store().await {
        let message = "not ready: the configured Redis has not been reached since start\n";
        return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    }
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
            if let Some(budget) = &k.budget {
                let (requests, tokens) = budget.minute_remaining(s.now_ms);
                (state.metrics).set_budget_remaining(name, &k.id, requests, tokens);
            }
        }
        seen.insert(name, s.keys.iter().map(|k| k.id.as_str()).collect());
        if s.keys.iter().any(|k| k.budget.is_some()) {
            let usable = (s.keys.iter())
                .filter(|k| !matches!(k.status, KeyState::Disabled | KeyState::Draining))
                .map(|k| k.budget.as_deref().cloned())
                .collect();
            let mut budgets = lock(&state.health.budgets);
            budgets.insert(name.clone(), Arc::new(usable));
        }
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

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the usable keys of `pool` allow together at `now_ms` (store clock), from the budget
/// records of the last snapshot (refreshed first when older than `store.snapshot_cache_ms`).
pub async fn pool_headroom(state: &AppState, pool: &str, now_ms: u64) -> PoolHeadroom {
    refresh_key_gauges(state).await;
    let records: Option<Arc<Vec<Option<BudgetRecord>>>> =
        lock(&state.health.budgets).get(pool).cloned();
    records.map_or_else(PoolHeadroom::default, |r| {
        PoolHeadroom::of(r.iter().map(Option::as_ref), now_ms)
    })
}
