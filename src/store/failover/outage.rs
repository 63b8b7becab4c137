//! When the failover store switches to memory: counting outage errors, the time they span,
//! and the confirming `PING` the background task sends for a burst of them.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{lock, Shared};
use crate::store::StoreError;

impl Shared {
    /// Counts an outage error. Switches to degraded mode at `degraded_after_failures` errors in
    /// a row once they span `degraded_after`; before that, the call that reaches the count asks
    /// the background task for one `PING` ([`Shared::confirm_outage`]).
    pub(super) fn failed(&self, op: &str, e: &StoreError) {
        if let Some(m) = &self.metrics {
            m.store_errors.with_label_values(&[op]).inc();
        }
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let span = self.failing_for();
        tracing::debug!(op, error = %e, consecutive = n, ?span,
            "Redis call failed; answering from memory");
        if n < self.opts.degraded_after_failures || self.is_degraded() {
            return;
        }
        if span >= self.opts.degraded_after {
            self.switch_to_memory(op, e, n);
        } else if !self.pinged.swap(true, Ordering::AcqRel) {
            self.confirm_wanted.store(true, Ordering::Release);
            self.wake.notify_one();
        }
    }

    /// The confirming `PING` of a run of failures: switches if it fails too; if Redis answers,
    /// only a run that lasts `degraded_after` switches.
    pub(super) async fn confirm_outage(&self) {
        let n = self.failures.load(Ordering::Acquire);
        if n == 0 || self.is_degraded() {
            return;
        }
        match self.redis.ping_redis().await {
            Err(e) if e.is_outage() && self.failures.load(Ordering::Acquire) > 0 => {
                self.switch_to_memory("ping", &e, n)
            }
            _ => tracing::debug!(
                consecutive = n,
                "a burst of failed Redis calls, but Redis answers PING: not degraded yet"
            ),
        }
    }

    /// How long the current run of failures has lasted (starting one if none runs).
    fn failing_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let since =
            match self
                .failing_since
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => now,
                Err(since) => since,
            };
        Duration::from_millis(now.saturating_sub(since))
    }

    fn switch_to_memory(&self, op: &str, e: &StoreError, n: u32) {
        if self.degraded.swap(true, Ordering::AcqRel) {
            return;
        }
        for spec in self.all_specs() {
            self.seed_if_stale(&spec.name);
        }
        *lock(&self.degraded_since) = Some(Instant::now());
        if let Some(m) = &self.metrics {
            m.store_degraded.set(1);
        }
        tracing::warn!(op, error = %e, failures = n,
            "Redis unreachable: degraded mode, serving from the in-process store");
    }
}
