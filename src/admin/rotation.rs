//! The rotation endpoints: start (or dry-run) a plan, read its status, pause, resume, abort.
//!
//! | method and path | body | effect |
//! |---|---|---|
//! | `GET /admin/pools/{pool}/rotation` | | [`RotationStatus`]: plan, lease, history, counts, verdict |
//! | `POST /admin/pools/{pool}/rotation` | [`StartBody`] | starts a plan; `dry_run` only shows it |
//! | `POST /admin/pools/{pool}/rotation/{pause,resume,abort}` | `{"reason": …}` optional | |

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{json_error, path_error, pool_runtime, store_error};
use crate::config::STABLE_GROUP;
use crate::error::ApiError;
use crate::pool::KeyId;
use crate::rotation::driver::plan_spec;
use crate::rotation::guards::{error_ratio, evaluate, p99_ms, Decision};
use crate::rotation::{
    Control, ControlReply, PlanSpec, PlanState, RotationView, StartReply, StepCounts,
};
use crate::state::{AppState, PoolRuntime};
use crate::store::{AdminState, KeyStoreExt};

/// `POST /admin/pools/{pool}/rotation`: the new and old keys; every other field defaults to the
/// pool's `[pools.rotation]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartBody {
    new_keys: Vec<String>,
    #[serde(default)]
    old_keys: Vec<String>,
    steps: Option<Vec<u8>>,
    min_requests: Option<u64>,
    min_dwell_s: Option<u64>,
    max_error_increase_pct: Option<u32>,
    max_p99_ratio_pct: Option<u32>,
    p99_slack_ms: Option<u64>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ControlBody {
    #[serde(default)]
    reason: String,
}

/// One group's counts during the current step, with the figures the guards use.
#[derive(Serialize)]
pub struct GroupFigures {
    pub requests: u64,
    pub errors: u64,
    pub auth_errors: u64,
    pub error_ratio: f64,
    pub p99_ms: Option<u64>,
}

impl GroupFigures {
    fn of(c: &StepCounts) -> GroupFigures {
        GroupFigures {
            requests: c.requests,
            errors: c.errors,
            auth_errors: c.auth_errors,
            error_ratio: error_ratio(c),
            p99_ms: p99_ms(c),
        }
    }
}

/// `GET /admin/pools/{pool}/rotation` (also the answer of start, control and dry runs).
#[derive(Serialize)]
pub struct RotationStatus {
    pub pool: String,
    #[serde(flatten)]
    pub view: RotationView,
    pub canary: Option<GroupFigures>,
    pub stable: Option<GroupFigures>,
    /// What the driver would decide with these counts now.
    pub verdict: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<PlanSpec>,
}

fn verdict_text(d: Decision) -> String {
    match d {
        Decision::Wait(why) => format!("wait: {why}"),
        Decision::Advance { percent, .. } => format!("advance to {percent}%"),
        Decision::Finish => "finish: new keys to stable, old keys drain".to_string(),
        Decision::Rollback(why) => format!("roll back: {why}"),
    }
}

async fn status(state: &AppState, pool: &PoolRuntime) -> Result<RotationStatus, ApiError> {
    let name = &pool.config.name;
    let view = state
        .store
        .rotation_read(name)
        .await
        .map_err(|e| store_error(e, name, None))?;
    let canary_group = &pool.config.canary.group;
    let (mut canary, mut stable, mut verdict) = (None, None, None);
    if let Some(plan) = view.plan.as_ref().filter(|p| p.state.is_active()) {
        let c = view.counts_of(plan.step, canary_group);
        let s = view.counts_of(plan.step, STABLE_GROUP);
        if plan.step < plan.spec.steps.len() {
            verdict = Some(verdict_text(evaluate(plan, view.now_ms, &c, &s, &[])));
        }
        canary = Some(GroupFigures::of(&c));
        stable = Some(GroupFigures::of(&s));
    }
    Ok(RotationStatus {
        pool: name.clone(),
        view,
        canary,
        stable,
        verdict,
        dry_run: None,
    })
}

type PoolPath = Result<Path<String>, PathRejection>;

pub(super) async fn get_status(
    State(state): State<Arc<AppState>>,
    path: PoolPath,
) -> Result<Json<RotationStatus>, ApiError> {
    let Path(pool) = path.map_err(path_error)?;
    let pool = pool_runtime(&state, &pool)?;
    Ok(Json(status(&state, &pool).await?))
}

/// Checks the keys against this replica's config: new keys in the canary group, old keys not.
fn check_keys(pool: &PoolRuntime, new: &[String], old: &[String]) -> Result<(), ApiError> {
    let canary = &pool.config.canary.group;
    let group_of = |id: &String| {
        pool.config
            .keys
            .iter()
            .find(|k| &k.id == id)
            .map(|k| &k.group)
    };
    if new.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_rotation",
            "`new_keys` must name at least one key.",
        ));
    }
    for id in new {
        match group_of(id) {
            Some(g) if g == canary => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_rotation",
                    format!("New key `{id}` must be in the pool's canary group `{canary}` (set `group = \"{canary}\"` in the config)."),
                ))
            }
            None => return Err(ApiError::bad_request("invalid_rotation", format!("Unknown key `{id}`."))),
        }
    }
    for id in old {
        match group_of(id) {
            Some(g) if g != canary => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_rotation",
                    format!("Old key `{id}` must not be in the canary group."),
                ))
            }
            None => {
                return Err(ApiError::bad_request(
                    "invalid_rotation",
                    format!("Unknown key `{id}`."),
                ))
            }
        }
    }
    Ok(())
}

