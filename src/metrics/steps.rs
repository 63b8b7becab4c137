//! Rotation step counts: what this replica saw per traffic group during the current step of a
//! running rotation plan (`crate::rotation`):
//! counters on the request path (a few relaxed atomic adds, and nothing at all while no plan
//! runs), taken and sent to the store's cluster-wide counts by the driver.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::pool::Outcome;

/// Upper bounds of the latency buckets, ms; one more bucket counts everything above.
pub const BUCKETS_MS: [u64; 12] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000];

/// One group's counters.
#[derive(Default)]
pub struct GroupCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    auth_errors: AtomicU64,
    latency: [AtomicU64; BUCKETS_MS.len() + 1],
}

impl GroupCounters {
    fn record(&self, outcome: Outcome, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::ServerError | Outcome::Timeout | Outcome::ConnectError => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Unauthorized | Outcome::QuotaExhausted => {
                self.auth_errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        let ms = elapsed.as_millis() as u64;
        let i = BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(BUCKETS_MS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the counts (leaving zeros) as `"<group>:<field>", delta` pairs, zeros left out.
    fn take(&self, group: &str, out: &mut Vec<(String, u64)>) {
        let mut push = |field: String, v: u64| {
            if v > 0 {
                out.push((format!("{group}:{field}"), v));
            }
        };
        push("requests".into(), self.requests.swap(0, Ordering::Relaxed));
        push("errors".into(), self.errors.swap(0, Ordering::Relaxed));
        push(
            "auth_errors".into(),
            self.auth_errors.swap(0, Ordering::Relaxed),
        );
        for (i, b) in self.latency.iter().enumerate() {
            push(format!("lat_{i}"), b.swap(0, Ordering::Relaxed));
        }
    }
}

/// The counters of one pool's running plan.
pub struct StepRecorder {
    /// The step these counters belong to (counts of an older step are dropped by the store).
    pub step: AtomicUsize,
    pub stable_group: String,
    pub canary_group: String,
    stable: GroupCounters,
    canary: GroupCounters,
}

impl StepRecorder {
    pub fn new(step: usize, stable_group: &str, canary_group: &str) -> StepRecorder {
        StepRecorder {
            step: AtomicUsize::new(step),
            stable_group: stable_group.to_string(),
            canary_group: canary_group.to_string(),
            stable: GroupCounters::default(),
            canary: GroupCounters::default(),
        }
    }

    /// Counts one upstream attempt of a key in `group`.
    pub fn record(&self, group: &str, outcome: Outcome, elapsed: Duration) {
        if group == self.canary_group {
            self.canary.record(outcome, elapsed);
        } else {
            self.stable.record(outcome, elapsed);
        }
    }

    /// Takes everything counted since the last take.
    pub fn take(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        self.stable.take(&self.stable_group, &mut out);
        self.canary.take(&self.canary_group, &mut out);
        out
    }
}

/// Per pool, the recorder of its running plan; empty while no plan runs, so the request path
/// costs one atomic load then.
#[derive(Default)]
pub struct Recorders {
    by_pool: ArcSwap<HashMap<String, Arc<StepRecorder>>>,
}

impl Recorders {
    pub fn get(&self, pool: &str) -> Option<Arc<StepRecorder>> {
        let map = self.by_pool.load();
        if map.is_empty() {
            return None;
        }
        map.get(pool).cloned()
    }

    /// Sets (or with `None` removes) the recorder of `pool`.
    pub fn set(&self, pool: &str, recorder: Option<Arc<StepRecorder>>) {
        let mut map = HashMap::clone(&self.by_pool.load());
        match recorder {
            Some(r) => map.insert(pool.to_string(), r),
            None => map.remove(pool),
        };
        self.by_pool.store(Arc::new(map));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_go_to_the_group_and_bucket_and_are_taken_once() {
        let r = StepRecorder::new(1, "stable", "canary");
        r.record("canary", Outcome::Success, Duration::from_millis(7));
        r.record(
            "canary",
            Outcome::ServerError,
            Duration::from_millis(70_000),
        );
        r.record("stable", Outcome::Unauthorized, Duration::from_millis(1));
        let mut got = r.take();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("canary:errors".to_string(), 1),
                ("canary:lat_1".to_string(), 1),
                ("canary:lat_12".to_string(), 1),
                ("canary:requests".to_string(), 2),
                ("stable:auth_errors".to_string(), 1),
                ("stable:lat_0".to_string(), 1),
                ("stable:requests".to_string(), 1),
            ]
        );
        assert!(r.take().is_empty());
    }
}
