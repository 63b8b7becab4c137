//! The admin changes: each validates its input, makes exactly one store call (one atomic Lua
//! script on Redis, so every replica sees it at its next selection) and logs what it did.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;

use super::views::ActionReceipt;
use super::{json_error, key_id, path_error, pool_runtime, store_error};
use crate::config::STABLE_GROUP;
use crate::error::ApiError;
use crate::pool::KeyId;
use crate::reload::ReloadReport;
use crate::state::{AppState, PoolRuntime};
use crate::store::{AdminState, KeyStoreExt};

/// The highest weight a key may have (the store enforces the same bound).
const MAX_WEIGHT: i64 = 1000;

type KeyPath = Result<Path<(String, String)>, PathRejection>;
type Receipt = Result<Json<ActionReceipt>, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WeightBody {
    weight: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupBody {
    group: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CanaryBody {
    percent: i64,
}

/// The pool (from this replica's config) and the key id named in the path.
fn target(state: &AppState, path: KeyPath) -> Result<(Arc<PoolRuntime>, KeyId), ApiError> {
    let Path((pool, key)) = path.map_err(path_error)?;
    let pool = pool_runtime(state, &pool)?;
    Ok((pool, key_id(&key)?))
}

fn log_action(receipt: &ActionReceipt) {
    tracing::info!(
        pool = %receipt.pool,
        key = receipt.key.as_deref().unwrap_or(""),
        action = %receipt.action,
        state = receipt.state.as_deref(),
        weight = receipt.weight,
        group = receipt.group.as_deref(),
        canary_percent = receipt.canary_percent,
        "admin action"
    );
}

pub(super) async fn enable(State(state): State<Arc<AppState>>, path: KeyPath) -> Receipt {
    change_state(&state, path, AdminState::Enable).await
}

pub(super) async fn disable(State(state): State<Arc<AppState>>, path: KeyPath) -> Receipt {
    change_state(&state, path, AdminState::Disable).await
}

pub(super) async fn drain(State(state): State<Arc<AppState>>, path: KeyPath) -> Receipt {
    change_state(&state, path, AdminState::Drain).await
}

async fn change_state(state: &AppState, path: KeyPath, action: AdminState) -> Receipt {
    let (pool, key) = target(state, path)?;
    let name = &pool.config.name;
    let now = (state.store.set_state(name, &key, action).await)
        .map_err(|e| store_error(e, name, Some(&key)))?;
    let mut receipt = ActionReceipt::new(name, Some(key.as_str()), action.as_str());
    receipt.state = Some(now.as_str().to_string());
    log_action(&receipt);
    Ok(Json(receipt))
}

/// `POST .../reset`: the key's counters (errors, strikes, successes, failures) back to 0.
pub(super) async fn reset(State(state): State<Arc<AppState>>, path: KeyPath) -> Receipt {
    let (pool, key) = target(&state, path)?;
    let name = &pool.config.name;
    (state.store.reset_counters(name, &key).await).map_err(|e| store_error(e, name, Some(&key)))?;
    let receipt = ActionReceipt::new(name, Some(key.as_str()), "reset");
    log_action(&receipt);
    Ok(Json(receipt))
}

/// `PUT .../weight` `{"weight": N}`, N in 0..=1000 (0: on standby, never selected).
pub(super) async fn set_weight(
    State(state): State<Arc<AppState>>,
    path: KeyPath,
    body: Result<Json<WeightBody>, JsonRejection>,
) -> Receipt {
    let (pool, key) = target(&state, path)?;
    let Json(body) = body.map_err(json_error)?;
    let weight = u32::try_from(body.weight)
        .ok()
        .filter(|w| i64::from(*w) <= MAX_WEIGHT)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_weight",
                format!("`weight` must be an integer in 0..={MAX_WEIGHT}."),
            )
        })?;
    let name = &pool.config.name;
    (state.store.set_weight(name, &key, weight).await)
        .map_err(|e| store_error(e, name, Some(&key)))?;
    let mut receipt = ActionReceipt::new(name, Some(key.as_str()), "weight");
    receipt.weight = Some(weight);
    log_action(&receipt);
    Ok(Json(receipt))
}

/// `PUT .../group` `{"group": G}`, G being `stable` or the pool's canary group.
pub(super) async fn set_group(
    State(state): State<Arc<AppState>>,
    path: KeyPath,
    body: Result<Json<GroupBody>, JsonRejection>,
) -> Receipt {
    let (pool, key) = target(&state, path)?;
    let Json(GroupBody { group }) = body.map_err(json_error)?;
    let canary = &pool.config.canary.group;
    if group != STABLE_GROUP && group != *canary {
        return Err(ApiError::bad_request(
            "invalid_group",
            format!("`group` must be `{STABLE_GROUP}` or this pool's canary group `{canary}`."),
        ));
    }
    let name = &pool.config.name;
    (state.store.set_group(name, &key, &group).await)
        .map_err(|e| store_error(e, name, Some(&key)))?;
    let mut receipt = ActionReceipt::new(name, Some(key.as_str()), "group");
    receipt.group = Some(group);
    log_action(&receipt);
    Ok(Json(receipt))
}

/// `PUT /admin/pools/{pool}/canary` `{"percent": P}`, P in 0..=100.
pub(super) async fn set_canary(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<CanaryBody>, JsonRejection>,
) -> Receipt {
    let Path(pool) = path.map_err(path_error)?;
    let pool = pool_runtime(&state, &pool)?;
    let Json(body) = body.map_err(json_error)?;
    let percent = u8::try_from(body.percent)
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_percent",
                "`percent` must be an integer in 0..=100.",
            )
        })?;
    let name = &pool.config.name;
    (state.store.set_canary(name, percent).await).map_err(|e| store_error(e, name, None))?;
    let mut receipt = ActionReceipt::new(name, None, "canary");
    receipt.canary_percent = Some(percent);
    log_action(&receipt);
    Ok(Json(receipt))
}

/// `POST /admin/reload`: re-reads the config file, here and on every replica sharing this
/// one's Redis, and lists each replica's answer; an invalid file here is a 400 listing every
/// problem, and the running config stays.
pub(super) async fn reload(
    State(state): State<Arc<AppState>>,
) -> Result<Json<ReloadReport>, ApiError> {
    tracing::info!(action = "reload", "admin action");
    crate::reload::reload_cluster(&state)
        .await
        .map(Json)
        .map_err(|problems| {
            ApiError::bad_request(
                "invalid_config",
                format!("Config not reloaded; the running config is kept. {problems}"),
            )
        })
}
