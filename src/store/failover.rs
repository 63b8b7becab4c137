//! Degraded mode: a [`KeyStore`] that serves from Redis while it answers and from an in-process
//! [`MemoryStore`] when it does not, so no client request ever fails because of Redis.
//!
//! - Healthy: every call goes to Redis (bounded by the store timeout). A call that fails with an
//!   outage error (`StoreError::is_outage`) is answered by memory instead.
//! - After `degraded_after_failures` consecutive outage errors the replica is *degraded*: every
//!   call goes to memory, with no Redis wait at all; `degraded()` is true (`/readyz` says so,
//!   `keygate_store_degraded` is 1). The errors must also span `degraded_after` with no answer
//!   from Redis in between, or else a `PING` sent when the count is reached must fail too: a
//!   burst of timeouts (a replica starved of CPU, one slow Redis moment) does not switch while
//!   Redis answers, and a dead or hung Redis is still detected within a timeout or two.
//! - Memory is seeded from the last snapshot the replica saw of each pool (kept from any
//!   `snapshot` call and refreshed in the background while healthy: every 2 s the pool's change
//!   counter is read, and a new paged snapshot taken only when it moved, or when the kept one is
//!   older than `snapshot_max_age`), so the cooldowns and disables it knew stay in force.
//!   Each key's budget is divided by the replicas alive when Redis last answered (README
//!   "Budgets"), so N replicas standing in at once spend at most the whole budget together.
//!   Every [`Op`] memory answered that taught it something goes into a journal, in owned form
//!   (`writeback.rs`).
//! - Rotation ops ([`Op::is_rotation`]) are Redis's alone: refused with an error while degraded,
//!   never answered by memory nor journaled, and left out of the outage count.
//! - The Redis store tells this layer at once of every pool it re-creates (`on_recreated`): the
//!   replica's last view of it is written back, and no snapshot of it is kept until then.
//! - A background task probes Redis every `probe_interval_ms` while degraded (`PING`, then the
//!   `sync` script of every pool, which also re-creates pools Redis lost). When both answer it
//!   replays the journal, writes back its view of any pool Redis lost, takes fresh snapshots and
//!   switches back. While healthy it also replays entries journaled by single failed calls.
//!
//! The task holds only a weak reference and stops on [`FailoverStore::shutdown`] or when the store
//! is dropped.

mod outage;
mod recovery;
mod writeback;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::memory::MemoryStore;
use super::redis::RedisStore;
use super::{
    KeyStore, Op, PoolSnapshot, PoolSpec, Receipt, SelectRequest, Selection, StoreError,
    SyncReceipt,
};
use crate::config::StoreConfig;
use crate::metrics::Metrics;
use recovery::background;
use writeback::OwnedOp;

/// The most journal entries kept; older ones are dropped first (a long outage under heavy
/// failure traffic must not grow memory without bound).
const JOURNAL_LIMIT: usize = 10_000;

/// When the failover layer switches and how often it looks at Redis.
#[derive(Clone, Debug)]
pub struct FailoverOptions {
    pub degraded_after_failures: u32,
    /// How long the failures must last with no answer from Redis before they switch on their
    /// own (sooner only if a confirming `PING` fails). Zero: the count alone switches.
    pub degraded_after: Duration,
    pub probe_interval: Duration,
    /// How often a healthy replica checks whether its last-known snapshots are current.
    pub snapshot_interval: Duration,
    /// A kept snapshot older than this is taken again even if its pool's change counter did not
    /// move (success and error counters do not move it).
    pub snapshot_max_age: Duration,
}

impl FailoverOptions {
    pub fn from_config(store: &StoreConfig) -> FailoverOptions {
        FailoverOptions {
            degraded_after_failures: store.degraded_after_failures.max(1),
            degraded_after: Duration::from_millis(store.degraded_after_ms),
            probe_interval: Duration::from_millis(store.probe_interval_ms.max(1)),
            snapshot_interval: Duration::from_secs(2),
            snapshot_max_age: Duration::from_secs(60),
        }
    }
}

