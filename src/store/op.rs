//! The store as a command interpreter: every state-changing operation (and the read of a
//! rotation plan) is one [`Op`] variant, applied by [`KeyStore::apply`](super::KeyStore::apply)
//! in one atomic step and answered by one [`Receipt`] variant.
//!
//! Each variant is one Lua script in Redis (`Scripts::for_op`, its ARGV in `redis/ops.rs`, its
//! reply decoded in `redis/reply.rs`) and one branch of the memory store's `PoolState::apply`
//! (`transitions.rs`). The wrappers (`instrumented.rs`, `failover.rs`) handle every `Op` alike,
//! but for the failover layer's one rule: a rotation op ([`Op::is_rotation`]) is Redis's alone.
//! The failover journal keeps ops in owned form (`failover/writeback.rs`).
//! [`KeyStoreExt`](super::KeyStoreExt) gives each operation a method with its typed receipt.

use super::rotation::{
    Control, ControlReply, LeaseReply, PlanSpec, PlanWrite, RotationView, StartReply, StatsReply,
    WriteReply,
};
use super::{
    AdminState, BatchReceipt, Report, ReportReceipt, Settlement, StoreError, SuccessBatch,
};
use crate::pool::{KeyId, KeyState};

/// One state-changing operation on one pool. Borrows what it names, so building one costs no
/// allocation (the success batch and the report are on the request path).
#[derive(Clone, Debug)]
pub enum Op<'a> {
    /// The outcome of one attempt (`lua/report.lua`).
    Report(Report<'a>),
    /// Many keys' plain successes (`lua/report_batch.lua`): counters only, never a status
    /// change, never undoing a newer failure.
    Successes(SuccessBatch<'a>),
    /// An operator's enable / disable / drain (`lua/set_state.lua`).
    SetState { key: &'a KeyId, state: AdminState },
    /// An operator's weight, 0..=1000 (`lua/set_weight.lua`).
    SetWeight { key: &'a KeyId, weight: u32 },
    /// An operator's move of a key to another traffic group (`lua/set_group.lua`).
    SetGroup { key: &'a KeyId, group: &'a str },
    /// The share of traffic routed to the canary group, 0..=100 (`lua/set_canary.lua`).
    SetCanary { percent: u8 },
    /// An operator's reset of a key's counters (`lua/reset.lua`).
    Reset { key: &'a KeyId },
    /// Ends requests on budgeted keys and renews live leases (`lua/settle.lua`; README
    /// "Budgets").
    Settle(Settlement<'a>),
    /// An operator starts a rotation plan (`lua/rotation_start.lua`; README "Rotating keys").
    RotationStart(&'a PlanSpec),
    /// An operator pauses, resumes or aborts the plan (`lua/rotation_control.lua`).
    RotationControl { action: Control, reason: &'a str },
    /// A replica takes or renews the lease that lets it drive the plan
    /// (`lua/rotation_lease.lua`); `fence` 0: it holds none.
    RotationLease {
        replica: &'a str,
        fence: u64,
        lease_ms: u64,
    },
    /// The lease holder's fenced change of its running plan (`lua/rotation_write.lua`).
    RotationWrite(&'a PlanWrite),
    /// A replica's counts of the plan's current step, `"<group>:<field>"` and delta
    /// (`lua/rotation_stats.lua`).
    RotationStats {
        step: usize,
        deltas: &'a [(String, u64)],
    },
    /// The plan, its lease, history and counts at one moment (`lua/rotation_read.lua`): a read,
    /// but of state only the rotation scripts know, so it goes where they go.
    RotationRead,
}

impl Op<'_> {
    /// The operation's name: the `op` label of `keygate_store_duration_seconds` and
    /// `keygate_store_errors_total` (dashboards and tests read these values).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Report(_) => "report",
            Op::Successes(_) => "report_batch",
            Op::SetState { .. } => "set_state",
            Op::SetWeight { .. } => "set_weight",
            Op::SetGroup { .. } => "set_group",
            Op::SetCanary { .. } => "set_canary",
            Op::Reset { .. } => "reset",
            Op::Settle(_) => "settle",
            Op::RotationStart(_) => "rotation_start",
            Op::RotationControl { .. } => "rotation_control",
            Op::RotationLease { .. } => "rotation_lease",
            Op::RotationWrite(_) => "rotation_write",
            Op::RotationStats { .. } => "rotation_stats",
            Op::RotationRead => "rotation_read",
        }
    }

    /// An operation on the pool's rotation plan. A plan is driven by one replica for the whole
    /// cluster, so only the cluster-wide store answers these: the failover layer refuses them
    /// while Redis is away (never answered from memory, never journaled), and the Redis store
    /// does not re-create a pool Redis lost for them (the plan went with it).
    pub fn is_rotation(&self) -> bool {
        matches!(
            self,
            Op::RotationStart(_)
                | Op::RotationControl { .. }
                | Op::RotationLease { .. }
                | Op::RotationWrite(_)
                | Op::RotationStats { .. }
                | Op::RotationRead
        )
    }

    /// The one key the operation is about, if it names one.
    pub fn key(&self) -> Option<&KeyId> {
        match self {
            Op::Report(r) => Some(r.key),
            Op::SetState { key, .. }
            | Op::SetWeight { key, .. }
            | Op::SetGroup { key, .. }
            | Op::Reset { key } => Some(key),
            // A rotation plan names keys, but no operation on it is about one key.
            _ => None,
        }
    }

    /// The virtual clock a test passed; `None` uses the store's clock.
    pub fn now_ms(&self) -> Option<u64> {
        match self {
            Op::Report(r) => r.now_ms,
            Op::Successes(b) => b.now_ms,
            Op::Settle(s) => s.now_ms,
            _ => None,
        }
    }

    /// Rejects an argument out of range before any store sees it (both stores answer alike).
    pub fn validate(&self) -> Result<(), StoreError> {
        match self {
            Op::SetWeight { weight, .. } if *weight > 1000 => Err(StoreError::InvalidArgument(
                "weight must be 0..=1000".into(),
            )),
            Op::SetCanary { percent } if *percent > 100 => Err(StoreError::InvalidArgument(
                "percent must be 0..=100".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// What an [`Op`] did: one variant per kind of answer. The `into_*` helpers unpack the variant an
/// operation answers with ([`KeyStoreExt`](super::KeyStoreExt) uses them, so callers never match
/// on a variant their operation cannot return).
#[derive(Clone, Debug, PartialEq)]
pub enum Receipt {
    /// For [`Op::Report`].
    Report(ReportReceipt),
    /// For [`Op::Successes`].
    Successes(BatchReceipt),
    /// For [`Op::SetState`]: the key's status after the change.
    State(KeyState),
    /// For the other admin operations, which answer nothing but success.
    Done,
    /// For [`Op::RotationStart`].
    RotationStart(StartReply),
    /// For [`Op::RotationControl`].
    RotationControl(ControlReply),
    /// For [`Op::RotationLease`].
    RotationLease(LeaseReply),
    /// For [`Op::RotationWrite`].
    RotationWrite(WriteReply),
    /// For [`Op::RotationStats`].
    RotationStats(StatsReply),
    /// For [`Op::RotationRead`] (boxed: a view is large, every other receipt small).
    RotationView(Box<RotationView>),
}

/// `into_<answer>`: the receipt's variant `$variant`, which operation `$op` answers with, or a
/// mismatch error.
macro_rules! unpack {
    ($($into:ident: $variant:ident($answer:ty) for $op:literal;)*) => {
        impl Receipt {
            $(
                pub fn $into(self) -> Result<$answer, StoreError> {
                    match self {
                        Receipt::$variant(answer) => Ok(answer),
                        other => Err(other.mismatch($op)),
                    }
                }
            )*
        }
    };
}

unpack! {
    into_report: Report(ReportReceipt) for "report";
    into_successes: Successes(BatchReceipt) for "report_batch";
    into_state: State(KeyState) for "set_state";
    into_start: RotationStart(StartReply) for "rotation_start";
    into_control: RotationControl(ControlReply) for "rotation_control";
    into_lease: RotationLease(LeaseReply) for "rotation_lease";
    into_write: RotationWrite(WriteReply) for "rotation_write";
    into_stats: RotationStats(StatsReply) for "rotation_stats";
    into_view: RotationView(Box<RotationView>) for "rotation_read";
}

impl Receipt {
    pub fn into_done(self) -> Result<(), StoreError> {
        match self {
            Receipt::Done => Ok(()),
            other => Err(other.mismatch("an admin change")),
        }
    }

    /// A store answered an operation with another operation's receipt: a bug in that store.
    fn mismatch(&self, op: &str) -> StoreError {
        StoreError::Script(format!("{self:?} is no answer to {op}"))
    }
}

#[cfg(test)]
mod tests;
