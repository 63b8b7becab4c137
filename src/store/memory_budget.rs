//! Budgets in the memory store: `try_budgeted`, `try_wait` and `budget_place` of
//! `lua/select.lua` and `lua/lib.lua`, `lua/settle.lua` and the budget part of
//! `lua/report_batch.lua`, step for step over
//! [`KeyBudget`](super::budget::KeyBudget) (README "Budgets").

use super::memory::{KeyRow, PoolState};
use super::{KeyHints, KeyId, LeaseEnd, PoolSpec, SelectRequest, Settlement};
use crate::pool::KeyState;

/// `LAZY_MS` of lib.lua: an active key whose rate schedules let it start again within this
/// many milliseconds stays active; selection skips it until then.
pub(crate) const LAZY_MS: u64 = 10;

/// `SKIPS` of select.lua: how many such keys one request skips before it benches them.
const SKIPS: usize = 16;

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

    /// `budget_place` of lib.lua: benches a key without headroom (an active one only when its
    /// rate schedules are more than [`LAZY_MS`] ahead), brings back a benched key that has it
    /// again; answers whether the key is benched by its budget, and when its rate schedules
    /// allow its next start.
    pub(super) fn budget_place(&mut self, id: &str, k: &mut KeyRow, now: u64) -> (bool, u64) {
        let benched = k.status == KeyState::Cooling && (k.reason == "budget" || k.reason == "busy");
        if k.status != KeyState::Active && !benched {
            return (false, 0);
        }
        let h = k.budget.headroom(now);
        let lazy = if benched { 0 } else { LAZY_MS };
        let target = match h.busy_until {
            Some(busy) => Some(("busy", h.at.max(busy))),
            None if h.at > now + lazy => Some(("budget", h.at)),
            None => None,
        };
        match target {
            Some((reason, deadline)) => {
                if !benched || k.reason != reason || k.cooldown_until_ms != deadline {
                    self.set_status(id, k, KeyState::Cooling, reason, Some(deadline));
                }
                (true, h.at)
            }
            None => {
                if benched {
                    self.set_status(id, k, KeyState::Active, "", None);
                }
                (false, h.at)
            }
        }
    }

    /// `budget_spend` of lib.lua on row `k` at `now` for a request drawn with `rand`; answers
    /// the lease id (0: none): `rand`, unless it is 0 or already a lease of the key, then the
    /// next `lease_seq` that is not. Leases expired by `now` do not count towards "crowded".
    fn budget_spend(
        &mut self,
        k: &mut KeyRow,
        start: u64,
        tokens: u64,
        rand: u64,
        now: u64,
    ) -> u64 {
        self.budgets.spent_crowded = false;
        k.budget.expire(now);
        let lease = if k.budget.limits.conc > 0 {
            let mut id = rand;
            while id == 0 || k.budget.inflight.contains_key(&id) {
                self.budgets.lease_seq += 1;
                id = self.budgets.lease_seq;
            }
            Some((id, start + self.budgets.lease_ms))
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

    /// `try_budgeted` of select.lua: answers (id, probe, lease). Keys drawn that regain
    /// headroom within [`LAZY_MS`] are skipped: they join `budgets.skipped` and
    /// `budgets.exclude`.
    pub(super) fn try_budgeted(
        &mut self,
        group: &str,
        req: &SelectRequest<'_>,
        now: u64,
    ) -> Option<(String, bool, u64)> {
        let mut exclude = std::mem::take(&mut self.budgets.exclude);
        let mut found = None;
        if !self.budgets.on {
            found = (self.try_group(group, req.rand, &exclude, now)).map(|(id, p)| (id, p, 0));
        } else {
            let tokens = req.tokens.min(self.budgets.max_request_tokens);
            let mut attempts = 0;
            while attempts < 8 {
                let Some((id, probe)) = self.try_group(group, req.rand, &exclude, now) else {
                    break;
                };
                let Ok(mut k) = self.row(&id) else { break };
                if probe {
                    let lease = self.budget_spend(&mut k, now, tokens, req.rand, now);
                    self.put(&id, k);
                    found = Some((id, probe, lease));
                    break;
                }
                let (benched, at) = self.budget_place(&id, &mut k, now);
                if !benched && at <= now {
                    let lease = self.budget_spend(&mut k, now, tokens, req.rand, now);
                    self.budget_place(&id, &mut k, now);
                    self.put(&id, k);
                    found = Some((id, probe, lease));
                    break;
                }
                self.put(&id, k);
                if !benched && self.budgets.skips < SKIPS {
                    if let Some(key) = KeyId::new(&id) {
                        exclude.push(key);
                    }
                    self.budgets.skipped.push((id, at));
                    self.budgets.skips += 1;
                    continue;
                }
                if benched {
                    attempts += 1;
                } else {
                    self.budgets.skipped.push((id, at));
                    self.bench_skipped();
                }
            }
        }
        self.budgets.exclude = exclude;
        found
    }

    /// `bench_skipped` of select.lua: benches every key in `budgets.skipped` until its
    /// headroom returns.
    fn bench_skipped(&mut self) {
        for (id, at) in std::mem::take(&mut self.budgets.skipped) {
            if let Ok(mut k) = self.row(&id) {
                self.set_status(&id, &mut k, KeyState::Cooling, "budget", Some(at));
                self.put(&id, k);
            }
        }
    }

    /// `try_wait` of select.lua: reserves the skipped key whose headroom comes first, else the
    /// earliest future slot of a budget-benched key of `groups` due within max_wait_ms; benches
    /// the skipped keys it cannot wait for.
    pub(super) fn try_wait(
        &mut self,
        groups: &[&str],
        req: &SelectRequest<'_>,
        now: u64,
    ) -> Option<Budgeted> {
        if !self.budgets.on {
            return None;
        }
        let max_wait = self.budgets.max_wait_ms;
        let tokens = req.tokens.min(self.budgets.max_request_tokens);
        let skipped = std::mem::take(&mut self.budgets.skipped);
        let best = skipped
            .iter()
            .fold(None::<&(String, u64)>, |best, s| match best {
                Some(b) if b.1 <= s.1 => Some(b),
                _ => Some(s),
            });
        if let Some((id, at)) = best.filter(|(_, at)| *at <= now + max_wait) {
            let (id, at) = (id.clone(), *at);
            let mut k = self.row(&id).ok()?;
            let lease = self.budget_spend(&mut k, at, tokens, req.rand, now);
            self.budget_place(&id, &mut k, now);
            let group = k.group.clone();
            self.put(&id, k);
            return Some((id, group, false, at - now, lease));
        }
        self.budgets.skipped = skipped;
        self.bench_skipped();
        if max_wait == 0 {
            return None;
        }
        let exclude = &self.budgets.exclude;
        let due: Vec<String> = (self.due.iter())
            .take_while(|(d, _)| *d <= now + max_wait)
            .take(8)
            .map(|(_, id)| id.clone())
            .collect();
        let excluded: Vec<bool> = (due.iter())
            .map(|id| exclude.iter().any(|e| e.as_str() == id))
            .collect();
        for (id, excluded) in due.into_iter().zip(excluded) {
            let Ok(mut k) = self.row(&id) else { continue };
            let candidate = k.status == KeyState::Cooling
                && k.reason == "budget"
                && groups.contains(&k.group.as_str())
                && !excluded;
            if !candidate {
                self.put(&id, k);
                continue;
            }
            let h = k.budget.headroom(now);
            if h.busy_until.is_some() || h.at > now + max_wait {
                self.put(&id, k);
                continue;
            }
            let start = h.at.max(now);
            let lease = self.budget_spend(&mut k, start, tokens, req.rand, now);
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
            // A lease expired by now stays expired, as in settle.lua.
            if let Some(exp) = (self.keys.get_mut(KeyId::as_str(key)))
                .and_then(|k| k.budget.inflight.get_mut(lease))
                .filter(|exp| **exp > now)
            {
                *exp = until;
            }
        }
    }
}
