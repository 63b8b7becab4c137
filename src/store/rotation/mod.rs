//! The rotation plan as the store keeps it: its types and the replies of the rotation operations
//! (`plan.rs`; the operations themselves are `Op` variants, `store/op.rs`), and those operations
//! in process for the memory store (`memory.rs`). The driver that decides on a plan is
//! `crate::rotation`, above the store.

pub mod memory;
pub mod plan;

pub use plan::{
    Control, ControlReply, HistoryEntry, LeaseInfo, LeaseReply, Plan, PlanSpec, PlanState,
    PlanWrite, RotationView, StartReply, StatsReply, StepCounts, WriteReply,
};
