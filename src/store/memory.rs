//! The in-process store: the semantics of `lua/*.lua`, step for step, behind a std `Mutex`
//! (every operation is a short critical section with no `.await` inside, which is what makes it
//! atomic like a script). Used as the embedded store of a single replica and as the fallback
//! while Redis is unreachable. `transitions.rs` holds the per-key state machine (one branch per
//! [`Op`]), `memory_sync.rs` what `sync.lua` does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rustc_hash::FxHashMap;

use super::budget::{KeyBudget, KeyLimits, Learned};
use super::tree::WeightClasses;
use super::{
    Chosen, KeyRecord, KeyStore, Op, PoolSnapshot, PoolSpec, Receipt, Route, SelectRequest,
    Selection, StateCounts, StoreError, StorePolicy, SyncReceipt, Unavailable,
};
use crate::pool::{KeyId, KeyState};
use crate::store::rotation::memory::{PoolAccess as RotationAccess, PoolRotation};

/// One key's row: the fields of `kg:{P}:key:<id>`.
#[derive(Clone, Debug)]
pub(crate) struct KeyRow {
    pub status: KeyState,
    pub reason: String,
    pub weight: u32,
    pub group: String,
    pub errors: u64,
    pub strikes: u64,
    pub cooldown_until_ms: u64,
    pub last_status: u16,
    pub last_used_ms: u64,
    pub successes: u64,
    pub failures: u64,
    pub window_start_ms: u64,
    pub open_ms: u64,
    pub cfg_weight: u32,
    pub cfg_group: String,
    /// When the last failure was reported (`failed_at_ms`; see `lua/report_batch.lua`).
    pub failed_at_ms: u64,
    /// The key's budget (README "Budgets"): limits, schedules and in-flight leases.
    pub budget: BudgetSlot,
}

/// A key's [`KeyBudget`], allocated only once something writes to it: a key without limits
/// (every key of a pool without budgets) reads as the empty budget and costs one pointer, not
/// 112 bytes in each of 10,000 rows (BENCHMARKS.md, "Resident memory"). Reading never
/// allocates; `DerefMut` does, so callers write only what changes.
#[derive(Clone, Default)]
pub(crate) struct BudgetSlot(Option<Box<KeyBudget>>);

/// What an unallocated [`BudgetSlot`] reads as: `KeyBudget::default()`.
static NO_BUDGET: KeyBudget = KeyBudget {
    limits: KeyLimits {
        rpm: 0,
        tpm: 0,
        conc: 0,
        rpd: 0,
        tpd: 0,
    },
    learned: Learned { rpm: 0, tpm: 0 },
    tat_r: 0,
    tat_rd: 0,
    tat_t: 0,
    tat_td: 0,
    inflight: BTreeMap::new(),
};

impl Deref for BudgetSlot {
    type Target = KeyBudget;

    fn deref(&self) -> &KeyBudget {
        self.0.as_deref().unwrap_or(&NO_BUDGET)
    }
}

impl DerefMut for BudgetSlot {
    fn deref_mut(&mut self) -> &mut KeyBudget {
        self.0.get_or_insert_with(Box::default)
    }
}

impl BudgetSlot {
    /// Whether a write allocated this key's budget.
    #[cfg(test)]
    pub(super) fn is_allocated(&self) -> bool {
        self.0.is_some()
    }
}

impl std::fmt::Debug for BudgetSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        KeyBudget::fmt(self, f)
    }
}

/// One pool: the meta hash plus the indexes of `lua/lib.lua`.
#[derive(Debug, Default)]
pub(crate) struct PoolState {
    pub policy: StorePolicy,
    pub canary_group: String,
    pub canary_percent: u8,
    pub canary_percent_cfg: Option<u8>,
    pub canary_fallback: bool,
    pub config_hash: String,
    /// The change counter (meta field `ver`): bumped where `lua/lib.lua` `bump` is.
    pub ver: u64,
    pub counts: [i64; 6],
    pub keys: BTreeMap<String, KeyRow>,
    /// group -> its selectable keys by weight class (`kg:{P}:cls:<g>:<c>`, `kg:{P}:clsn:<g>`).
    pub classes: BTreeMap<String, WeightClasses>,
    /// (deadline, id), ordered like a Redis sorted set: by score, then by member.
    pub due: BTreeSet<(u64, String)>,
    /// id -> its deadline in `due`, so removal needs no scan.
    pub due_at: HashMap<String, u64>,
    /// group -> (lease expiry, id) of its half-open keys.
    pub probes: BTreeMap<String, BTreeSet<(u64, String)>>,
    /// id -> its lease in `probes`.
    pub probe_at: HashMap<String, u64>,
    /// The budget settings of the meta hash (`budgets max_wait_ms lease_ms mrt lease_seq`).
    pub budgets: BudgetMeta,
    /// The rotation plan, lease, history and counts (`kg:{P}:rot*`; `store::rotation::memory`).
    pub rotation: PoolRotation,
}

