//! The rotation plan as the store keeps it: its types, the operations on it and their replies
//! (`plan.rs`), and the same operations in process for the embedded store (`memory.rs`). The
//! driver that decides on a plan is `crate::rotation`, above the store.

pub mod memory;
pub mod plan;

pub use plan::{
    Control, HistoryEntry, LeaseInfo, LeaseReply, Plan, PlanSpec, PlanState, RotationOp,
    RotationReply, RotationView, StepCounts, WriteReply,
};
