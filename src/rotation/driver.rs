//! The rotation task every replica runs: once a second, per pool, it reads the plan, sends this
//! replica's step counts, and takes or renews the lease; the replica holding the lease
//! evaluates the plan every `eval_interval_ms` and writes its decision with its fencing token.
//! It also watches keys' `expires` and starts a key's rotation to its `successor` in time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::guards::{evaluate, Decision, NewKeyState};
use crate::config::RotationConfig;
use crate::config::STABLE_GROUP;
use crate::metrics::steps::StepRecorder;
use crate::pool::{KeyId, KeyState};
use crate::state::{AppState, PoolRuntime};
use crate::store::rotation::plan::{
    LeaseReply, Plan, PlanSpec, PlanState, PlanWrite, RotationView, WriteReply,
};
use crate::store::{AdminState, KeyStoreExt, StoreError};

/// How often the task runs for each pool.
const TICK: Duration = Duration::from_secs(1);

/// This replica's name in leases and history: `$HOSTNAME` (a Kubernetes pod's name) or the
/// host's name, and the process id.
pub fn replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "replica".to_string());
    format!("{host}-{}", std::process::id())
}

/// What the task remembers of one pool between ticks.
#[derive(Default)]
struct PoolDriver {
    /// The fence of the lease this replica holds (0: none).
    fence: u64,
    last_eval: Option<Instant>,
    recorder: Option<Arc<StepRecorder>>,
    /// The plan id and step the recorder counts for.
    recording: Option<(String, usize)>,
    last_warned: Option<Instant>,
}