/// The pool-wide budget fields of the meta hash.
#[derive(Debug, Default)]
pub(crate) struct BudgetMeta {
    pub on: bool,
    /// The pool learns limits (meta field `learn`).
    pub learn: bool,
    pub max_wait_ms: u64,
    pub lease_ms: u64,
    pub max_request_tokens: u64,
    pub lease_seq: u64,
    /// `spent_crowded` of lib.lua: the last spend left the key's slots at least half taken.
    pub spent_crowded: bool,
    /// `skipped` of select.lua: the keys the current request drew that regain headroom within
    /// `LAZY_MS`, (id, when), in the order drawn.
    pub skipped: Vec<(String, u64)>,
    /// How many keys the current request skipped.
    pub skips: usize,
    /// The current request's excluded keys and the skipped ones.
    pub exclude: Vec<KeyId>,
}

/// The embedded store.
#[derive(Default)]
pub struct MemoryStore {
    pools: Mutex<FxHashMap<String, PoolState>>,
}

impl RotationAccess for PoolState {
    fn canary_group(&self) -> &str {
        &self.canary_group
    }

    fn key_group(&self, id: &str) -> Option<&str> {
        self.keys.get(id).map(|k| k.group.as_str())
    }

    fn set_canary_percent(&mut self, percent: u8) {
        self.canary_percent = percent;
        self.ver += 1;
    }
}

fn distinct(ids: &[KeyId]) -> usize {
    ids.iter()
        .enumerate()
        .filter(|(i, id)| !ids[..*i].contains(id))
        .count()
}

fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Runs `f` on the pool under the lock (one atomic step).
    fn with_pool<T>(
        &self,
        pool: &str,
        f: impl FnOnce(&mut PoolState) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let p = pools
            .get_mut(pool)
            .ok_or_else(|| StoreError::UnknownPool(pool.to_string()))?;
        f(p)
    }

    /// Replaces a pool's key state (degraded mode seeds itself from a Redis snapshot); its
    /// rotation plan, which no snapshot holds, stays.
    pub fn seed(&self, spec: &PoolSpec, snapshot: &PoolSnapshot) {
        self.seed_share(spec, snapshot, 1);
    }

    /// [`MemoryStore::seed`] with every key's budget divided among `replicas` (the failover
    /// stand-in's share while Redis is away; README "Budgets").
    ///
    /// The old state is dropped before the new one is built (under the lock, so no call finds
    /// the pool missing): at 10,000 keys a pool's state is megabytes, and building the new one
    /// beside it held both at once.
    pub fn seed_share(&self, spec: &PoolSpec, snapshot: &PoolSnapshot, replicas: u64) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let rotation = (pools.remove(&spec.name))
            .map(|mut old| std::mem::take(&mut old.rotation))
            .unwrap_or_default();
        let mut state = PoolState::default();
        state.sync(spec);
        state.canary_percent = snapshot.canary_percent;
        for rec in &snapshot.keys {
            state.restore(rec);
        }
        state.share_budgets(replicas);
        state.rotation = rotation;
        pools.insert(spec.name.clone(), state);
    }

    /// The pool's change counter, as `RedisStore::pool_version` reads it from Redis.
    pub fn version(&self, pool: &str) -> Option<u64> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.get(pool).map(|p| p.ver)
    }

    /// Whether the pool exists here.
    pub fn has_pool(&self, pool: &str) -> bool {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.contains_key(pool)
    }
}

impl PoolState {
    /// `cls_move` of lib.lua: adds (`add`) or removes a selectable key of weight `w` to / from
    /// the group's classes.
    pub(super) fn cls_move(&mut self, group: &str, id: &str, w: u32, add: bool) {
        if w == 0 {
            return;
        }
        let set = self.classes.entry(group.to_string()).or_default();
        if add {
            set.insert(id, w);
        } else {
            set.remove(id, w);
        }
    }

    fn counts(&self) -> StateCounts {
        let c = self.counts.map(|n| n.max(0) as u64);
        StateCounts::from_array(c)
    }

    fn recover_due(&mut self, now: u64, limit: usize) {
        let due: Vec<String> = self
            .due
            .iter()
            .take_while(|(d, _)| *d <= now)
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect();
        for id in due {
            self.recover(&id);
        }
    }

    fn try_probe(&mut self, group: &str, now: u64, exclude: &[KeyId]) -> Option<String> {
        let lease = self.policy.probe_lease_ms;
        let set = self.probes.get_mut(group)?;
        let found = set
            .iter()
            .take_while(|(until, _)| *until <= now)
            .take(distinct(exclude) + 1)
            .find(|(_, id)| !exclude.iter().any(|e| e.as_str() == id))
            .cloned()?;
        set.remove(&found);
        set.insert((now + lease, found.1.clone()));
        self.probe_at.insert(found.1.clone(), now + lease);
        Some(found.1)
    }

