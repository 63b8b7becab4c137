//! The rotation operations in process: the semantics of `lua/rotation_*.lua`, step for step, one
//! method of [`PoolRotation`] each, for the memory store (whose `PoolState::apply` in
//! `store/transitions.rs` calls them under its lock, so each operation is atomic like a script).

use std::collections::{BTreeMap, VecDeque};

use super::plan::{
    counts_from_fields, Control, ControlReply, HistoryEntry, LeaseInfo, LeaseReply, Plan, PlanSpec,
    PlanState, PlanWrite, RotationView, StartReply, StatsReply, WriteReply,
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

impl PoolRotation {
    /// `lua/rotation_start.lua`: an operator starts a plan at step 0.
    pub fn start(&mut self, pool: &mut dyn PoolAccess, now: u64, spec: &PlanSpec) -> StartReply {
        if let Some(s) = self.state().filter(|s| s.is_active()) {
            return StartReply::Busy(s);
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
        self.stats.clear();
        self.plan = Some(Plan {
            spec: spec.clone(),
            state: PlanState::Running,
            step: 0,
            step_started_ms: now,
            reason: String::new(),
            started_ms: now,
            updated_ms: now,
        });
        pool.set_canary_percent(first);
        let fence = self.lease.fence;
        self.history(now, fence, "admin", "start", detail);
        StartReply::Started { percent: first }
    }

    /// `lua/rotation_control.lua`: an operator pauses, resumes or aborts the plan.
    pub fn control(
        &mut self,
        pool: &mut dyn PoolAccess,
        now: u64,
        action: Control,
        reason: &str,
    ) -> ControlReply {
        let Some(plan) = self.plan.as_mut() else {
            return ControlReply::NoPlan;
        };
        let next = match (action, plan.state) {
            (Control::Pause, PlanState::Running) => PlanState::Paused,
            (Control::Resume, PlanState::Paused) => {
                plan.step_started_ms = now;
                PlanState::Running
            }
            (Control::Abort, s) if s.is_active() => {
                plan.reason = reason.to_string();
                pool.set_canary_percent(0);
                PlanState::Aborted
            }
            (_, s) => return ControlReply::BadState(s),
        };
        plan.state = next;
        plan.updated_ms = now;
        let fence = self.lease.fence;
        self.history(now, fence, "admin", action.as_str(), reason.to_string());
        ControlReply::Controlled(next)
    }

    /// `lua/rotation_lease.lua`: a replica takes or renews the lease.
    pub fn lease(&mut self, now: u64, replica: &str, fence: u64, lease_ms: u64) -> LeaseReply {
        if self.state() != Some(PlanState::Running) {
            return LeaseReply::Idle;
        }
        let l = self.lease.clone();
        if fence > 0 {
            if l.holder == replica && l.fence == fence {
                self.lease.until_ms = now + lease_ms;
                return LeaseReply::Held {
                    fence,
                    until_ms: now + lease_ms,
                };
            }
            let detail = format!(
                "renew with a stale fence (lease fence {}, holder {})",
                l.fence, l.holder
            );
            self.history(now, fence, replica, "refused", detail);
            return LeaseReply::Lost(l);
        }
        if !l.holder.is_empty() && l.until_ms > now {
            return LeaseReply::Other(l);
        }
        self.lease = LeaseInfo {
            holder: replica.to_string(),
            until_ms: now + lease_ms,
            fence: l.fence + 1,
        };
        let detail = if l.holder.is_empty() {
            "acquired".to_string()
        } else {
            format!("acquired after {}", l.holder)
        };
        self.history(now, l.fence + 1, replica, "lease", detail);
        LeaseReply::Held {
            fence: l.fence + 1,
            until_ms: now + lease_ms,
        }
    }

    /// `lua/rotation_write.lua`: the lease holder's fenced change of its running plan.
    pub fn write(&mut self, pool: &mut dyn PoolAccess, now: u64, w: &PlanWrite) -> WriteReply {
        let Some(state) = self.state() else {
            return WriteReply::NoPlan;
        };
        let l = self.lease.clone();
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
            self.history(now, w.fence, &w.replica, "refused", detail);
            return WriteReply::Fenced {
                fence: l.fence,
                holder: l.holder,
            };
        }
        if let Some(plan) = self.plan.as_mut() {
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
        self.history(now, w.fence, &w.replica, &w.event, w.detail.clone());
        WriteReply::Ok
    }

    /// `lua/rotation_stats.lua`: a replica's counts, kept only for the running plan's step.
    pub fn stats(&mut self, step: usize, deltas: &[(String, u64)]) -> StatsReply {
        let running = self
            .plan
            .as_ref()
            .is_some_and(|p| p.state == PlanState::Running && p.step == step);
        if running {
            for (field, delta) in deltas {
                *self.stats.entry(format!("{step}:{field}")).or_default() += delta;
            }
        }
        StatsReply { applied: running }
    }

    /// `lua/rotation_read.lua`: the plan, lease, newest history and counts at `now`.
    pub fn read(&self, now: u64) -> RotationView {
        RotationView {
            now_ms: now,
            plan: self.plan.clone(),
            lease: self.lease.clone(),
            history: self.history.iter().take(50).cloned().collect(),
            counts: counts_from_fields(&self.stats),
        }
    }
}

fn bad_key(id: &str, why: &str) -> StartReply {
    StartReply::BadKey {
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

    /// No plan yet, and the pool at canary percent 0.
    fn fresh() -> (PoolRotation, Pool) {
        let pool = Pool {
            percent: 0,
            bumps: 0,
        };
        (PoolRotation::default(), pool)
    }

    /// A plan from `new` to `old` started at 0.
    fn started() -> (PoolRotation, Pool) {
        let (mut rot, mut pool) = fresh();
        let reply = rot.start(&mut pool, 0, &PlanSpec::example("new", "old"));
        assert_eq!(reply, StartReply::Started { percent: 5 });
        (rot, pool)
    }

    fn advance(replica: &str, fence: u64) -> PlanWrite {
        PlanWrite {
            replica: replica.into(),
            fence,
            canary: Some(25),
            event: "advance".into(),
            step: Some(1),
            ..PlanWrite::default()
        }
    }

    #[test]
    fn start_checks_the_keys_groups_and_sets_the_first_percent() {
        let (mut rot, mut pool) = fresh();
        let bad = rot.start(&mut pool, 0, &PlanSpec::example("old", "new"));
        assert!(matches!(bad, StartReply::BadKey { .. }), "{bad:?}");
        let unknown = rot.start(&mut pool, 0, &PlanSpec::example("nope", "old"));
        assert!(matches!(unknown, StartReply::BadKey { .. }), "{unknown:?}");
        assert_eq!(pool.percent, 0, "a refused start changes nothing");
        let ok = rot.start(&mut pool, 0, &PlanSpec::example("new", "old"));
        assert_eq!(ok, StartReply::Started { percent: 5 });
        assert_eq!((pool.percent, pool.bumps), (5, 1));
        let again = rot.start(&mut pool, 0, &PlanSpec::example("new", "old"));
        assert_eq!(again, StartReply::Busy(PlanState::Running));
    }

    #[test]
    fn a_lease_that_ran_out_is_taken_with_the_next_fence_and_the_old_fence_is_refused() {
        let (mut rot, mut pool) = started();
        let held = |fence, until_ms| LeaseReply::Held { fence, until_ms };
        assert_eq!(rot.lease(10, "a", 0, 1000), held(1, 1010));
        // While a's lease lives, b is told who holds it.
        let b = rot.lease(500, "b", 0, 1000);
        assert!(matches!(b, LeaseReply::Other(ref l) if l.holder == "a"));
        // a's lease runs out; b takes it with fence 2.
        assert_eq!(rot.lease(2000, "b", 0, 1000), held(2, 3000));
        // a wakes up: its renewal and its write carry fence 1 and are refused and recorded.
        let renew = rot.lease(2100, "a", 1, 1000);
        assert!(matches!(renew, LeaseReply::Lost(_)), "{renew:?}");
        let write = rot.write(&mut pool, 2100, &advance("a", 1));
        assert!(matches!(write, WriteReply::Fenced { fence: 2, .. }));
        assert_eq!(pool.percent, 5, "the stale write changed no percent");
        let v = rot.read(2200);
        let refused = v
            .history
            .iter()
            .filter(|h| h.replica == "a" && h.event == "refused");
        assert_eq!(refused.count(), 2, "{:#?}", v.history);
        assert_eq!(v.plan.map(|p| p.step), Some(0));
        // The holder's write goes through.
        let ok = rot.write(&mut pool, 2300, &advance("b", 2));
        assert_eq!(ok, WriteReply::Ok);
        assert_eq!(pool.percent, 25);
    }

    #[test]
    fn counts_are_kept_only_for_the_running_plans_current_step() {
        let (mut rot, _pool) = started();
        let deltas = [("canary:requests".to_string(), 3)];
        assert_eq!(rot.stats(1, &deltas), StatsReply { applied: false });
        assert_eq!(rot.stats(0, &deltas), StatsReply { applied: true });
        let v = rot.read(0);
        assert_eq!(v.counts_of(0, "canary").requests, 3);
        assert_eq!(v.counts_of(1, "canary").requests, 0);
    }

    #[test]
    fn abort_sets_the_percent_to_zero_and_a_paused_plan_takes_no_lease() {
        let (mut rot, mut pool) = started();
        assert_eq!(
            rot.control(&mut pool, 1, Control::Pause, "look"),
            ControlReply::Controlled(PlanState::Paused)
        );
        assert_eq!(rot.lease(2, "a", 0, 1000), LeaseReply::Idle);
        assert_eq!(
            rot.control(&mut pool, 3, Control::Abort, "bad"),
            ControlReply::Controlled(PlanState::Aborted)
        );
        assert_eq!(pool.percent, 0);
        assert_eq!(
            rot.control(&mut pool, 4, Control::Resume, ""),
            ControlReply::BadState(PlanState::Aborted)
        );
    }
}
