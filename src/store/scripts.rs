//! The Lua scripts of `lua/`, each prefixed with `lua/lib.lua` and built once at start-up.

use redis::Script;

use super::Op;

const LIB: &str = include_str!("../../lua/lib.lua");

fn build(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{body}"))
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
        }
    }

    pub fn all(&self) -> [&Script; 11] {
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
        ]
    }
}