/// Redis with an in-process fallback; see the module docs.
pub struct FailoverStore {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

struct Shared {
    redis: Arc<RedisStore>,
    memory: MemoryStore,
    opts: FailoverOptions,
    metrics: Option<Arc<Metrics>>,
    degraded: AtomicBool,
    /// Consecutive outage errors; any answer from Redis resets it.
    failures: AtomicU32,
    /// When the current run of failures began: ms since `epoch` plus one; 0: no run.
    failing_since: AtomicU64,
    /// This run of failures already asked for its confirming `PING`.
    pinged: AtomicBool,
    /// The background task should send the confirming `PING` (off the request path, so no
    /// caller waits longer than the store timeout).
    confirm_wanted: AtomicBool,
    epoch: Instant,
    degraded_since: Mutex<Option<Instant>>,
    specs: RwLock<BTreeMap<String, Arc<PoolSpec>>>,
    /// The latest snapshot Redis gave of each pool.
    last_seen: Mutex<HashMap<String, PoolSnapshot>>,
    /// The change counter of each pool's kept snapshot, and when it was taken.
    kept_version: Mutex<HashMap<String, (u64, Instant)>>,
    /// Pools whose memory copy is older than `last_seen`: seeded again before memory answers.
    stale: Mutex<HashSet<String>>,
    /// What memory learned while Redis was away, in order: each pool with an op to replay.
    journal: Mutex<VecDeque<(String, OwnedOp)>>,
    /// Entries dropped because the journal was full (logged every thousand).
    journal_dropped: AtomicU64,
    /// Pools the Redis store re-created (it tells [`Shared::recreated`] at once) whose last known
    /// state waits to be written back.
    recreated: Arc<Mutex<HashSet<String>>>,
    /// Wakes the background task early: a pool was re-created and waits for its write-back.
    wake: Arc<Notify>,
    /// The replicas alive when Redis last answered (`kg:replicas`, at least 1): memory standing
    /// in for Redis spends only this replica's share of each key's budget.
    replicas: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FailoverStore {
    /// Wraps `redis`; starts the background task on the current Tokio runtime.
    pub fn new(
        redis: Arc<RedisStore>,
        opts: FailoverOptions,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<FailoverStore, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::InvalidArgument("the failover store needs a Tokio runtime".into())
        })?;
        let shared = Arc::new(Shared {
            redis,
            memory: MemoryStore::new(),
            opts,
            metrics,
            degraded: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            failing_since: AtomicU64::new(0),
            pinged: AtomicBool::new(false),
            confirm_wanted: AtomicBool::new(false),
            epoch: Instant::now(),
            degraded_since: Mutex::new(None),
            specs: RwLock::new(BTreeMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            kept_version: Mutex::new(HashMap::new()),
            stale: Mutex::new(HashSet::new()),
            journal: Mutex::new(VecDeque::new()),
            journal_dropped: AtomicU64::new(0),
            recreated: Arc::new(Mutex::new(HashSet::new())),
            wake: Arc::new(Notify::new()),
            replicas: AtomicU64::new(1),
        });
        let (recreated, wake) = (shared.recreated.clone(), shared.wake.clone());
        shared.redis.on_recreated(Box::new(move |pool| {
            lock(&recreated).insert(pool.to_string());
            wake.notify_one();
        }))?;
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        let wake = shared.wake.clone();
        tasks.spawn_on(
            background(Arc::downgrade(&shared), wake, cancel.clone()),
            &runtime,
        );
        tasks.close();
        Ok(FailoverStore {
            shared,
            cancel,
            tasks,
        })
    }

    /// Stops the background task and waits for it.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.wait().await;
    }

    /// The Redis store behind the fallback.
    pub fn redis(&self) -> &Arc<RedisStore> {
        &self.shared.redis
    }

    /// The change counter of the snapshot kept of `pool` (what degraded mode seeds memory
    /// from), as its first page saw it; `None` before one was kept.
    pub fn kept_version(&self, pool: &str) -> Option<u64> {
        lock(&self.shared.kept_version)
            .get(pool)
            .map(|(ver, _)| *ver)
    }

    /// Journal entries not yet written back to Redis.
    pub fn pending_writeback(&self) -> usize {
        lock(&self.shared.journal).len()
    }
}

impl Drop for FailoverStore {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Shared {
    fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    fn spec(&self, pool: &str) -> Option<Arc<PoolSpec>> {
        let specs = self.specs.read().unwrap_or_else(|e| e.into_inner());
        specs.get(pool).cloned()
    }

    fn all_specs(&self) -> Vec<Arc<PoolSpec>> {
        let specs = self.specs.read().unwrap_or_else(|e| e.into_inner());
        specs.values().cloned().collect()
    }

