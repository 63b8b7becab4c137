//! The rotation operations in process: the semantics of `lua/rotation_*.lua`, step for step, for
//! the embedded store (which calls [`apply`] under its own lock, so each operation is atomic
//! like a script).

use std::collections::{BTreeMap, VecDeque};

use super::plan::{
    counts_from_fields, Control, HistoryEntry, LeaseInfo, LeaseReply, Plan, PlanState, RotationOp,
    RotationReply, RotationView, WriteReply,
};

/// What a rotation operation needs of its pool.
pub trait PoolAccess {
    fn canary_group(&self) -> &str;
    fn key_group(&self, id: &str) -> Option<&str>;
    /// Sets the canary percent and bumps the pool's change counter.
    fn set_canary_percent(&mut self, percent: u8);
}

/// One pool's rotation: the plan, lease, history and counts of `lua/rotation_lib.lua`.
#[derive(Debug, Default)]
pub struct PoolRotation {
    plan: Option<Plan>,
    lease: LeaseInfo,
    history: VecDeque<HistoryEntry>,
    stats: BTreeMap<String, u64>,
}

impl PoolRotation {
    fn history(&mut self, at_ms: u64, fence: u64, replica: &str, event: &str, detail: String) {
        self.history.push_front(HistoryEntry {
            at_ms,
            fence,
            replica: replica.to_string(),
            event: event.to_string(),
            detail,
        });
        self.history.truncate(200);
    }

    fn state(&self) -> Option<PlanState> {
        self.plan.as_ref().map(|p| p.state)
    }
}

/// Applies one operation at `now` (the store's clock).
pub fn apply(
    rot: &mut PoolRotation,
    pool: &mut dyn PoolAccess,
    now: u64,
    op: RotationOp,
) -> RotationReply {
    match op {
        RotationOp::Start(spec) => {
            if let Some(s) = rot.state().filter(|s| s.is_active()) {
                return RotationReply::Busy(s);
            }
            let canary = pool.canary_group().to_string();
            for id in &spec.new_keys {
                match pool.key_group(id) {
                    None => return bad_key(id, "unknown key"),
                    Some(g) if g != canary => {
                        return bad_key(id, &format!("not in the canary group {canary}"))
                    }
                    _ => {}
                }
            }
            for id in &spec.old_keys {
                match pool.key_group(id) {
                    None => return bad_key(id, "unknown key"),
                    Some(g) if g == canary => {
                        return bad_key(id, "an old key must not be in the canary group")
                    }
                    _ => {}
                }
            }
            let Some(&first) = spec.steps.first() else {
                return bad_key("", "steps must start with a number");
            };
            let detail = format!(
                "new={} old={} steps={} percent={first}",
                spec.new_keys.join(","),
                spec.old_keys.join(","),
                join(&spec.steps)
            );
            rot.stats.clear();
            rot.plan = Some(Plan {
                spec,
                state: PlanState::Running,
                step: 0,
                step_started_ms: now,
                reason: String::new(),
                started_ms: now,
                updated_ms: now,
            });
            pool.set_canary_percent(first);
            let fence = rot.lease.fence;
            rot.history(now, fence, "admin", "start", detail);
            RotationReply::Started { percent: first }
        }
        RotationOp::Control { action, reason } => {
            let Some(plan) = rot.plan.as_mut() else {
                return RotationReply::NoPlan;
            };
            let next = match (action, plan.state) {
                (Control::Pause, PlanState::Running) => PlanState::Paused,
                (Control::Resume, PlanState::Paused) => {
                    plan.step_started_ms = now;
                    PlanState::Running
                }
                (Control::Abort, s) if s.is_active() => {
                    plan.reason = reason.clone();
                    pool.set_canary_percent(0);
                    PlanState::Aborted
                }
                (_, s) => return RotationReply::BadState(s),
            };
            plan.state = next;
            plan.updated_ms = now;
            let fence = rot.lease.fence;
            rot.history(now, fence, "admin", action.as_str(), reason);
            RotationReply::Controlled(next)
        }
        RotationOp::Lease {
            replica,
            fence,
            lease_ms,
        } => {
            if rot.state() != Some(PlanState::Running) {
                return RotationReply::Lease(LeaseReply::Idle);
            }
            let l = rot.lease.clone();
            if fence > 0 {
                if l.holder == replica && l.fence == fence {
                    rot.lease.until_ms = now + lease_ms;
                    return RotationReply::Lease(LeaseReply::Held {
                        fence,
                        until_ms: now + lease_ms,
                    });
                }
                let detail = format!(
                    "renew with a stale fence (lease fence {}, holder {})",
                    l.fence, l.holder
                );
                rot.history(now, fence, &replica, "refused", detail);
                return RotationReply::Lease(LeaseReply::Lost(l));
            }
            if !l.holder.is_empty() && l.until_ms > now {
                return RotationReply::Lease(LeaseReply::Other(l));
            }
            rot.lease = LeaseInfo {
                holder: replica.clone(),
                until_ms: now + lease_ms,
                fence: l.fence + 1,
            };
            let detail = if l.holder.is_empty() {
                "acquired".to_string()
            } else {
                format!("acquired after {}", l.holder)
            };
            rot.history(now, l.fence + 1, &replica, "lease", detail);
            RotationReply::Lease(LeaseReply::Held {
                fence: l.fence + 1,
                until_ms: now + lease_ms,
            })
        }
        RotationOp::Write(w) => {
            let Some(state) = rot.state() else {
                return RotationReply::Written(WriteReply::NoPlan);
            };
            let l = rot.lease.clone();
            if state != PlanState::Running
                || l.holder != w.replica
                || l.fence != w.fence
                || l.until_ms <= now
            {
                let detail = format!(
                    "{} (plan {}, lease fence {}, holder {})",
                    w.event,
                    state.as_str(),
                    l.fence,
                    l.holder
                );
                rot.history(now, w.fence, &w.replica, "refused", detail);
                return RotationReply::Written(WriteReply::Fenced {
                    fence: l.fence,
                    holder: l.holder,
                });
            }
            if let Some(plan) = rot.plan.as_mut() {
                if let Some(s) = w.state {
                    plan.state = s;
                }
                if let Some(s) = w.step {
                    plan.step = s;
                }
                if w.restart_step {
                    plan.step_started_ms = now;
                }
                if let Some(r) = &w.reason {
                    plan.reason = r.clone();
                }
                plan.updated_ms = now;
            }
            if let Some(p) = w.canary {
                pool.set_canary_percent(p);
            }
            rot.history(now, w.fence, &w.replica, &w.event, w.detail);
            RotationReply::Written(WriteReply::Ok)
        }
        RotationOp::Stats { step, deltas } => {
            let running = rot
                .plan
                .as_ref()
                .is_some_and(|p| p.state == PlanState::Running && p.step == step);
            if running {
                for (field, delta) in deltas {
                    *rot.stats.entry(format!("{step}:{field}")).or_default() += delta;
                }
            }
            RotationReply::Stats { applied: running }
        }
        RotationOp::Read => RotationReply::View(Box::new(RotationView {
            now_ms: now,
            plan: rot.plan.clone(),
            lease: rot.lease.clone(),
            history: rot.history.iter().take(50).cloned().collect(),
            counts: counts_from_fields(&rot.stats),
        })),
    }
}

fn bad_key(id: &str, why: &str) -> RotationReply {
    RotationReply::BadKey {
        key: id.to_string(),
        why: why.to_string(),
    }
}

pub(crate) fn join(steps: &[u8]) -> String {
    steps
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
