//! The rotation plan as the store keeps it (`lua/rotation_*.lua`, `rotation/memory.rs`), what the
//! rotation operations (`Op::Rotation*` in `store/op.rs`) carry, and their typed replies
//! (decoded from Redis in `store/redis/reply.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a plan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    Running,
    Paused,
    RolledBack,
    Done,
    Aborted,
}

impl PlanState {
    pub const ALL: [PlanState; 5] = [
        PlanState::Running,
        PlanState::Paused,
        PlanState::RolledBack,
        PlanState::Done,
        PlanState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlanState::Running => "running",
            PlanState::Paused => "paused",
            PlanState::RolledBack => "rolled_back",
            PlanState::Done => "done",
            PlanState::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<PlanState> {
        PlanState::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Running or paused: a new plan cannot start.
    pub fn is_active(self) -> bool {
        matches!(self, PlanState::Running | PlanState::Paused)
    }
}

/// What an operator (or an expiring key) asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanSpec {
    pub id: String,
    pub new_keys: Vec<String>,
    pub old_keys: Vec<String>,
    /// Canary percents, rising, ending at 100.
    pub steps: Vec<u8>,
    /// Canary requests a step needs (cluster-wide) before it may advance.
    pub min_requests: u64,
    /// How long a step lasts at least.
    pub min_dwell_ms: u64,
    /// Canary error ratio may exceed stable's by at most this much (0.05 = 5 points).
    pub max_error_increase: f64,
    /// Canary p99 latency may be at most this many times stable's (plus `p99_slack_ms`).
    pub max_p99_ratio: f64,
    pub p99_slack_ms: u64,
    /// The old key whose `expires` started this plan, if one did.
    pub auto_for: String,
}

#[cfg(test)]
impl PlanSpec {
    /// A plan from `new` to `old` in steps of 5, 25, 50 and 100 percent, for tests.
    pub(crate) fn example(new: &str, old: &str) -> PlanSpec {
        PlanSpec {
            id: "p1".into(),
            new_keys: vec![new.into()],
            old_keys: vec![old.into()],
            steps: vec![5, 25, 50, 100],
            min_requests: 1,
            min_dwell_ms: 0,
            max_error_increase: 0.05,
            max_p99_ratio: 2.0,
            p99_slack_ms: 0,
            auto_for: String::new(),
        }
    }
}

/// A plan as read back from the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub spec: PlanSpec,
    pub state: PlanState,
    /// Index into `spec.steps`.
    pub step: usize,
    pub step_started_ms: u64,
    pub reason: String,
    pub started_ms: u64,
    pub updated_ms: u64,
}

impl Plan {
    /// The canary percent of the current step.
    pub fn percent(&self) -> u8 {
        self.spec.steps.get(self.step).copied().unwrap_or(0)
    }
}

/// The lease that lets one replica drive the plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub holder: String,
    pub until_ms: u64,
    pub fence: u64,
}

/// One line of the plan's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_ms: u64,
    pub fence: u64,
    pub replica: String,
    pub event: String,
    pub detail: String,
}

impl HistoryEntry {
    /// `"<ms> <fence> <replica> <event> <detail>"`, as `lua/rotation_lib.lua` writes it.
    pub fn parse(line: &str) -> Option<HistoryEntry> {
        let mut parts = line.splitn(5, ' ');
        Some(HistoryEntry {
            at_ms: parts.next()?.parse().ok()?,
            fence: parts.next()?.parse().ok()?,
            replica: parts.next()?.to_string(),
            event: parts.next()?.to_string(),
            detail: parts.next().unwrap_or_default().to_string(),
        })
    }

    pub fn line(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.at_ms, self.fence, self.replica, self.event, self.detail
        )
    }
}

/// Cluster-wide counts of one group during one step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCounts {
    pub requests: u64,
    /// 5xx, timeouts, connect errors.
    pub errors: u64,
    /// 401/403 and spent-quota answers.
    pub auth_errors: u64,
    /// Requests per latency bucket (`metrics::steps::BUCKETS_MS`; the last is everything above).
    pub latency: Vec<u64>,
}

/// Everything about a pool's rotation, read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RotationView {
    pub now_ms: u64,
    pub plan: Option<Plan>,
    pub lease: LeaseInfo,
    /// Newest first.
    pub history: Vec<HistoryEntry>,
    /// `(step, group)` -> counts (the admin API shows the current step's as figures).
    #[serde(skip)]
    pub counts: BTreeMap<(usize, String), StepCounts>,
}

impl RotationView {
    /// The counts of `group` during `step` (zero when nothing was seen).
    pub fn counts_of(&self, step: usize, group: &str) -> StepCounts {
        self.counts
            .get(&(step, group.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}

/// An operator's action on a running or paused plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    Pause,
    Resume,
    Abort,
}

impl Control {
    pub fn as_str(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Abort => "abort",
        }
    }
}

/// A fenced change of a running plan by its driver.
#[derive(Clone, Debug, Default)]
pub struct PlanWrite {
    pub replica: String,
    pub fence: u64,
    pub canary: Option<u8>,
    pub event: String,
    pub detail: String,
    pub state: Option<PlanState>,
    pub step: Option<usize>,
    /// Set `step_started_ms` to the store's clock.
    pub restart_step: bool,
    pub reason: Option<String>,
}

/// The answer to a start (`Op::RotationStart`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartReply {
    /// The plan runs at its first step's canary percent.
    Started { percent: u8 },
    /// A plan is running or paused already.
    Busy(PlanState),
    /// A key is unknown or in the wrong group.
    BadKey { key: String, why: String },
}

