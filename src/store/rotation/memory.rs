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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rotation::plan::{PlanSpec, PlanWrite};

    /// A pool of one stable key `old` and one canary key `new`.
    struct Pool {
        percent: u8,
        bumps: u32,
    }

    impl PoolAccess for Pool {
        fn canary_group(&self) -> &str {
            "canary"
        }
        fn key_group(&self, id: &str) -> Option<&str> {
            match id {
                "old" => Some("stable"),
                "new" => Some("canary"),
                _ => None,
            }
        }
        fn set_canary_percent(&mut self, percent: u8) {
            self.percent = percent;
            self.bumps += 1;
        }
    }

    fn spec(new: &str, old: &str) -> PlanSpec {
        PlanSpec {
            id: "p1".into(),
            new_keys: vec![new.into()],
            old_keys: vec![old.into()],
            steps: vec![5, 25, 50, 100],
            min_requests: 1,
            min_dwell_ms: 0,
            max_error_increase: 0.05,
            max_p99_ratio: 2.0,
            p99_slack_ms: 0,
            auto_for: String::new(),
        }
    }

    fn lease(replica: &str, fence: u64) -> RotationOp {
        RotationOp::Lease {
            replica: replica.into(),
            fence,
            lease_ms: 1000,
        }
    }

    fn advance(replica: &str, fence: u64) -> RotationOp {
        RotationOp::Write(PlanWrite {
            replica: replica.into(),
            fence,
            canary: Some(25),
            event: "advance".into(),
            step: Some(1),
            ..PlanWrite::default()
        })
    }

    #[test]
    fn start_checks_the_keys_groups_and_sets_the_first_percent() {
        let (mut rot, mut pool) = (
            PoolRotation::default(),
            Pool {
                percent: 0,
                bumps: 0,
            },
        );
        let bad = apply(
            &mut rot,
            &mut pool,
            0,
            RotationOp::Start(spec("old", "new")),
        );
        assert!(matches!(bad, RotationReply::BadKey { .. }), "{bad:?}");
        let unknown = apply(
            &mut rot,
            &mut pool,
            0,
            RotationOp::Start(spec("nope", "old")),
        );
        assert!(
            matches!(unknown, RotationReply::BadKey { .. }),
            "{unknown:?}"
        );
        assert_eq!(pool.percent, 0, "a refused start changes nothing");
        let ok = apply(
            &mut rot,
            &mut pool,
            0,
            RotationOp::Start(spec("new", "old")),
        );
        assert_eq!(ok, RotationReply::Started { percent: 5 });
        assert_eq!((pool.percent, pool.bumps), (5, 1));
        let again = apply(
            &mut rot,
            &mut pool,
            0,
            RotationOp::Start(spec("new", "old")),
        );
        assert_eq!(again, RotationReply::Busy(PlanState::Running));
    }

    #[test]
    fn a_lease_that_ran_out_is_taken_with_the_next_fence_and_the_old_fence_is_refused() {
        let (mut rot, mut pool) = (
            PoolRotation::default(),
            Pool {
                percent: 0,
                bumps: 0,
            },
        );
        apply(
            &mut rot,
            &mut pool,
            0,
            RotationOp::Start(spec("new", "old")),
        );
        let a = apply(&mut rot, &mut pool, 10, lease("a", 0));
        assert_eq!(
            a,
            RotationReply::Lease(LeaseReply::Held {
                fence: 1,
                until_ms: 1010
            })
        );
        // While a's lease lives, b is told who holds it.
        let b = apply(&mut rot, &mut pool, 500, lease("b", 0));
        assert!(matches!(b, RotationReply::Lease(LeaseReply::Other(ref l)) if l.holder == "a"));
        // a's lease runs out; b takes it with fence 2.
        let b = apply(&mut rot, &mut pool, 2000, lease("b", 0));
        assert_eq!(
            b,
            RotationReply::Lease(LeaseReply::Held {
                fence: 2,
                until_ms: 3000
            })
        );
        // a wakes up: its renewal and its write carry fence 1 and are refused and recorded.
        let renew = apply(&mut rot, &mut pool, 2100, lease("a", 1));
        assert!(
            matches!(renew, RotationReply::Lease(LeaseReply::Lost(_))),
            "{renew:?}"
        );
        let write = apply(&mut rot, &mut pool, 2100, advance("a", 1));
        assert!(matches!(
            write,
            RotationReply::Written(WriteReply::Fenced { fence: 2, .. })
        ));
        assert_eq!(pool.percent, 5, "the stale write changed no percent");
        let RotationReply::View(v) = apply(&mut rot, &mut pool, 2200, RotationOp::Read) else {
            panic!("no view");
        };
        let refused = v
            .history
            .iter()
            .filter(|h| h.replica == "a" && h.event == "refused");
        assert_eq!(refused.count(), 2, "{:#?}", v.history);
        assert_eq!(v.plan.map(|p| p.step), Some(0));
        // The holder's write goes through.
        let ok = apply(&mut rot, &mut pool, 2300, advance("b", 2));
        assert_eq!(ok, RotationReply::Written(WriteReply::Ok));
        assert_eq!(pool.percent, 25);
    }

    #[test]
    fn counts_are_kept_only_for_the_running_plans_current_step() {
        let (mut rot, mut pool) = (
            PoolRotation::default(),
            Pool {
                percent: 0,
                bumps: 0,
            },
        );
        apply(
            &mut rot,
            &mut pool,
            0,
            RotationOp::Start(spec("new", "old")),
        );
        let deltas = vec![("canary:requests".to_string(), 3)];
        let stale = RotationOp::Stats {
            step: 1,
            deltas: deltas.clone(),
        };
        assert_eq!(
            apply(&mut rot, &mut pool, 0, stale),
            RotationReply::Stats { applied: false }
        );
        let now = RotationOp::Stats { step: 0, deltas };
        assert_eq!(
            apply(&mut rot, &mut pool, 0, now),
            RotationReply::Stats { applied: true }
        );
        let RotationReply::View(v) = apply(&mut rot, &mut pool, 0, RotationOp::Read) else {
            panic!("no view");
        };
        assert_eq!(v.counts_of(0, "canary").requests, 3);
        assert_eq!(v.counts_of(1, "canary").requests, 0);
    }

    #[test]
    fn abort_sets_the_percent_to_zero_and_a_paused_plan_takes_no_lease() {
        let (mut rot, mut pool) = (
            PoolRotation::default(),
            Pool {
                percent: 0,
                bumps: 0,
            },
        );
        apply(
            &mut rot,
            &mut pool,
            0,
            RotationOp::Start(spec("new", "old")),
        );
        let pause = RotationOp::Control {
            action: Control::Pause,
            reason: "look".into(),
        };
        assert_eq!(
            apply(&mut rot, &mut pool, 1, pause),
            RotationReply::Controlled(PlanState::Paused)
        );
        assert_eq!(
            apply(&mut rot, &mut pool, 2, lease("a", 0)),
            RotationReply::Lease(LeaseReply::Idle)
        );
        let abort = RotationOp::Control {
            action: Control::Abort,
            reason: "bad".into(),
        };
        assert_eq!(
            apply(&mut rot, &mut pool, 3, abort),
            RotationReply::Controlled(PlanState::Aborted)
        );
        assert_eq!(pool.percent, 0);
        let resume = RotationOp::Control {
            action: Control::Resume,
            reason: String::new(),
        };
        assert_eq!(
            apply(&mut rot, &mut pool, 4, resume),
            RotationReply::BadState(PlanState::Aborted)
        );
    }
}
