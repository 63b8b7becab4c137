//! Guarded key rotation: a plan kept in the store ramps new keys (the pool's canary group)
//! step by step to 100% of traffic, rolls back by itself when the canary does worse than the
//! stable keys, and retires the old keys. One replica at a time drives a plan, under a lease
//! with a fencing token that every plan write checks inside its script (README, "Rotating
//! keys"; ARCHITECTURE.md, "Rotation").
//!
//! - `store/rotation/plan.rs`: the plan, its lease and history as the store holds them, and the
//!   replies of the store operations on them (`Op::Rotation*`, one `lua/rotation_<op>.lua` each,
//!   called through `KeyStoreExt::rotation_*`).
//! - `guards.rs`: the decision at each evaluation, from cluster-wide counts (pure).
//! - `metrics/steps.rs` (in the metrics module, which counts every attempt): what this replica
//!   saw per group during the current step, flushed by the driver to the store's counts.
//! - `driver.rs`: the background task of every replica: lease, counts, decisions, expiry.
//! - `store/rotation/memory.rs`: the same operations in process (the embedded store).

pub mod driver;
pub mod guards;

pub use crate::store::rotation::plan::{
    Control, ControlReply, HistoryEntry, LeaseInfo, LeaseReply, Plan, PlanSpec, PlanState,
    RotationView, StartReply, StatsReply, StepCounts, WriteReply,
};
