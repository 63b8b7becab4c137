//! The memory store's per-key state machine: `lua/lib.lua`, `report.lua`, `report_batch.lua` and
//! the admin scripts, line for line, one [`Op`] branch each in [`PoolState::apply`] (keep them in
//! step; the model-based test compares them). The rotation ops' branches call
//! `store/rotation/memory.rs` (`lua/rotation_*.lua`); `memory_sync.rs` holds `sync.lua`.

use super::memory::{KeyRow, PoolState};
use super::rotation::memory::PoolRotation;
use super::{
    AdminState, BatchReceipt, KeySuccesses, Op, Receipt, Report, ReportReceipt, StoreError,
};
use crate::pool::{KeyState, Outcome};

/// The reason of a key benched by a 401/403 until keygate's own probe confirms it.
pub(crate) const AUTH_UNCONFIRMED: &str = "auth_unconfirmed";

/// Whether the key waits for the confirmation probe of a 401/403 (`benched` in report.lua).
fn benched(k: &KeyRow) -> bool {
    k.status == KeyState::Cooling && k.reason == AUTH_UNCONFIRMED
}

fn selectable(status: KeyState, weight: u32) -> bool {
    status == KeyState::Active && weight > 0
}

pub(super) fn idx(s: KeyState) -> usize {
    KeyState::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

fn unknown_key(id: &str) -> StoreError {
    StoreError::UnknownKey(id.to_string())
}

impl PoolState {
    /// One [`Op`], one branch: what its script in `lua/` does, in process, at `now`.
    pub(crate) fn apply(&mut self, op: &Op<'_>, now: u64) -> Result<Receipt, StoreError> {
        match op {
            Op::Report(r) => self.report(r, now).map(Receipt::Report),
            Op::Successes(b) => {
                let receipt = self.report_successes(b.keys, now);
                self.batch_budgets(b.hints, b.ended, now);
                Ok(Receipt::Successes(receipt))
            }
            Op::SetState { key, state } => self
                .set_admin_state(key.as_str(), *state)
                .map(Receipt::State),
            Op::SetWeight { key, weight } => self.set_weight(key.as_str(), *weight),
            Op::SetGroup { key, group } => self.set_group(key.as_str(), group),
            Op::SetCanary { percent } => {
                self.canary_percent = *percent;
                self.ver += 1;
                Ok(Receipt::Done)
            }
            Op::Reset { key } => self.reset_counters(key.as_str()),
            Op::Settle(s) => {
                self.settle(s, now);
                Ok(Receipt::Done)
            }
            Op::RotationStart(spec) => {
                Ok(self.rotating(|rot, pool| Receipt::RotationStart(rot.start(pool, now, spec))))
            }
            Op::RotationControl { action, reason } => Ok(self.rotating(|rot, pool| {
                Receipt::RotationControl(rot.control(pool, now, *action, reason))
            })),
            Op::RotationLease {
                replica,
                fence,
                lease_ms,
            } => {
                let lease = self.rotation.lease(now, replica, *fence, *lease_ms);
                Ok(Receipt::RotationLease(lease))
            }
            Op::RotationWrite(w) => {
                Ok(self.rotating(|rot, pool| Receipt::RotationWrite(rot.write(pool, now, w))))
            }
            Op::RotationStats { step, deltas } => {
                Ok(Receipt::RotationStats(self.rotation.stats(*step, deltas)))
            }
            Op::RotationRead => Ok(Receipt::RotationView(Box::new(self.rotation.read(now)))),
        }
    }

    /// Runs a rotation operation that also changes the pool (its canary percent): the plan is
    /// taken out of the pool for the call, so both can be borrowed.
    fn rotating(
        &mut self,
        f: impl FnOnce(&mut PoolRotation, &mut PoolState) -> Receipt,
    ) -> Receipt {
        let mut rot = std::mem::take(&mut self.rotation);
        let receipt = f(&mut rot, self);
        self.rotation = rot;
        receipt
    }

    pub(super) fn row(&self, id: &str) -> Result<KeyRow, StoreError> {
        self.keys.get(id).cloned().ok_or_else(|| unknown_key(id))
    }

    pub(super) fn put(&mut self, id: &str, row: KeyRow) {
        self.keys.insert(id.to_string(), row);
    }

    fn due_remove(&mut self, id: &str) {
        if let Some(d) = self.due_at.remove(id) {
            self.due.remove(&(d, id.to_string()));
        }
    }

    fn due_set(&mut self, id: &str, deadline: u64) {
        self.due_remove(id);
        self.due.insert((deadline, id.to_string()));
        self.due_at.insert(id.to_string(), deadline);
    }

    fn probe_remove(&mut self, group: &str, id: &str) {
        if let (Some(lease), Some(set)) = (self.probe_at.remove(id), self.probes.get_mut(group)) {
            set.remove(&(lease, id.to_string()));
        }
    }

    fn probe_set(&mut self, group: &str, id: &str, lease: u64) {
        self.probe_remove(group, id);
        self.probes
            .entry(group.to_string())
            .or_default()
            .insert((lease, id.to_string()));
        self.probe_at.insert(id.to_string(), lease);
    }

    /// `set_status` of lib.lua: class sets, probe sets, the due index and counters follow the status.
    pub(super) fn set_status(
        &mut self,
        id: &str,
        k: &mut KeyRow,
        status: KeyState,
        reason: &str,
        deadline: Option<u64>,
    ) {
        let old = k.status;
        let (was, now_in) = (selectable(old, k.weight), selectable(status, k.weight));
        if was && !now_in {
            self.cls_move(&k.group, id, k.weight, false);
        } else if now_in && !was {
            self.cls_move(&k.group, id, k.weight, true);
        }
        if old != status {
            self.counts[idx(old)] -= 1;
            self.counts[idx(status)] += 1;
            if old == KeyState::HalfOpen {
                self.probe_remove(&k.group, id);
            }
            if status == KeyState::HalfOpen {
                self.probe_set(&k.group.clone(), id, 0);
            }
        }
        match deadline {
            Some(d) => self.due_set(id, d),
            None => self.due_remove(id),
        }
        k.status = status;
        k.reason = reason.to_string();
        k.cooldown_until_ms = deadline.unwrap_or(0);
        self.ver += 1;
    }

    /// `recover_due` of lib.lua for one key.
    pub(crate) fn recover(&mut self, id: &str) {
        let Ok(mut k) = self.row(id) else {
            self.due_remove(id);
            return;
        };
        match (k.status, k.reason.as_str()) {
            (KeyState::Cooling, _) | (KeyState::Disabled, "quota") => {
                self.set_status(id, &mut k, KeyState::Active, "", None)
            }
            (KeyState::Open, _) => self.set_status(id, &mut k, KeyState::HalfOpen, "breaker", None),
            _ => self.due_remove(id),
        }
        self.put(id, k);
    }

    fn cool(&mut self, id: &str, k: &mut KeyRow, ms: u64, now: u64) {
        let mut deadline = now + ms.min(self.policy.cooldown_max_ms);
        if k.status == KeyState::Cooling && k.cooldown_until_ms > deadline {
            deadline = k.cooldown_until_ms;
        }
        self.set_status(id, k, KeyState::Cooling, "rate_limited", Some(deadline));
    }

    pub(crate) fn report(&mut self, r: &Report<'_>, now: u64) -> Result<ReportReceipt, StoreError> {
        let id = r.key.as_str();
        let mut k = self.row(id)?;
        let before = k.status;
        if r.outcome == Outcome::ClientError {
            if r.probe && k.status == KeyState::HalfOpen {
                self.probe_set(&k.group.clone(), id, 0);
            }
            return Ok(ReportReceipt {
                state: k.status,
                changed: false,
                cooldown_until_ms: k.cooldown_until_ms,
                now_ms: now,
            });
        }
        k.last_status = r.http_status;
        k.last_used_ms = now;
        let hint = r.cooldown_ms;
        if r.outcome == Outcome::Success {
            k.successes += 1;
            k.errors = 0;
            k.strikes = 0;
            if r.probe && (k.status == KeyState::HalfOpen || benched(&k)) {
                k.open_ms = 0;
                self.set_status(id, &mut k, KeyState::Active, "", None);
            }
            if let Some(h) = hint.filter(|h| *h > 0) {
                if matches!(k.status, KeyState::Active | KeyState::Cooling) {
                    self.cool(id, &mut k, h, now);
                }
            }
        } else {
            k.failures += 1;
            k.failed_at_ms = now;
            self.apply_failure(id, &mut k, r, now);
        }
        let receipt = ReportReceipt {
            state: k.status,
            changed: k.status != before,
            cooldown_until_ms: k.cooldown_until_ms,
            now_ms: now,
        };
        self.put(id, k);
        Ok(receipt)
    }

    /// `report_batch.lua`: counters only; the reset yields to a failure as new as the successes.
    pub(crate) fn report_successes(&mut self, batch: &[KeySuccesses], now: u64) -> BatchReceipt {
        let (mut applied, mut held) = (0, 0);
        for s in batch {
            let Some(k) = self.keys.get_mut(s.key.as_str()) else {
                continue;
            };
            if s.count == 0 {
                continue;
            }
            let seen = now.saturating_sub(s.age_ms);
            applied += 1;
            k.successes += s.count;
            k.last_used_ms = k.last_used_ms.max(seen);
            if k.failed_at_ms < seen {
                (k.errors, k.strikes, k.last_status) = (0, 0, s.http_status);
            } else {
                held += 1;
            }
        }
        BatchReceipt {
            applied,
            held,
            now_ms: now,
        }
    }

    fn apply_failure(&mut self, id: &str, k: &mut KeyRow, r: &Report<'_>, now: u64) {
        let admin_owned = k.status == KeyState::Draining
            || (k.status == KeyState::Disabled && k.reason != "quota");
        let p = self.policy.clone();
        if admin_owned {
            return;
        }
        match r.outcome {
            Outcome::RateLimited
                if matches!(k.status, KeyState::Active | KeyState::Cooling)
                    || (k.status == KeyState::HalfOpen && r.probe) =>
            {
                let ms = r.cooldown_ms.unwrap_or_else(|| {
                    let factor = 1u64
                        .checked_shl(k.strikes.min(63) as u32)
                        .unwrap_or(u64::MAX);
                    p.cooldown_default_ms.saturating_mul(factor)
                });
                k.strikes += 1;
                self.cool(id, k, ms, now);
            }
            Outcome::RateLimited => {}
            Outcome::QuotaExhausted => {
                let mut deadline = now + p.quota_cooldown_ms;
                if k.status == KeyState::Disabled && k.cooldown_until_ms > deadline {
                    deadline = k.cooldown_until_ms;
                }
                self.set_status(id, k, KeyState::Disabled, "quota", Some(deadline));
            }
            Outcome::Unauthorized => match r.cooldown_ms.filter(|h| *h > 0) {
                // May be the key's fault: benched until the probe answers or the deadline passes.
                Some(bench)
                    if matches!(
                        k.status,
                        KeyState::Active | KeyState::Cooling | KeyState::HalfOpen
                    ) =>
                {
                    let mut deadline = now + bench;
                    if k.status == KeyState::Cooling && k.cooldown_until_ms > deadline {
                        deadline = k.cooldown_until_ms;
                    }
                    self.set_status(id, k, KeyState::Cooling, AUTH_UNCONFIRMED, Some(deadline));
                }
                Some(_) => {}
                None if benched(k) || !r.probe => {
                    self.set_status(id, k, KeyState::Disabled, "unauthorized", None)
                }
                None => {}
            },
            _ if k.status == KeyState::Active => {
                if now.saturating_sub(k.window_start_ms) >= p.breaker_window_ms {
                    k.errors = 0;
                    k.window_start_ms = now;
                }
                k.errors += 1;
                if k.errors >= p.breaker_errors as u64 {
                    k.open_ms = p.breaker_open_ms;
                    self.set_status(
                        id,
                        k,
                        KeyState::Open,
                        "breaker",
                        Some(now + p.breaker_open_ms),
                    );
                }
            }
            _ if k.status == KeyState::HalfOpen && r.probe => {
                let cap = p.cooldown_max_ms.max(p.breaker_open_ms);
                let ms = k.open_ms.saturating_mul(2).max(p.breaker_open_ms).min(cap);
                k.open_ms = ms;
                self.set_status(id, k, KeyState::Open, "breaker", Some(now + ms));
            }
            _ => {}
        }
    }

    pub(crate) fn set_admin_state(
        &mut self,
        id: &str,
        state: AdminState,
    ) -> Result<KeyState, StoreError> {
        let mut k = self.row(id)?;
        match state {
            AdminState::Enable => {
                k.errors = 0;
                k.strikes = 0;
                k.open_ms = 0;
                self.set_status(id, &mut k, KeyState::Active, "", None);
            }
            AdminState::Disable => self.set_status(id, &mut k, KeyState::Disabled, "admin", None),
            AdminState::Drain => self.set_status(id, &mut k, KeyState::Draining, "admin", None),
        }
        let s = k.status;
        self.put(id, k);
        Ok(s)
    }

    pub(super) fn apply_weight(&mut self, id: &str, k: &mut KeyRow, w: u32) {
        if selectable(k.status, k.weight) {
            self.cls_move(&k.group, id, k.weight, false);
        }
        k.weight = w;
        if selectable(k.status, w) {
            self.cls_move(&k.group, id, w, true);
        }
        self.ver += 1;
    }

    pub(super) fn apply_group(&mut self, id: &str, k: &mut KeyRow, g: &str) {
        if g == k.group {
            return;
        }
        if selectable(k.status, k.weight) {
            self.cls_move(&k.group, id, k.weight, false);
            self.cls_move(g, id, k.weight, true);
        }
        if k.status == KeyState::HalfOpen {
            self.probe_remove(&k.group.clone(), id);
            self.probe_set(g, id, 0);
        }
        k.group = g.to_string();
        self.ver += 1;
    }

    fn set_weight(&mut self, id: &str, w: u32) -> Result<Receipt, StoreError> {
        let mut k = self.row(id)?;
        self.apply_weight(id, &mut k, w);
        self.put(id, k);
        Ok(Receipt::Done)
    }

    fn set_group(&mut self, id: &str, g: &str) -> Result<Receipt, StoreError> {
        let mut k = self.row(id)?;
        self.apply_group(id, &mut k, g);
        self.put(id, k);
        Ok(Receipt::Done)
    }

    fn reset_counters(&mut self, id: &str) -> Result<Receipt, StoreError> {
        let k = self.keys.get_mut(id).ok_or_else(|| unknown_key(id))?;
        (
            k.errors,
            k.strikes,
            k.successes,
            k.failures,
            k.window_start_ms,
        ) = (0, 0, 0, 0, 0);
        self.ver += 1;
        Ok(Receipt::Done)
    }
}
