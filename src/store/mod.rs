//! The shared key state behind one [`KeyStore`] trait: a command interpreter that selects keys
//! and applies [`Op`]s (`op.rs`), each one atomic step.
//!
//! - `op.rs`: every state-changing operation as one [`Op`] variant, answered by a [`Receipt`].
//! - `redis.rs`: the cluster-wide store; every transition is one Lua script from `lua/`.
//! - `memory.rs`: the same semantics in process (the embedded store of a single replica, and the
//!   fallback while Redis is unreachable). It mirrors the scripts step by step, weight classes
//!   and random stream included, so both stores give the same answer for the same inputs.
//!   `transitions.rs` applies each `Op` (one branch each), `memory_sync.rs` syncs a pool.
//! - `tree.rs`: weight classes and the rejection sampler that make selection cost the same
//!   handful of Redis calls at any pool size.
//! - `spec.rs`: what a pool looks like to the store, derived from config.
//! - `budget.rs`: per-key budgets (README "Budgets"), the arithmetic both stores share;
//!   `memory_budget.rs` applies it in the memory store as `lua/lib.lua` does in Redis.
//! - `instrumented.rs`: store call durations and errors in metrics, by operation name.
//! - `failover.rs`: degraded mode, Redis with the memory store standing in while Redis is
//!   unreachable, and the write-back of what memory learned when it returns.
//! - `connection.rs`, `sentinel.rs`, `cluster.rs`: how the Redis store reaches one server, a
//!   Sentinel-managed master, or a Cluster.
//! - `successes.rs`: plain successes summed per key and written in one script per pool;
//!   `leases.rs`: this replica's leases on budgeted keys, renewed in the background.
//! - `reload_bus.rs`: the Redis keys through which a reload asked of one replica reaches all.
//! - `rotation/`: the rotation plan's types and the replies of its operations (`Op::Rotation*`),
//!   and those operations in process for the memory store.

pub mod budget;
mod cluster;
mod connection;
pub mod failover;
pub mod instrumented;
pub mod leases;
pub mod memory;
mod memory_budget;
mod memory_sync;
mod op;
pub mod redis;
pub mod reload_bus;
pub mod rotation;
mod scripts;
pub use scripts::{function_of, sha_of};
mod sentinel;
pub mod spec;
pub mod successes;
mod transitions;
pub mod tree;

pub use connection::Endpoint;
pub use op::{Op, Receipt};

use std::future::Future;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use crate::pool::StateCounts;
use crate::pool::{KeyId, KeyState, Outcome};
use crate::store::rotation::{
    Control, ControlReply, LeaseReply, PlanSpec, PlanWrite, RotationView, StartReply, StatsReply,
    WriteReply,
};
pub use spec::{PoolSpec, StorePolicy};

/// How a request is routed between the stable and the canary group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Canary when `bucket < canary percent` (the percent lives in the store).
    Bucket(u8),
    /// `X-Gray-Group: treatment`.
    Canary,
    /// `X-Gray-Group: control`.
    Stable,
}

/// One selection: the pool, the route, the keys this request already tried, and the replica's
/// random draw (so the store's choice is deterministic given its inputs).
#[derive(Clone, Debug)]
pub struct SelectRequest<'a> {
    pub route: Route,
    pub exclude: &'a [KeyId],
    /// Uniform in `[0, 2^53)`; see [`random_draw`].
    pub rand: u64,
    /// A virtual clock for tests; `None` uses the store's clock (Redis `TIME`).
    pub now_ms: Option<u64>,
    /// The tokens this request reserves on a key with a token budget (capped at the pool's
    /// `max_request_tokens`); ignored in a pool without budgets.
    pub tokens: u64,
}

/// A uniform draw in `[0, 2^53)` for [`SelectRequest::rand`].
pub fn random_draw() -> u64 {
    rand::random::<u64>() >> 11
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    Key(Chosen),
    None(Unavailable),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    pub key: KeyId,
    pub group: String,
    /// The canary group had no selectable key and the request fell back to stable.
    pub fallback: bool,
    /// This attempt is the key's half-open probe; pass it back in [`Report::probe`].
    pub probe: bool,
    /// A reserved future slot: send not before this many ms from now (0: at once).
    pub wait_ms: u64,
    /// The in-flight lease to end with [`KeyStore::settle`] (0: the key limits no concurrency).
    pub lease: u64,
    /// Taking the lease left at least half the key's in-flight slots taken: its end is written
    /// at once, not with the next success batch (another request may be waiting for the slot).
    pub crowded: bool,
}

