//! The memory store's `sync.lua`: a pool created from config or brought up to date with live key
//! state kept, and a key put back to what a snapshot recorded (degraded mode seeding).

use super::memory::{KeyRow, PoolState};
use super::transitions::idx;
use super::{KeyRecord, PoolSpec, SyncReceipt};
use crate::pool::KeyState;

impl PoolState {
    fn create_key(&mut self, id: &str, w: u32, g: &str) {
        self.counts[idx(KeyState::Active)] += 1;
        self.cls_move(g, id, w, true);
        let row = KeyRow {
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
        };
        self.put(id, row);
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
        for sk in &spec.keys {
            let id = sk.id.as_str();
            let Ok(mut k) = self.row(id) else {
                self.create_key(id, sk.weight, &sk.group);
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
        let gone: Vec<String> = self
            .keys
            .keys()
            .filter(|id| !spec.keys.iter().any(|k| k.id.as_str() == id.as_str()))
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
            let (l, learned) = (&mut k.budget.limits, &mut k.budget.learned);
            for v in [&mut l.rpm, &mut l.tpm, &mut l.conc, &mut l.rpd, &mut l.tpd] {
                share(v);
            }
            share(&mut learned.rpm);
            share(&mut learned.tpm);
        }
    }
}
