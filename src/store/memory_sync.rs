//! The memory store's `sync.lua`: a pool created from config or brought up to date with live key
//! state kept, and a key put back to what a snapshot recorded (degraded mode seeding).

use std::collections::HashSet;

use super::memory::{KeyRow, PoolState};
use super::transitions::idx;
use super::{KeyRecord, PoolSpec, SyncReceipt};
use crate::pool::KeyState;

impl PoolState {
    /// A new key's row, counted and in its weight class; the caller puts it in `keys`.
    fn create_key(&mut self, id: &str, w: u32, g: &str) -> KeyRow {
        self.counts[idx(KeyState::Active)] += 1;
        self.cls_move(g, id, w, true);
        KeyRow {
            status: KeyState::Active,
            reason: String::new(),
            weight: w,
            group: g.to_string(),
            errors: 0,
            strikes: 0,
            cooldown_until_ms: 0,
            last_status: 0,
            last_used_ms: 0,
            successes: 0,
            failures: 0,
            window_start_ms: 0,
            open_ms: 0,
            cfg_weight: w,
            cfg_group: g.to_string(),
            failed_at_ms: 0,
            budget: Default::default(),
        }
    }

    /// `sync.lua`.
    pub(crate) fn sync(&mut self, spec: &PoolSpec) -> SyncReceipt {
        let hash = spec.fingerprint();
        if self.config_hash == hash {
            return SyncReceipt::Unchanged;
        }
        let (mut created, mut updated, mut removed) = (0, 0, 0);
        self.policy = spec.policy.clone();
        self.canary_group = spec.canary_group.clone();
        self.canary_fallback = spec.canary_fallback;
        if self.canary_percent_cfg != Some(spec.canary_percent) {
            self.canary_percent = spec.canary_percent;
            self.canary_percent_cfg = Some(spec.canary_percent);
        }
        let wanted: HashSet<&str> = spec.keys.iter().map(|k| k.id.as_str()).collect();
        // New rows go into `keys` together after the loop: a B-tree built in one go (`collect`)
        // has full nodes, where inserting rows one by one in id order leaves them about
        // half-full (megabytes at 10,000 keys). Only with distinct ids: a repeated id must find
        // its first occurrence's row, as it does when each row is put at once.
        let mut fresh: Vec<(String, KeyRow)> = Vec::new();
        let batch = wanted.len() == spec.keys.len();
        for sk in spec.keys.iter() {
            let id = sk.id.as_str();
            let Ok(mut k) = self.row(id) else {
                let row = self.create_key(id, sk.weight, &sk.group);
                if batch {
                    fresh.push((id.to_string(), row));
                } else {
                    self.put(id, row);
                }
                created += 1;
                continue;
            };
            let mut touched = false;
            if k.cfg_weight != sk.weight {
                self.apply_weight(id, &mut k, sk.weight);
                k.cfg_weight = sk.weight;
                touched = true;
            }
            if k.cfg_group != sk.group {
                self.apply_group(id, &mut k, &sk.group);
                k.cfg_group = sk.group.clone();
                touched = true;
            }
            if k.status == KeyState::Draining && k.reason == "removed" {
                self.set_status(id, &mut k, KeyState::Active, "", None);
                touched = true;
            }
            updated += touched as u64;
            self.put(id, k);
        }
        if self.keys.is_empty() {
            self.keys = fresh.into_iter().collect();
        } else {
            self.keys.extend(fresh);
        }
        let gone: Vec<String> = (self.keys.keys())
            .filter(|id| !wanted.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            let Ok(mut k) = self.row(&id) else { continue };
            if k.status != KeyState::Draining {
                self.set_status(&id, &mut k, KeyState::Draining, "removed", None);
                removed += 1;
            }
            self.put(&id, k);
        }
        self.sync_budgets(spec);
        self.config_hash = hash;
        self.ver += 1;
        SyncReceipt::Synced {
            created,
            updated,
            removed,
        }
    }