    fn try_weighted(&mut self, group: &str, rand: u64, exclude: &[KeyId]) -> Option<String> {
        let mut ids: Vec<&KeyId> = exclude.iter().collect();
        ids.sort();
        ids.dedup(); // a set, as in select.lua
        let (mut weight, mut n) = (0i64, 0usize);
        for k in ids.iter().filter_map(|id| self.keys.get(id.as_str())) {
            if k.group == group && k.status == KeyState::Active && k.weight > 0 {
                weight += k.weight as i64;
                n += 1;
            }
        }
        let is_excluded = |id: &str| ids.iter().any(|e| e.as_str() == id);
        self.classes
            .get(group)?
            .choose(rand, weight, n, is_excluded)
            .map(str::to_string)
    }

    pub(super) fn try_group(
        &mut self,
        group: &str,
        rand: u64,
        exclude: &[KeyId],
        now: u64,
    ) -> Option<(String, bool)> {
        if let Some(id) = self.try_probe(group, now, exclude) {
            return Some((id, true));
        }
        self.try_weighted(group, rand, exclude)
            .map(|id| (id, false))
    }

    fn select(&mut self, req: &SelectRequest<'_>, now: u64) -> Selection {
        self.recover_due(now, 8);
        let to_canary = match req.route {
            Route::Canary => true,
            Route::Stable => false,
            Route::Bucket(b) => b < self.canary_percent,
        };
        let primary = if to_canary {
            self.canary_group.clone()
        } else {
            "stable".to_string()
        };
        self.budgets.spent_crowded = false;
        self.budgets.skipped.clear();
        self.budgets.skips = 0;
        self.budgets.exclude.clear();
        self.budgets.exclude.extend_from_slice(req.exclude);
        let mut found = self
            .try_budgeted(&primary, req, now)
            .map(|(id, p, lease)| (id, primary.clone(), p, 0, lease));
        let may_fall_back = primary != "stable" && self.canary_fallback;
        if found.is_none() && may_fall_back {
            found = self
                .try_budgeted("stable", req, now)
                .map(|(id, p, lease)| (id, "stable".to_string(), p, 0, lease));
        }
        if found.is_none() {
            let groups: &[&str] = if may_fall_back {
                &[primary.as_str(), "stable"]
            } else {
                &[primary.as_str()]
            };
            found = self.try_wait(groups, req, now);
        }
        if let Some((id, group, probe, wait_ms, lease)) = found {
            if let Some(key) = KeyId::new(&id) {
                return Selection::Key(Chosen {
                    key,
                    fallback: group != primary,
                    group,
                    probe,
                    wait_ms,
                    lease,
                    crowded: self.budgets.spent_crowded,
                });
            }
        }
        let first = self.due.iter().next();
        let mut earliest = first.map(|(d, _)| *d);
        let mut budget_bound = self.budgets.on
            && first
                .and_then(|(_, id)| self.keys.get(id))
                .is_some_and(|k| {
                    k.status == KeyState::Cooling && (k.reason == "budget" || k.reason == "busy")
                });
        for g in [primary.as_str(), "stable"] {
            if let Some((lease, _)) = self.probes.get(g).and_then(|s| s.iter().next()) {
                if earliest.is_none_or(|e| *lease < e) {
                    (earliest, budget_bound) = (Some(*lease), false);
                }
            }
        }
        Selection::None(Unavailable {
            retry_at_ms: earliest,
            now_ms: now,
            counts: self.counts(),
            budget_bound,
        })
    }

    pub(super) fn snapshot(&mut self, now: u64) -> PoolSnapshot {
        self.recover_due(now, usize::MAX);
        PoolSnapshot {
            now_ms: now,
            canary_group: self.canary_group.clone(),
            canary_percent: self.canary_percent,
            keys: self.keys.iter().map(|(id, k)| k.record(id, now)).collect(),
        }
    }
}

impl KeyRow {
    fn record(&self, id: &str, now: u64) -> KeyRecord {
        KeyRecord {
            id: id.to_string(),
            status: self.status,
            reason: self.reason.clone(),
            weight: self.weight,
            group: self.group.clone(),
            errors: self.errors,
            strikes: self.strikes,
            cooldown_until_ms: self.cooldown_until_ms,
            last_status: self.last_status,
            last_used_ms: self.last_used_ms,
            successes: self.successes,
            failures: self.failures,
            budget: self.budget.record(now).map(Box::new),
        }
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn select(&self, pool: &str, req: &SelectRequest<'_>) -> Result<Selection, StoreError> {
        let now = req.now_ms.unwrap_or_else(system_now_ms);
        self.with_pool(pool, |p| Ok(p.select(req, now)))
    }

    async fn apply(&self, pool: &str, op: Op<'_>) -> Result<Receipt, StoreError> {
        op.validate()?;
        let now = op.now_ms().unwrap_or_else(system_now_ms);
        self.with_pool(pool, |p| p.apply(&op, now))
    }

    async fn snapshot(&self, pool: &str, now_ms: Option<u64>) -> Result<PoolSnapshot, StoreError> {
        let now = now_ms.unwrap_or_else(system_now_ms);
        self.with_pool(pool, |p| Ok(p.snapshot(now)))
    }

    async fn sync(&self, spec: &PoolSpec) -> Result<SyncReceipt, StoreError> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        Ok(pools.entry(spec.name.clone()).or_default().sync(spec))
    }
}