/// No key is selectable now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    /// The earliest moment (store clock, ms) any key recovers by itself; `None`: none will.
    pub retry_at_ms: Option<u64>,
    pub now_ms: u64,
    pub counts: StateCounts,
    /// The first key to recover is benched by its own budget (reason `budget` or `busy`), not
    /// by the upstream: the pool has no headroom within `max_wait_ms` (README "Budgets").
    pub budget_bound: bool,
}

/// The outcome of one upstream attempt, as the store needs it.
#[derive(Clone, Debug)]
pub struct Report<'a> {
    pub key: &'a KeyId,
    pub outcome: Outcome,
    /// Rate-limited: the upstream's Retry-After. Success: the reset time announced with
    /// `x-ratelimit-remaining-*: 0` (the key cools before its 429 happens).
    pub cooldown_ms: Option<u64>,
    /// The upstream HTTP status, 0 when there was no answer.
    pub http_status: u16,
    pub probe: bool,
    pub now_ms: Option<u64>,
}

/// What a report did to the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportReceipt {
    pub state: KeyState,
    /// The status changed because of this report.
    pub changed: bool,
    pub cooldown_until_ms: u64,
    /// The store's clock when the report was applied (to turn deadlines into durations).
    pub now_ms: u64,
}

/// One key's successes buffered by a replica, for [`Op::Successes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySuccesses {
    pub key: KeyId,
    /// How many successes (at least 1 to count).
    pub count: u64,
    /// The HTTP status of the newest of them.
    pub http_status: u16,
    /// How long before the call the newest of them happened (the replica's monotonic clock).
    /// The store dates it `now - age_ms` and resets the key's errors only if no failure is as
    /// new (see `lua/report_batch.lua`).
    pub age_ms: u64,
}

/// The newest `x-ratelimit-*` hints one key's answers carried, for [`SuccessBatch::hints`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyHints {
    pub key: KeyId,
    /// How long before the call the answer arrived (the replica's monotonic clock).
    pub age_ms: u64,
    pub hints: budget::ProviderHints,
}

/// Many keys' successes of one pool, applied in one atomic step, with what rides along on a
/// pool with budgets: the provider's hints (README "Budgets", "Learned from the provider") and
/// the requests that ended (their leases freed, their reservations settled).
#[derive(Clone, Debug)]
pub struct SuccessBatch<'a> {
    pub keys: &'a [KeySuccesses],
    pub hints: &'a [KeyHints],
    pub ended: &'a [LeaseEnd],
    pub now_ms: Option<u64>,
}

/// One request on a budgeted key that ended: its lease is freed, its token reservation
/// replaced by real usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseEnd {
    pub key: KeyId,
    /// 0: the request held no lease.
    pub lease: u64,
    /// Real tokens minus reserved tokens.
    pub tokens_delta: i64,
}

/// Ended requests and live leases of one pool, applied in one atomic step.
#[derive(Clone, Debug)]
pub struct Settlement<'a> {
    pub ended: &'a [LeaseEnd],
    /// (key, lease) of requests still in flight: their leases live another `lease_ms`.
    pub renew: &'a [(KeyId, u64)],
    pub now_ms: Option<u64>,
}

/// What a batch of successes did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchReceipt {
    /// Keys of the batch the pool holds (unknown ids are skipped).
    pub applied: u64,
    /// Keys whose error reset was withheld because a failure was as new as their successes.
    pub held: u64,
    pub now_ms: u64,
}

/// An operator's change of a key's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    Enable,
    Disable,
    Drain,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enable => "enable",
            AdminState::Disable => "disable",
            AdminState::Drain => "drain",
        }
    }
}