pub(super) async fn start(
    State(state): State<Arc<AppState>>,
    path: PoolPath,
    body: Result<Json<StartBody>, JsonRejection>,
) -> Result<(StatusCode, Json<RotationStatus>), ApiError> {
    let Path(pool) = path.map_err(path_error)?;
    let pool = pool_runtime(&state, &pool)?;
    let Json(b) = body.map_err(json_error)?;
    check_keys(&pool, &b.new_keys, &b.old_keys)?;
    let cfg = &pool.config.rotation;
    let mut spec = plan_spec(cfg, b.new_keys, b.old_keys);
    if let Some(steps) = b.steps {
        let rising = steps.windows(2).all(|w| w[0] < w[1]);
        if steps.is_empty()
            || !rising
            || steps.iter().any(|s| !(1..=100).contains(s))
            || steps.last() != Some(&100)
        {
            return Err(ApiError::bad_request(
                "invalid_rotation",
                "`steps` must be rising percents in 1..=100 ending at 100, e.g. [5, 25, 50, 100].",
            ));
        }
        spec.steps = steps;
    }
    spec.min_requests = b.min_requests.unwrap_or(spec.min_requests);
    spec.min_dwell_ms = b.min_dwell_s.map_or(spec.min_dwell_ms, |s| s * 1000);
    if let Some(p) = b.max_error_increase_pct {
        spec.max_error_increase = f64::from(p.min(100)) / 100.0;
    }
    if let Some(p) = b.max_p99_ratio_pct {
        spec.max_p99_ratio = f64::from(p.max(1)) / 100.0;
    }
    spec.p99_slack_ms = b.p99_slack_ms.unwrap_or(spec.p99_slack_ms);
    let name = pool.config.name.clone();
    if b.dry_run {
        let mut s = status(&state, &pool).await?;
        s.dry_run = Some(spec);
        return Ok((StatusCode::OK, Json(s)));
    }
    let reply = state.store.rotation_start(&name, &spec).await;
    match reply.map_err(|e| store_error(e, &name, None))? {
        StartReply::Started { percent } => {
            tracing::info!(pool = %name, percent, action = "rotation start", "admin action");
        }
        StartReply::Busy(s) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                "rotation_in_progress",
                format!(
                    "A rotation plan is already {} on pool `{name}`: abort it first.",
                    s.as_str()
                ),
            ))
        }
        StartReply::BadKey { key, why } => {
            return Err(ApiError::bad_request(
                "invalid_rotation",
                format!(
                    "Key `{key}`: {why} (in the store; is every replica's config up to date?)."
                ),
            ))
        }
    }
    Ok((StatusCode::CREATED, Json(status(&state, &pool).await?)))
}

pub(super) async fn control(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Option<Json<ControlBody>>,
) -> Result<Json<RotationStatus>, ApiError> {
    let Path((pool, action)) = path.map_err(path_error)?;
    let pool = pool_runtime(&state, &pool)?;
    let action = match action.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "abort" => Control::Abort,
        _ => {
            return Err(ApiError::not_found(
                "Unknown rotation action: use pause, resume or abort.",
            ))
        }
    };
    let reason = body.map(|Json(b)| b.reason).unwrap_or_default();
    let reason = if reason.is_empty() {
        "operator".to_string()
    } else {
        reason.chars().take(200).collect()
    };
    let name = pool.config.name.clone();
    match state
        .store
        .rotation_control(&name, action, &reason)
        .await
        .map_err(|e| store_error(e, &name, None))?
    {
        ControlReply::Controlled(s) => {
            tracing::info!(pool = %name, action = action.as_str(), state = s.as_str(), "admin action: rotation");
            if s == PlanState::Aborted {
                drain_new_keys(&state, &pool).await?;
            }
        }
        ControlReply::NoPlan => {
            return Err(ApiError::not_found(format!(
                "Pool `{name}` has no rotation plan."
            )))
        }
        ControlReply::BadState(s) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                "invalid_rotation_state",
                format!("Cannot {} a plan that is {}.", action.as_str(), s.as_str()),
            ))
        }
    }
    Ok(Json(status(&state, &pool).await?))
}

/// After an abort: the plan's new keys stop taking traffic.
async fn drain_new_keys(state: &AppState, pool: &PoolRuntime) -> Result<(), ApiError> {
    let name = &pool.config.name;
    let Ok(view) = state.store.rotation_read(name).await else {
        return Ok(());
    };
    let Some(plan) = view.plan else { return Ok(()) };
    for id in plan.spec.new_keys.iter().filter_map(|k| KeyId::new(k)) {
        state
            .store
            .set_state(name, &id, AdminState::Drain)
            .await
            .map_err(|e| store_error(e, name, Some(&id)))?;
    }
    Ok(())
}
