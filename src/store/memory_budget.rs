//! Budgets in the memory store: `try_budgeted`, `try_wait` and `budget_place` of
//! `lua/select.lua` and `lua/lib.lua`, `lua/settle.lua` and the budget part of
//! `lua/report_batch.lua`, step for step over
//! [`KeyBudget`](super::budget::KeyBudget) (README "Budgets").

use super::memory::{KeyRow, PoolState};
use super::{KeyHints, KeyId, LeaseEnd, PoolSpec, SelectRequest, Settlement};
use crate::pool::KeyState;

/// A key chosen under budgets: (id, group, probe, wait_ms, lease).
pub(crate) type Budgeted = (String, String, bool, u64, u64);

impl PoolState {
    /// The budget part of `sync.lua`: meta settings and every configured key's limits.
    pub(super) fn sync_budgets(&mut self, spec: &PoolSpec) {
        self.budgets.on = spec.has_budgets();
        self.budgets.max_wait_ms = spec.budget.max_wait_ms;
        self.budgets.lease_ms = spec.budget.lease_ms;
        self.budgets.max_request_tokens = spec.budget.max_request_tokens;
        self.budgets.learn = spec.budget.learn;
        for sk in spec.keys.iter() {
            if let Some(k) = self.keys.get_mut(sk.id.as_str()) {
                // Written only when they change: a write allocates the key's budget slot.
                if !spec.budget.learn && !k.budget.learned.is_empty() {
                    k.budget.learned = Default::default();
                }
                if k.budget.limits != sk.limits {
                    k.budget.limits = sk.limits;
                }
            }
        }
    }

    /// The hints and ended requests of `report_batch.lua`, after its successes.
    pub(super) fn batch_budgets(&mut self, hints: &[KeyHints], ended: &[LeaseEnd], now: u64) {
        let (mrt, learn) = (self.budgets.max_request_tokens, self.budgets.learn);
        for h in hints {
            let id = h.key.as_str();
            let Ok(mut k) = self.row(id) else { continue };
            let seen = now.saturating_sub(h.age_ms);
            k.budget.learn(&h.hints, seen, learn, mrt);
            self.budget_place(id, &mut k, now);
            self.put(id, k);
        }
        self.settle_ended(ended, now);
    }

    /// `budget_place` of lib.lua: benches a key without headroom, brings back a benched key
    /// that has it again; answers whether the key is benched by its budget.
    pub(super) fn budget_place(&mut self, id: &str, k: &mut KeyRow, now: u64) -> bool {
        let benched = k.status == KeyState::Cooling && (k.reason == "budget" || k.reason == "busy");
        if k.status != KeyState::Active && !benched {
            return false;
        }
        let h = k.budget.headroom(now);
        let target = match h.busy_until {
            Some(busy) => Some(("busy", h.at.max(busy))),
            None if h.at > now => Some(("budget", h.at)),
            None => None,
        };
        match target {
            Some((reason, deadline)) => {
                if !benched || k.reason != reason || k.cooldown_until_ms != deadline {
                    self.set_status(id, k, KeyState::Cooling, reason, Some(deadline));
                }
                true
            }
            None => {
                if benched {
                    self.set_status(id, k, KeyState::Active, "", None);
                }
                false
            }
        }
    }

    /// `budget_spend` of lib.lua on row `k`; answers the lease id (0: none).
    fn budget_spend(&mut self, k: &mut KeyRow, start: u64, tokens: u64) -> u64 {
        self.budgets.spent_crowded = false;
        let lease = if k.budget.limits.conc > 0 {
            self.budgets.lease_seq += 1;
            Some((self.budgets.lease_seq, start + self.budgets.lease_ms))
        } else {
            None
        };
        let mrt = self.budgets.max_request_tokens;
        k.budget.spend(start, tokens, mrt, lease);
        if lease.is_some() {
            let taken = k.budget.inflight.len() as u64;
            self.budgets.spent_crowded = 2 * taken >= k.budget.limits.conc;
        }
        lease.map_or(0, |(id, _)| id)
    }

    /// `try_budgeted` of select.lua: answers (id, probe, lease).
    pub(super) fn try_budgeted(
        &mut self,
        group: &str,
        req: &SelectRequest<'_>,
        now: u64,
    ) -> Option<(String, bool, u64)> {
        if !self.budgets.on {
            return self.try_group(group, req, now).map(|(id, p)| (id, p, 0));
        }
        let tokens = req.tokens.min(self.budgets.max_request_tokens);
        for _ in 0..8 {
            let (id, probe) = self.try_group(group, req, now)?;
            let mut k = self.row(&id).ok()?;
            if probe {
                let lease = self.budget_spend(&mut k, now, tokens);
                self.put(&id, k);
                return Some((id, probe, lease));
            }
            if !self.budget_place(&id, &mut k, now) {
                let lease = self.budget_spend(&mut k, now, tokens);
                self.budget_place(&id, &mut k, now);
                self.put(&id, k);
                return Some((id, probe, lease));
            }
            self.put(&id, k);
        }
        None
    }

    /// `try_wait` of select.lua: reserves the earliest future slot of a budget-benched key of
    /// `groups` due within max_wait_ms.
    pub(super) fn try_wait(
        &mut self,
        groups: &[&str],
        req: &SelectRequest<'_>,
        now: u64,
    ) -> Option<Budgeted> {
        let max_wait = self.budgets.max_wait_ms;
        if !self.budgets.on || max_wait == 0 {
            return None;
        }
        let tokens = req.tokens.min(self.budgets.max_request_tokens);
        let due: Vec<String> = (self.due.iter())
            .take_while(|(d, _)| *d <= now + max_wait)
            .take(8)
            .map(|(_, id)| id.clone())
            .collect();
        for id in due {
            let Ok(mut k) = self.row(&id) else { continue };
            let candidate = k.status == KeyState::Cooling
                && k.reason == "budget"
                && groups.contains(&k.group.as_str())
                && !req.exclude.iter().any(|e| e.as_str() == id);
            if !candidate {
                continue;
            }
            let h = k.budget.headroom(now);
            if h.busy_until.is_some() || h.at > now + max_wait {
                self.put(&id, k);
                continue;
            }
            let start = h.at.max(now);
            let lease = self.budget_spend(&mut k, start, tokens);
            self.budget_place(&id, &mut k, now);
            let group = k.group.clone();
            self.put(&id, k);
            return Some((id, group, false, start - now, lease));
        }
        None
    }

    /// `budget_end` of lib.lua for each ended request.
    fn settle_ended(&mut self, ended: &[LeaseEnd], now: u64) {
        let mrt = self.budgets.max_request_tokens;
        for e in ended {
            let id = e.key.as_str();
            let Ok(mut k) = self.row(id) else { continue };
            if e.lease != 0 {
                k.budget.inflight.remove(&e.lease);
            }
            k.budget.settle(e.tokens_delta, mrt, now);
            self.budget_place(id, &mut k, now);
            self.put(id, k);
        }
    }

    /// `settle.lua`.
    pub(super) fn settle(&mut self, s: &Settlement<'_>, now: u64) {
        self.settle_ended(s.ended, now);
        let until = now + self.budgets.lease_ms;
        for (key, lease) in s.renew {
            if let Some(exp) = (self.keys.get_mut(KeyId::as_str(key)))
                .and_then(|k| k.budget.inflight.get_mut(lease))
            {
                *exp = until;
            }
        }
    }
}