    /// Puts a key back to what a snapshot recorded (degraded mode seeding).
    pub(crate) fn restore(&mut self, rec: &KeyRecord) {
        let Ok(mut k) = self.row(&rec.id) else { return };
        self.apply_weight(&rec.id, &mut k, rec.weight);
        self.apply_group(&rec.id, &mut k, &rec.group);
        let deadline = (rec.cooldown_until_ms > 0).then_some(rec.cooldown_until_ms);
        self.set_status(&rec.id, &mut k, rec.status, &rec.reason, deadline);
        (k.errors, k.strikes, k.successes, k.failures) =
            (rec.errors, rec.strikes, rec.successes, rec.failures);
        (k.last_status, k.last_used_ms) = (rec.last_status, rec.last_used_ms);
        if let Some(b) = &rec.budget {
            k.budget.learned = b.learned;
        }
        self.put(&rec.id, k);
    }

    /// Divides every key's limits (configured and learned) by `replicas`, rounding down but
    /// keeping a set limit at least 1: what one of that many replicas may spend on its own.
    pub(crate) fn share_budgets(&mut self, replicas: u64) {
        if replicas <= 1 {
            return;
        }
        let share = |v: &mut u64| {
            if *v > 0 {
                *v = (*v / replicas).max(1);
            }
        };
        for k in self.keys.values_mut() {
            if k.budget.limits.is_empty() && k.budget.learned.is_empty() {
                continue; // nothing to divide, and a write would allocate its budget slot
            }
            let budget = &mut *k.budget;
            let (l, learned) = (&mut budget.limits, &mut budget.learned);
            for v in [&mut l.rpm, &mut l.tpm, &mut l.conc, &mut l.rpd, &mut l.tpd] {
                share(v);
            }
            share(&mut learned.rpm);
            share(&mut learned.tpm);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::PoolState;
    use crate::pool::KeyId;
    use crate::store::budget::KeyLimits;
    use crate::store::spec::SpecKey;
    use crate::store::PoolSpec;

    fn spec(limited: &[bool]) -> PoolSpec {
        let keys = (limited.iter().enumerate())
            .map(|(i, on)| SpecKey {
                id: KeyId::new(&format!("k{i}")).expect("valid id"),
                weight: 1,
                group: "stable".into(),
                limits: KeyLimits {
                    rpm: if *on { 60 } else { 0 },
                    ..KeyLimits::default()
                },
            })
            .collect::<Arc<[SpecKey]>>();
        PoolSpec {
            name: "p".into(),
            policy: Default::default(),
            canary_group: "canary".into(),
            canary_percent: 0,
            canary_fallback: true,
            keys,
            budget: Default::default(),
        }
    }

    /// Which rows hold an allocated budget slot, by id.
    fn allocated(state: &PoolState) -> Vec<(&str, bool)> {
        (state.keys.iter())
            .map(|(id, k)| (id.as_str(), k.budget.is_allocated()))
            .collect()
    }

    #[test]
    fn only_keys_with_limits_allocate_a_budget_and_the_rest_read_as_none() {
        let mut state = PoolState::default();
        state.sync(&spec(&[false, true, false]));
        assert_eq!(
            allocated(&state),
            [("k0", false), ("k1", true), ("k2", false)]
        );
        assert_eq!(state.keys["k1"].budget.limits.rpm, 60);
        assert!(state.keys["k0"].budget.limits.is_empty());
        state.share_budgets(3);
        assert_eq!(
            allocated(&state),
            [("k0", false), ("k1", true), ("k2", false)]
        );
        assert_eq!(state.keys["k1"].budget.limits.rpm, 20);
        let snap = state.snapshot(1_000);
        let budgets: Vec<bool> = snap.keys.iter().map(|k| k.budget.is_some()).collect();
        assert_eq!(budgets, [false, true, false]);
    }

    #[test]
    fn a_sync_that_takes_a_key_s_limits_away_keeps_the_budget_empty() {
        let mut state = PoolState::default();
        state.sync(&spec(&[true, false]));
        let mut next = spec(&[false, false]);
        next.canary_percent = 1; // another fingerprint
        state.sync(&next);
        assert!(state.keys["k0"].budget.limits.is_empty());
        assert!(!state.keys["k1"].budget.is_allocated());
        assert_eq!(state.keys.len(), 2);
    }
}
