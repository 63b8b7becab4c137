//! The Lua scripts of `lua/`, each prefixed with `lua/lib.lua` and built once at start-up.

use redis::Script;

use super::Op;

const LIB: &str = include_str!("../../lua/lib.lua");
const ROTATION_LIB: &str = include_str!("../../lua/rotation_lib.lua");

fn build(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{body}"))
}

/// A rotation script: `lib.lua`, then `rotation_lib.lua`, then the script.
fn build_rotation(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{ROTATION_LIB}\n{body}"))
}

/// Every script the Redis store runs; built once (hashing each source), shared by all calls.
pub(crate) struct Scripts {
    pub select: Script,
    pub report: Script,
    pub report_batch: Script,
    pub set_state: Script,
    pub set_weight: Script,
    pub set_group: Script,
    pub set_canary: Script,
    pub reset: Script,
    pub settle: Script,
    pub snapshot: Script,
    pub sync: Script,
    pub rotation_start: Script,
    pub rotation_control: Script,
    pub rotation_lease: Script,
    pub rotation_write: Script,
    pub rotation_stats: Script,
    pub rotation_read: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            select: build(include_str!("../../lua/select.lua")),
            report: build(include_str!("../../lua/report.lua")),
            report_batch: build(include_str!("../../lua/report_batch.lua")),
            set_state: build(include_str!("../../lua/set_state.lua")),
            set_weight: build(include_str!("../../lua/set_weight.lua")),
            set_group: build(include_str!("../../lua/set_group.lua")),
            set_canary: build(include_str!("../../lua/set_canary.lua")),
            reset: build(include_str!("../../lua/reset.lua")),
            settle: build(include_str!("../../lua/settle.lua")),
            snapshot: build(include_str!("../../lua/snapshot.lua")),
            sync: build(include_str!("../../lua/sync.lua")),
            rotation_start: build_rotation(include_str!("../../lua/rotation_start.lua")),
            rotation_control: build_rotation(include_str!("../../lua/rotation_control.lua")),
            rotation_lease: build_rotation(include_str!("../../lua/rotation_lease.lua")),
            rotation_write: build_rotation(include_str!("../../lua/rotation_write.lua")),
            rotation_stats: build_rotation(include_str!("../../lua/rotation_stats.lua")),
            rotation_read: build_rotation(include_str!("../../lua/rotation_read.lua")),
        }
    }

    /// The one script that applies `op` (its ARGV in `redis/ops.rs`, its reply in
    /// `redis/reply.rs`).
    pub fn for_op(&self, op: &Op<'_>) -> &Script {
        match op {
            Op::Report(_) => &self.report,
            Op::Successes(_) => &self.report_batch,
            Op::SetState { .. } => &self.set_state,
            Op::SetWeight { .. } => &self.set_weight,
            Op::SetGroup { .. } => &self.set_group,
            Op::SetCanary { .. } => &self.set_canary,
            Op::Reset { .. } => &self.reset,
            Op::Settle(_) => &self.settle,
            Op::RotationStart(_) => &self.rotation_start,
            Op::RotationControl { .. } => &self.rotation_control,
            Op::RotationLease { .. } => &self.rotation_lease,
            Op::RotationWrite(_) => &self.rotation_write,
            Op::RotationStats { .. } => &self.rotation_stats,
            Op::RotationRead => &self.rotation_read,
        }
    }

    pub fn all(&self) -> [&Script; 17] {
        [
            &self.select,
            &self.report,
            &self.report_batch,
            &self.set_state,
            &self.set_weight,
            &self.set_group,
            &self.set_canary,
            &self.reset,
            &self.settle,
            &self.snapshot,
            &self.sync,
            &self.rotation_start,
            &self.rotation_control,
            &self.rotation_lease,
            &self.rotation_write,
            &self.rotation_stats,
            &self.rotation_read,
        ]
    }
}