/// One key as the snapshot shows it: the fields of its Redis hash `kg:{P}:key:<id>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
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
    /// Its budget (README "Budgets"); absent for a key without limits. Boxed: a snapshot
    /// holds one record per key, and most keys have none (80 bytes a key otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Box<budget::BudgetRecord>>,
}

/// Every key of a pool, read at one moment of the store's clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolSnapshot {
    pub now_ms: u64,
    pub canary_group: String,
    pub canary_percent: u8,
    pub keys: Vec<KeyRecord>,
}

/// What `sync` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncReceipt {
    Unchanged,
    Synced {
        created: u64,
        updated: u64,
        removed: u64,
    },
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store call timed out")]
    Timeout,
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store script failed: {0}")]
    Script(String),
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl StoreError {
    /// Errors that say the store itself is unhealthy (as opposed to a bad argument).
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            StoreError::Timeout | StoreError::Unavailable(_) | StoreError::Script(_)
        )
    }
}

/// The cluster-wide key state: a command interpreter. Every method is one atomic step of the
/// store; every state change is an [`Op`] given to [`KeyStore::apply`] (the methods of
/// [`KeyStoreExt`] name them one by one).
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Chooses a key for one attempt, or says why none can be had.
    async fn select(&self, pool: &str, req: &SelectRequest<'_>) -> Result<Selection, StoreError>;
    /// Applies one state-changing operation; the receipt's variant matches the operation's.
    async fn apply(&self, pool: &str, op: Op<'_>) -> Result<Receipt, StoreError>;
    /// Every key's state, for metrics and the admin API (O(pool size): cache it).
    async fn snapshot(&self, pool: &str, now_ms: Option<u64>) -> Result<PoolSnapshot, StoreError>;
    /// Creates the pool from config or brings it up to date, keeping live key state.
    async fn sync(&self, spec: &PoolSpec) -> Result<SyncReceipt, StoreError>;
    /// One round trip to the backing service (readiness).
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether the store serves from a fallback because its backing service is unreachable.
    fn degraded(&self) -> bool {
        false
    }
}

/// Each [`Op`] as a method of any [`KeyStore`], with its receipt unpacked: written once here as
/// [`KeyStore::apply`] (no store implements these; none can override them).
pub trait KeyStoreExt: KeyStore {
    /// Applies the outcome of one attempt to its key ([`Op::Report`]).
    fn report(
        &self,
        pool: &str,
        report: &Report<'_>,
    ) -> impl Future<Output = Result<ReportReceipt, StoreError>> + Send;
    /// Applies many keys' plain successes at once ([`Op::Successes`]).
    fn report_successes(
        &self,
        pool: &str,
        batch: &SuccessBatch<'_>,
    ) -> impl Future<Output = Result<BatchReceipt, StoreError>> + Send;
    fn set_state(
        &self,
        pool: &str,
        key: &KeyId,
        state: AdminState,
    ) -> impl Future<Output = Result<KeyState, StoreError>> + Send;
    fn set_weight(
        &self,
        pool: &str,
        key: &KeyId,
        weight: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn set_group(
        &self,
        pool: &str,
        key: &KeyId,
        group: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn set_canary(
        &self,
        pool: &str,
        percent: u8,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn reset_counters(
        &self,
        pool: &str,
        key: &KeyId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Ends requests on budgeted keys and renews live leases ([`Op::Settle`]).
    fn settle(
        &self,
        pool: &str,
        s: &Settlement<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Starts a rotation plan ([`Op::RotationStart`]).
    fn rotation_start(
        &self,
        pool: &str,
        spec: &PlanSpec,
    ) -> impl Future<Output = Result<StartReply, StoreError>> + Send;
    /// Pauses, resumes or aborts the rotation plan ([`Op::RotationControl`]).
    fn rotation_control(
        &self,
        pool: &str,
        action: Control,
        reason: &str,
    ) -> impl Future<Output = Result<ControlReply, StoreError>> + Send;
    /// Takes or renews the lease that drives the plan ([`Op::RotationLease`]).
    fn rotation_lease(
        &self,
        pool: &str,
        replica: &str,
        fence: u64,
        lease_ms: u64,
    ) -> impl Future<Output = Result<LeaseReply, StoreError>> + Send;
    /// The lease holder's fenced change of the plan ([`Op::RotationWrite`]).
    fn rotation_write(
        &self,
        pool: &str,
        w: &PlanWrite,
    ) -> impl Future<Output = Result<WriteReply, StoreError>> + Send;
    /// Adds this replica's counts of the current step ([`Op::RotationStats`]).
    fn rotation_stats(
        &self,
        pool: &str,
        step: usize,
        deltas: &[(String, u64)],
    ) -> impl Future<Output = Result<StatsReply, StoreError>> + Send;
    /// The plan, its lease, history and counts ([`Op::RotationRead`]).
    fn rotation_read(
        &self,
        pool: &str,
    ) -> impl Future<Output = Result<RotationView, StoreError>> + Send;
}

impl<S: KeyStore + ?Sized> KeyStoreExt for S {
    async fn report(&self, pool: &str, report: &Report<'_>) -> Result<ReportReceipt, StoreError> {
        let op = Op::Report(report.clone());
        self.apply(pool, op).await?.into_report()
    }

    async fn report_successes(
        &self,
        pool: &str,
        batch: &SuccessBatch<'_>,
    ) -> Result<BatchReceipt, StoreError> {
        let op = Op::Successes(batch.clone());
        self.apply(pool, op).await?.into_successes()
    }

    async fn set_state(
        &self,
        pool: &str,
        key: &KeyId,
        state: AdminState,
    ) -> Result<KeyState, StoreError> {
        let op = Op::SetState { key, state };
        self.apply(pool, op).await?.into_state()
    }

    async fn set_weight(&self, pool: &str, key: &KeyId, weight: u32) -> Result<(), StoreError> {
        let op = Op::SetWeight { key, weight };
        self.apply(pool, op).await?.into_done()
    }

    async fn set_group(&self, pool: &str, key: &KeyId, group: &str) -> Result<(), StoreError> {
        let op = Op::SetGroup { key, group };
        self.apply(pool, op).await?.into_done()
    }

    async fn set_canary(&self, pool: &str, percent: u8) -> Result<(), StoreError> {
        let op = Op::SetCanary { percent };
        self.apply(pool, op).await?.into_done()
    }

    async fn reset_counters(&self, pool: &str, key: &KeyId) -> Result<(), StoreError> {
        let op = Op::Reset { key };
        self.apply(pool, op).await?.into_done()
    }

    async fn settle(&self, pool: &str, s: &Settlement<'_>) -> Result<(), StoreError> {
        let op = Op::Settle(s.clone());
        self.apply(pool, op).await?.into_done()
    }

    async fn rotation_start(&self, pool: &str, spec: &PlanSpec) -> Result<StartReply, StoreError> {
        let op = Op::RotationStart(spec);
        self.apply(pool, op).await?.into_start()
    }

    async fn rotation_control(
        &self,
        pool: &str,
        action: Control,
        reason: &str,
    ) -> Result<ControlReply, StoreError> {
        let op = Op::RotationControl { action, reason };
        self.apply(pool, op).await?.into_control()
    }

    async fn rotation_lease(
        &self,
        pool: &str,
        replica: &str,
        fence: u64,
        lease_ms: u64,
    ) -> Result<LeaseReply, StoreError> {
        let op = Op::RotationLease {
            replica,
            fence,
            lease_ms,
        };
        self.apply(pool, op).await?.into_lease()
    }

    async fn rotation_write(&self, pool: &str, w: &PlanWrite) -> Result<WriteReply, StoreError> {
        let op = Op::RotationWrite(w);
        self.apply(pool, op).await?.into_write()
    }

    async fn rotation_stats(
        &self,
        pool: &str,
        step: usize,
        deltas: &[(String, u64)],
    ) -> Result<StatsReply, StoreError> {
        let op = Op::RotationStats { step, deltas };
        self.apply(pool, op).await?.into_stats()
    }

    async fn rotation_read(&self, pool: &str) -> Result<RotationView, StoreError> {
        let view = self.apply(pool, Op::RotationRead).await?.into_view()?;
        Ok(*view)
    }
}
