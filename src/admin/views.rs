//! The admin listings and their JSON shapes. The CLI decodes the same types, so the wire format
//! is defined once. A key's secret never appears: only its masked fingerprint (`sk-…9f3a`), and
//! only for keys in this replica's config.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{path_error, pool_runtime, store_error};
use crate::error::ApiError;
use crate::state::{AppState, PoolRuntime};
use crate::store::{KeyRecord, PoolSnapshot, StateCounts};

/// `GET /admin/pools`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolList {
    pub pools: Vec<PoolView>,
}

/// One pool: its canary settings and key counts (live, from the store) and every key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    pub canary_group: String,
    pub canary_percent: u8,
    pub counts: StateCounts,
    pub keys: Vec<KeyView>,
}

/// One key as the store holds it, plus the masked fingerprint of its configured secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    pub id: String,
    /// `active`, `cooling`, `open`, `half_open`, `disabled`, `draining`.
    pub state: String,
    /// Why it is disabled or draining (`admin`, `unauthorized`, `quota`, `removed`), else "".
    pub reason: String,
    pub weight: u32,
    pub group: String,
    pub errors: u64,
    pub strikes: u64,
    pub successes: u64,
    pub failures: u64,
    /// Seconds until the key's deadline (cooling, open breaker, quota), rounded up; 0 if none.
    pub cooldown_remaining_s: u64,
    pub cooldown_until_ms: u64,
    /// The last upstream HTTP status, 0 before the first answer or without one.
    pub last_status: u16,
    pub last_used_ms: u64,
    /// `sk-…9f3a`; `null` when this replica's config has no such key (e.g. removed, draining).
    pub fingerprint: Option<String>,
    /// Its budget: limits, next slots and leases in flight (README "Budgets"); absent without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::store::budget::BudgetRecord>,
}

/// `GET /admin/pools`: every pool of this replica's config, by name.
pub(super) async fn list_pools(
    State(state): State<Arc<AppState>>,
) -> Result<Json<PoolList>, ApiError> {
    let gateway = state.gateway();
    let mut runtimes: Vec<&Arc<PoolRuntime>> = gateway.pools.values().collect();
    runtimes.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    let mut pools = Vec::with_capacity(runtimes.len());
    for pool in runtimes {
        pools.push(pool_view(&state, pool).await?);
    }
    Ok(Json(PoolList { pools }))
}

/// `GET /admin/pools/{pool}/keys`: the pool with every key.
pub(super) async fn list_keys(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PoolView>, ApiError> {
    let Path(pool) = path.map_err(path_error)?;
    let pool = pool_runtime(&state, &pool)?;
    Ok(Json(pool_view(&state, &pool).await?))
}

/// A fresh (uncached) snapshot: an operator who just drained a key must see it drained.
async fn pool_view(state: &AppState, pool: &PoolRuntime) -> Result<PoolView, ApiError> {
    let name = &pool.config.name;
    let snapshot = match state.store.snapshot(name, None).await {
        Ok(s) => s,
        // Configured but not in the store yet (a store flushed since start-up): no keys.
        Err(crate::store::StoreError::UnknownPool(_)) => PoolSnapshot {
            now_ms: 0,
            canary_group: pool.config.canary.group.clone(),
            canary_percent: pool.config.canary.percent,
            keys: Vec::new(),
        },
        Err(e) => return Err(store_error(e, name, None)),
    };
    let fingerprints: HashMap<&str, String> = (pool.config.keys.iter())
        .map(|k| (k.id.as_str(), k.secret.fingerprint()))
        .collect();
    Ok(PoolView {
        name: name.clone(),
        canary_group: snapshot.canary_group.clone(),
        canary_percent: snapshot.canary_percent,
        counts: counts(&snapshot.keys),
        keys: snapshot
            .keys
            .iter()
            .map(|k| key_view(k, fingerprints.get(k.id.as_str()), snapshot.now_ms))
            .collect(),
    })
}

fn counts(keys: &[KeyRecord]) -> StateCounts {
    use crate::pool::KeyState;
    let mut c = StateCounts::default();
    for k in keys {
        let slot = match k.status {
            KeyState::Active => &mut c.active,
            KeyState::Cooling => &mut c.cooling,
            KeyState::Open => &mut c.open,
            KeyState::HalfOpen => &mut c.half_open,
            KeyState::Disabled => &mut c.disabled,
            KeyState::Draining => &mut c.draining,
        };
        *slot += 1;
    }
    c
}

fn key_view(k: &KeyRecord, fingerprint: Option<&String>, now_ms: u64) -> KeyView {
    KeyView {
        id: k.id.clone(),
        state: k.status.as_str().to_string(),
        reason: k.reason.clone(),
        weight: k.weight,
        group: k.group.clone(),
        errors: k.errors,
        strikes: k.strikes,
        successes: k.successes,
        failures: k.failures,
        cooldown_remaining_s: k.cooldown_until_ms.saturating_sub(now_ms).div_ceil(1000),
        cooldown_until_ms: k.cooldown_until_ms,
        last_status: k.last_status,
        last_used_ms: k.last_used_ms,
        fingerprint: fingerprint.cloned(),
        budget: k.budget.as_deref().cloned(),
    }
}

/// What a change did: the target, the action and the value now in force.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionReceipt {
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `enable`, `disable`, `drain`, `reset`, `weight`, `group`, `canary`.
    pub action: String,
    /// The key's state after `enable` / `disable` / `drain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_percent: Option<u8>,
}

impl ActionReceipt {
    pub(super) fn new(pool: &str, key: Option<&str>, action: &str) -> ActionReceipt {
        ActionReceipt {
            pool: pool.to_string(),
            key: key.map(str::to_string),
            action: action.to_string(),
            state: None,
            weight: None,
            group: None,
            canary_percent: None,
        }
    }
}
