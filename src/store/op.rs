//! The store as a command interpreter: every state-changing operation is one [`Op`] variant,
//! applied by [`KeyStore::apply`](super::KeyStore::apply) in one atomic step and answered by one
//! [`Receipt`] variant.
//!
//! Each variant is one Lua script in Redis (`Scripts::for_op`, its ARGV in `redis/ops.rs`, its
//! reply decoded in `redis/reply.rs`) and one branch of the memory store's `PoolState::apply`
//! (`transitions.rs`). The wrappers (`instrumented.rs`, `failover.rs`) handle every `Op` alike;
//! the failover journal keeps them in owned form (`failover/writeback.rs`).
//! [`KeyStoreExt`](super::KeyStoreExt) gives each operation a method with its typed receipt.

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
        }
    }

    /// The one key the operation is about, if it names one.
    pub fn key(&self) -> Option<&KeyId> {
        match self {
            Op::Report(r) => Some(r.key),
            Op::SetState { key, .. }
            | Op::SetWeight { key, .. }
            | Op::SetGroup { key, .. }
            | Op::Reset { key } => Some(key),
            Op::Successes(_) | Op::SetCanary { .. } | Op::Settle(_) => None,
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Receipt {
    /// For [`Op::Report`].
    Report(ReportReceipt),
    /// For [`Op::Successes`].
    Successes(BatchReceipt),
    /// For [`Op::SetState`]: the key's status after the change.
    State(KeyState),
    /// For the other admin operations, which answer nothing but success.
    Done,
}

impl Receipt {
    pub fn into_report(self) -> Result<ReportReceipt, StoreError> {
        match self {
            Receipt::Report(r) => Ok(r),
            other => Err(other.mismatch("report")),
        }
    }

    pub fn into_successes(self) -> Result<BatchReceipt, StoreError> {
        match self {
            Receipt::Successes(b) => Ok(b),
            other => Err(other.mismatch("report_batch")),
        }
    }

    pub fn into_state(self) -> Result<KeyState, StoreError> {
        match self {
            Receipt::State(s) => Ok(s),
            other => Err(other.mismatch("set_state")),
        }
    }

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