    /// Runs `call` on Redis unless degraded; `None` means "answer from memory".
    async fn on_redis<T>(
        &self,
        op: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Option<Result<T, StoreError>> {
        if self.is_degraded() {
            return None;
        }
        match call.await {
            Err(e) if e.is_outage() => {
                self.failed(op, &e);
                None
            }
            r => {
                if self.failures.swap(0, Ordering::AcqRel) != 0 {
                    self.failing_since.store(0, Ordering::Release);
                    self.pinged.store(false, Ordering::Release);
                }
                Some(r)
            }
        }
    }

    /// Seeds memory from the last Redis snapshot of `pool` if memory is older than it.
    fn seed_if_stale(&self, pool: &str) {
        if !lock(&self.stale).remove(pool) {
            return;
        }
        // Seeded from the kept snapshot in place, under its lock: a copy of a 10,000-key
        // snapshot is megabytes of peak RSS, and a single failed call while healthy seeds too.
        let last_seen = lock(&self.last_seen);
        if let (Some(spec), Some(snapshot)) = (self.spec(pool), last_seen.get(pool)) {
            let replicas = self.replicas.load(Ordering::Acquire).max(1);
            self.memory.seed_share(&spec, snapshot, replicas);
        }
    }

    /// Memory, ready to answer for `pool`.
    fn memory_for(&self, pool: &str) -> &MemoryStore {
        self.seed_if_stale(pool);
        &self.memory
    }

    fn journal(&self, pool: &str, op: OwnedOp) {
        let mut j = lock(&self.journal);
        if j.len() >= JOURNAL_LIMIT {
            j.pop_front();
            let dropped = self.journal_dropped.fetch_add(1, Ordering::Relaxed);
            if dropped % 1000 == 0 {
                tracing::warn!(
                    dropped = dropped + 1,
                    limit = JOURNAL_LIMIT,
                    "write-back journal full; dropping its oldest entries"
                );
            }
        }
        j.push_back((pool.to_string(), op));
    }

    /// Keeps `snapshot` and the change counter `ver` its first page saw.
    /// Takes the snapshot by value: the background refresh hands over the one it read instead of
    /// keeping a copy (at 10,000 keys a copy is megabytes of peak RSS).
    fn store_snapshot(&self, pool: &str, snapshot: PoolSnapshot, ver: u64) {
        lock(&self.last_seen).insert(pool.to_string(), snapshot);
        lock(&self.kept_version).insert(pool.to_string(), (ver, Instant::now()));
        lock(&self.stale).insert(pool.to_string());
    }

    /// Whether a snapshot Redis returned for `pool` is worth keeping: not when memory knows more
    /// than it (entries not written back yet) or it shows a pool just re-created empty.
    fn keeps(&self, pool: &str) -> bool {
        !(self.is_degraded()
            || !lock(&self.journal).is_empty()
            || lock(&self.recreated).contains(pool))
    }

    /// Keeps a snapshot Redis returned, when [`Shared::keeps`] says so.
    fn remember(&self, pool: &str, snapshot: PoolSnapshot, ver: u64) {
        if self.keeps(pool) {
            self.store_snapshot(pool, snapshot, ver);
        }
    }
}

#[async_trait]
impl KeyStore for FailoverStore {
    async fn select(&self, pool: &str, req: &SelectRequest<'_>) -> Result<Selection, StoreError> {
        let s = &self.shared;
        if let Some(r) = s.on_redis("select", s.redis.select(pool, req)).await {
            return r;
        }
        s.memory_for(pool).select(pool, req).await
    }

    /// Redis answers unless it is away; then memory does, and the journal keeps what memory
    /// learned, to be replayed into Redis (`writeback.rs`).
    ///
    /// Rotation ops ([`Op::is_rotation`]) need the cluster-wide store: while Redis is away a plan
    /// waits (its driver cannot renew its lease, so nobody drives it), and operators get the
    /// outage as an error. They go to Redis as they are, so their outcome neither counts towards
    /// an outage nor ends one, and memory never answers or journals them.
    async fn apply(&self, pool: &str, op: Op<'_>) -> Result<Receipt, StoreError> {
        let s = &self.shared;
        if op.is_rotation() {
            if s.is_degraded() {
                return Err(StoreError::Unavailable(
                    "rotation needs Redis, which is unreachable".into(),
                ));
            }
            return s.redis.apply(pool, op).await;
        }
        if let Some(r) = s.on_redis(op.name(), s.redis.apply(pool, op.clone())).await {
            return r;
        }
        let receipt = s.memory_for(pool).apply(pool, op.clone()).await?;
        if let Some(learned) = OwnedOp::learned(&op, &receipt) {
            s.journal(pool, learned);
        }
        Ok(receipt)
    }

    async fn snapshot(&self, pool: &str, now_ms: Option<u64>) -> Result<PoolSnapshot, StoreError> {
        let s = &self.shared;
        let call = s.redis.snapshot_versioned(pool, now_ms);
        if let Some(r) = s.on_redis("snapshot", call).await {
            if let (Ok((snap, ver)), None) = (&r, now_ms) {
                // The caller gets the snapshot too: copy it only when it is kept.
                if s.keeps(pool) {
                    s.store_snapshot(pool, snap.clone(), *ver);
                }
            }
            return r.map(|(snap, _)| snap);
        }
        s.memory_for(pool).snapshot(pool, now_ms).await
    }

    /// Syncs memory always (so it can answer at once) and Redis unless degraded (a degraded
    /// replica syncs every pool into Redis when it comes back).
    async fn sync(&self, spec: &PoolSpec) -> Result<SyncReceipt, StoreError> {
        let s = &self.shared;
        s.specs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.name.clone(), Arc::new(spec.clone()));
        let in_memory = s.memory.sync(spec).await;
        if let Some(r) = s.on_redis("sync", s.redis.sync(spec)).await {
            return r;
        }
        in_memory
    }

    /// Ok while the replica can serve: Redis answered, or memory stands in for it.
    async fn ping(&self) -> Result<(), StoreError> {
        let s = &self.shared;
        match s.on_redis("ping", s.redis.ping_redis()).await {
            Some(r) => r,
            None => Ok(()),
        }
    }

    fn degraded(&self) -> bool {
        self.shared.is_degraded()
    }
}