/// Runs until `stop` resolves.
pub async fn run(
    state: Arc<AppState>,
    replica: String,
    stop: impl std::future::Future<Output = ()>,
) {
    // Every pool's rotation gauges exist from the start (state "none" until the first read).
    for pool in state.gateway().pools.values() {
        export_state(&state, &pool.config.name, None);
        watch_expiry(&state, pool, &mut PoolDriver::default());
    }
    let mut pools: HashMap<String, PoolDriver> = HashMap::new();
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = every.tick() => {}
        }
        let gateway = state.gateway();
        pools.retain(|name, _| gateway.pools.contains_key(name));
        for pool in gateway.pools.values() {
            let d = pools.entry(pool.config.name.clone()).or_default();
            if let Err(e) = tick(&state, &replica, pool, d).await {
                tracing::debug!(pool = %pool.config.name, error = %e, "rotation tick failed");
            }
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn tick(
    state: &AppState,
    replica: &str,
    pool: &PoolRuntime,
    d: &mut PoolDriver,
) -> Result<(), StoreError> {
    let name = pool.config.name.as_str();
    watch_expiry(state, pool, d);
    let view = state.store.rotation_read(name).await?;
    export_state(state, name, view.plan.as_ref());
    let running = view.plan.as_ref().filter(|p| p.state == PlanState::Running);
    let Some(plan) = running else {
        stop_recording(state, name, d);
        d.fence = 0;
        return maybe_start_for_expiry(state, pool, view.plan.as_ref()).await;
    };
    record_step(state, name, plan, &pool.config.canary.group, d);
    if let Some(r) = &d.recorder {
        let deltas = r.take();
        if !deltas.is_empty() {
            state.store.rotation_stats(name, plan.step, &deltas).await?;
        }
    }
    let lease_ms = pool.config.rotation.lease_ms;
    match state
        .store
        .rotation_lease(name, replica, d.fence, lease_ms)
        .await?
    {
        LeaseReply::Held { fence, .. } => {
            if d.fence != fence {
                tracing::info!(pool = %name, fence, "rotation: this replica drives the plan");
            }
            d.fence = fence;
        }
        LeaseReply::Lost(l) => {
            tracing::warn!(pool = %name, holder = %l.holder, fence = l.fence, "rotation: lease lost to another replica; no longer driving");
            d.fence = 0;
        }
        _ => d.fence = 0,
    }
    if d.fence == 0 {
        return Ok(());
    }
    let interval = Duration::from_millis(pool.config.rotation.eval_interval_ms);
    if d.last_eval.is_some_and(|t| t.elapsed() < interval) {
        return Ok(());
    }
    d.last_eval = Some(Instant::now());
    // Fresh counts, including what this replica just sent.
    let view = state.store.rotation_read(name).await?;
    let Some(plan) = view.plan.as_ref().filter(|p| p.state == PlanState::Running) else {
        return Ok(());
    };
    drive(state, replica, pool, d, plan, &view).await
}

/// The lease holder's evaluation and the write of its decision.
async fn drive(
    state: &AppState,
    replica: &str,
    pool: &PoolRuntime,
    d: &mut PoolDriver,
    plan: &Plan,
    view: &RotationView,
) -> Result<(), StoreError> {
    let name = pool.config.name.as_str();
    let write = |event: &str, detail: String| PlanWrite {
        replica: replica.to_string(),
        fence: d.fence,
        event: event.to_string(),
        detail,
        ..PlanWrite::default()
    };
    // Past the last step: the old keys drain; done once they had `drain_wait_ms`.
    if plan.step >= plan.spec.steps.len() {
        let waited = view.now_ms.saturating_sub(plan.step_started_ms);
        if waited < pool.config.rotation.drain_wait_ms {
            return Ok(());
        }
        let w = PlanWrite {
            state: Some(PlanState::Done),
            canary: Some(0),
            ..write("done", "old keys drained; rotation complete".into())
        };
        if fenced_write(state, name, w, d).await? {
            tracing::info!(pool = %name, "rotation done");
        }
        return Ok(());
    }
    let canary_group = &pool.config.canary.group;
    let canary = view.counts_of(plan.step, canary_group);
    let stable = view.counts_of(plan.step, STABLE_GROUP);
    let new_keys = new_key_states(state, name, plan).await;
    match evaluate(plan, view.now_ms, &canary, &stable, &new_keys) {
        Decision::Wait(_) => Ok(()),
        Decision::Advance { to_step, percent } => {
            let w = PlanWrite {
                canary: Some(percent),
                step: Some(to_step),
                restart_step: true,
                ..write(
                    "advance",
                    format!(
                        "to {percent}% (canary {} requests, {} errors; stable {} requests, {} errors)",
                        canary.requests, canary.errors, stable.requests, stable.errors
                    ),
                )
            };
            if fenced_write(state, name, w, d).await? {
                tracing::info!(pool = %name, percent, "rotation advanced");
            }
            Ok(())
        }
        Decision::Finish => {
            let w = PlanWrite {
                step: Some(plan.spec.steps.len()),
                restart_step: true,
                ..write(
                    "finish",
                    "new keys to the stable group, old keys draining".into(),
                )
            };
            if !fenced_write(state, name, w, d).await? {
                return Ok(());
            }
            for id in ids(&plan.spec.new_keys) {
                state.store.set_group(name, &id, STABLE_GROUP).await?;
            }
            for id in ids(&plan.spec.old_keys) {
                state.store.set_state(name, &id, AdminState::Drain).await?;
            }
            tracing::info!(pool = %name, "rotation at 100%: new keys are stable, old keys draining");
            Ok(())
        }
        Decision::Rollback(reason) => {
            let w = PlanWrite {
                state: Some(PlanState::RolledBack),
                canary: Some(0),
                reason: Some(reason.clone()),
                ..write("rollback", reason.clone())
            };
            if !fenced_write(state, name, w, d).await? {
                return Ok(());
            }
            for id in ids(&plan.spec.new_keys) {
                state.store.set_state(name, &id, AdminState::Drain).await?;
            }
            tracing::warn!(pool = %name, reason = %reason, "rotation rolled back: canary percent 0, new keys drained");
            Ok(())
        }
    }
}

/// Sends a fenced write; `false` when it was refused (this replica lost the lease).
async fn fenced_write(
    state: &AppState,
    pool: &str,
    w: PlanWrite,
    d: &mut PoolDriver,
) -> Result<bool, StoreError> {
    match state.store.rotation_write(pool, &w).await? {
        WriteReply::Ok => Ok(true),
        WriteReply::Fenced { fence, holder } => {
            tracing::warn!(pool = %pool, holder = %holder, fence, "rotation write refused: this replica's lease is stale");
            d.fence = 0;
            Ok(false)
        }
        _ => Ok(false),
    }
}

fn ids(list: &[String]) -> Vec<KeyId> {
    list.iter().filter_map(|k| KeyId::new(k)).collect()
}

/// Whether each new key was disabled by the provider's answer (`unauthorized`, `quota`) or
/// had its breaker opened.
async fn new_key_states(state: &AppState, pool: &str, plan: &Plan) -> Vec<NewKeyState> {
    let Ok(snapshot) = state.store.snapshot(pool, None).await else {
        return Vec::new();
    };
    snapshot
        .keys
        .iter()
        .filter(|k| plan.spec.new_keys.contains(&k.id))
        .map(|k| NewKeyState {
            id: k.id.clone(),
            revoked: matches!(
                (k.status, k.reason.as_str()),
                (KeyState::Disabled, "unauthorized" | "quota")
                    | (KeyState::Cooling, "auth_unconfirmed")
            )
            .then(|| k.reason.clone()),
            broken: matches!(k.status, KeyState::Open | KeyState::HalfOpen),
        })
        .collect()
}

/// Counts this replica's attempts for the plan's current step from now on.
fn record_step(state: &AppState, pool: &str, plan: &Plan, canary_group: &str, d: &mut PoolDriver) {
    let now = Some((plan.spec.id.clone(), plan.step));
    if d.recording == now && d.recorder.is_some() {
        return;
    }
    let r = Arc::new(StepRecorder::new(plan.step, STABLE_GROUP, canary_group));
    state.metrics.rotation_steps.set(pool, Some(r.clone()));
    d.recorder = Some(r);
    d.recording = now;
}

fn stop_recording(state: &AppState, pool: &str, d: &mut PoolDriver) {
    if d.recorder.take().is_some() {
        state.metrics.rotation_steps.set(pool, None);
    }
    d.recording = None;
}

fn export_state(state: &AppState, pool: &str, plan: Option<&Plan>) {
    let current = plan.map_or("none", |p| p.state.as_str());
    for s in PlanState::ALL
        .iter()
        .map(|s| s.as_str())
        .chain(std::iter::once("none"))
    {
        state
            .metrics
            .rotation_state
            .with_label_values(&[pool, s])
            .set(i64::from(s == current));
    }
    let step = plan
        .filter(|p| p.state.is_active())
        .map_or(0, |p| i64::from(p.percent()));
    state
        .metrics
        .rotation_step
        .with_label_values(&[pool])
        .set(step);
}

/// Exports each expiring key's remaining time and warns (at most hourly) inside the window.
fn watch_expiry(state: &AppState, pool: &PoolRuntime, d: &mut PoolDriver) {
    let now = unix_ms() as i64;
    let warn_ms = pool.config.rotation.warn_before_expiry_h as i64 * 3_600_000;
    let due_warning = d
        .last_warned
        .is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
    let mut warned = false;
    for key in &pool.config.keys {
        let Some(expires) = key.expires_ms else {
            continue;
        };
        let left_ms = expires as i64 - now;
        state
            .metrics
            .key_expiry
            .with_label_values(&[&pool.config.name, &key.id])
            .set(left_ms.div_euclid(1000));
        if left_ms <= warn_ms && due_warning {
            warned = true;
            tracing::warn!(pool = %pool.config.name, key = %key.id, hours_left = left_ms / 3_600_000,
                successor = key.successor.as_deref().unwrap_or("none"), "key expires soon");
        }
    }
    if warned {
        d.last_warned = Some(Instant::now());
    }
}

/// Starts the rotation of a key that expires within `start_before_expiry_h` to its successor,
/// unless the latest plan already rotated (or tried to rotate) that key.
async fn maybe_start_for_expiry(
    state: &AppState,
    pool: &PoolRuntime,
    latest: Option<&Plan>,
) -> Result<(), StoreError> {
    let now = unix_ms();
    let before_ms = pool.config.rotation.start_before_expiry_h * 3_600_000;
    for key in &pool.config.keys {
        let (Some(expires), Some(successor)) = (key.expires_ms, &key.successor) else {
            continue;
        };
        if now + before_ms < expires || latest.is_some_and(|p| p.spec.auto_for == key.id) {
            continue;
        }
        let mut spec = plan_spec(
            &pool.config.rotation,
            vec![successor.clone()],
            vec![key.id.clone()],
        );
        spec.auto_for = key.id.clone();
        let reply = state.store.rotation_start(&pool.config.name, &spec).await?;
        tracing::info!(pool = %pool.config.name, key = %key.id, successor = %successor, reply = ?reply, "key nears expiry: rotation to its successor started");
        return Ok(());
    }
    Ok(())
}

/// A plan from the pool's `[pools.rotation]` defaults.
pub fn plan_spec(cfg: &RotationConfig, new_keys: Vec<String>, old_keys: Vec<String>) -> PlanSpec {
    PlanSpec {
        id: uuid::Uuid::new_v4().simple().to_string(),
        new_keys,
        old_keys,
        steps: cfg.steps.clone(),
        min_requests: cfg.min_requests,
        min_dwell_ms: cfg.min_dwell_s * 1000,
        max_error_increase: f64::from(cfg.max_error_increase_pct) / 100.0,
        max_p99_ratio: f64::from(cfg.max_p99_ratio_pct) / 100.0,
        p99_slack_ms: cfg.p99_slack_ms,
        auto_for: String::new(),
    }
}