/// The answer to an operator's pause, resume or abort (`Op::RotationControl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlReply {
    /// The plan's state after the action.
    Controlled(PlanState),
    NoPlan,
    /// The action does not apply to a plan in this state.
    BadState(PlanState),
}

/// The answer to a lease request (`Op::RotationLease`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseReply {
    Held {
        fence: u64,
        until_ms: u64,
    },
    Other(LeaseInfo),
    /// The caller's fence was stale; the refusal is in the history.
    Lost(LeaseInfo),
    /// No running plan.
    Idle,
}

/// The answer to a fenced write (`Op::RotationWrite`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteReply {
    Ok,
    NoPlan,
    Fenced { fence: u64, holder: String },
}

/// The answer to a replica's step counts (`Op::RotationStats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsReply {
    /// False: no running plan at that step, and the counts were dropped.
    pub applied: bool,
}

/// The plan's fields as `lua/rotation_start.lua` stores them (beyond id, keys and steps).
pub fn spec_fields(spec: &PlanSpec) -> Vec<(&'static str, String)> {
    vec![
        ("min_requests", spec.min_requests.to_string()),
        ("min_dwell_ms", spec.min_dwell_ms.to_string()),
        ("max_error_increase", spec.max_error_increase.to_string()),
        ("max_p99_ratio", spec.max_p99_ratio.to_string()),
        ("p99_slack_ms", spec.p99_slack_ms.to_string()),
        ("auto_for", spec.auto_for.clone()),
    ]
}

/// The plan fields a write sets, in the order `lua/rotation_write.lua` takes them.
pub fn write_fields(w: &PlanWrite) -> Vec<(&'static str, String)> {
    let mut f = Vec::new();
    if let Some(s) = w.state {
        f.push(("state", s.as_str().to_string()));
    }
    if let Some(s) = w.step {
        f.push(("step", s.to_string()));
    }
    if w.restart_step {
        f.push(("step_started_ms", "now".to_string()));
    }
    if let Some(r) = &w.reason {
        f.push(("reason", r.clone()));
    }
    f
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// A plan from its stored fields; `None` when there is none (or it is unreadable).
pub fn plan_from_fields(f: &BTreeMap<String, String>) -> Option<Plan> {
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let float = |k: &str| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let text = |k: &str| f.get(k).cloned().unwrap_or_default();
    Some(Plan {
        spec: PlanSpec {
            id: text("id"),
            new_keys: list(&text("new_keys")),
            old_keys: list(&text("old_keys")),
            steps: text("steps")
                .split(',')
                .filter_map(|s| s.parse().ok())
                .collect(),
            min_requests: num("min_requests"),
            min_dwell_ms: num("min_dwell_ms"),
            max_error_increase: float("max_error_increase"),
            max_p99_ratio: float("max_p99_ratio"),
            p99_slack_ms: num("p99_slack_ms"),
            auto_for: text("auto_for"),
        },
        state: PlanState::parse(f.get("state")?)?,
        step: num("step") as usize,
        step_started_ms: num("step_started_ms"),
        reason: text("reason"),
        started_ms: num("started_ms"),
        updated_ms: num("updated_ms"),
    })
}

/// The counts from their stored fields (`"<step>:<group>:<field>"`).
pub fn counts_from_fields(f: &BTreeMap<String, u64>) -> BTreeMap<(usize, String), StepCounts> {
    let mut out: BTreeMap<(usize, String), StepCounts> = BTreeMap::new();
    for (name, value) in f {
        let mut parts = name.splitn(3, ':');
        let (Some(step), Some(group), Some(field)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(step) = step.parse::<usize>() else {
            continue;
        };
        let c = out.entry((step, group.to_string())).or_default();
        match field {
            "requests" => c.requests += value,
            "errors" => c.errors += value,
            "auth_errors" => c.auth_errors += value,
            other => {
                if let Some(i) = other
                    .strip_prefix("lat_")
                    .and_then(|i| i.parse::<usize>().ok())
                {
                    if c.latency.len() <= i {
                        c.latency.resize(i + 1, 0);
                    }
                    c.latency[i] += value;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_lines_round_trip_with_spaces_in_the_detail() {
        let e = HistoryEntry {
            at_ms: 17,
            fence: 3,
            replica: "r-1".into(),
            event: "rollback".into(),
            detail: "canary errors 0.50 against stable 0.00".into(),
        };
        assert_eq!(HistoryEntry::parse(&e.line()), Some(e));
        assert_eq!(HistoryEntry::parse("x 1 r e d"), None);
    }

    #[test]
    fn counts_are_grouped_by_step_and_group() {
        let mut f = BTreeMap::new();
        f.insert("1:canary:requests".to_string(), 10);
        f.insert("1:canary:errors".to_string(), 2);
        f.insert("1:canary:lat_3".to_string(), 4);
        f.insert("1:stable:requests".to_string(), 30);
        f.insert("junk".to_string(), 5);
        let c = counts_from_fields(&f);
        let canary = &c[&(1, "canary".to_string())];
        assert_eq!((canary.requests, canary.errors), (10, 2));
        assert_eq!(canary.latency, vec![0, 0, 0, 4]);
        assert_eq!(c[&(1, "stable".to_string())].requests, 30);
        assert_eq!(c.len(), 2);
    }
}
