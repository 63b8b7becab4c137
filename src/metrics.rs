//! Prometheus metrics (DESIGN section 6): per-key counters recorded by the proxy, store timings
//! recorded by [`InstrumentedStore`], and key-state gauges filled from store snapshots (the
//! cluster-wide truth) at scrape time, cached for `store.snapshot_cache_ms`.
//!
//! Labels are pool names, key ids, groups, outcomes, models: never a secret, never a raw URI.

use std::time::Instant;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::pool::{KeyState, Outcome};
use crate::store::PoolSnapshot;

/// Every metric keygate exports, registered once.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub key_state: GaugeVec,
    pub key_cooldown: GaugeVec,
    pub key_weight: GaugeVec,
    pub cooldowns: IntCounterVec,
    pub retries: IntCounterVec,
    pub no_key_available: IntCounterVec,
    pub store_duration: HistogramVec,
    pub store_errors: IntCounterVec,
    pub store_degraded: IntGauge,
    pub tokens: IntCounterVec,
    pub canary_requests: IntCounterVec,
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let upstream_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let store_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        ];
        let store_degraded = IntGauge::new(
            "keygate_store_degraded",
            "1 while this replica serves from its in-process store because Redis is unreachable",
        )?;
        r.register(Box::new(store_degraded.clone()))?;
        Ok(Metrics {
            requests: counter(
                &r,
                "keygate_requests_total",
                "Upstream attempts by key and outcome",
                &["pool", "key", "group", "outcome"],
            )?,
            upstream_duration: histogram(
                &r,
                "keygate_upstream_duration_seconds",
                "Time from sending an attempt to its response headers",
                &["pool", "key"],
                upstream_buckets,
            )?,
            key_state: gauge(
                &r,
                "keygate_key_state",
                "1 for the key's current state (cluster-wide, from the store)",
                &["pool", "key", "state"],
            )?,
            key_cooldown: gauge(
                &r,
                "keygate_key_cooldown_seconds",
                "Seconds until the key's deadline (cooling, open, quota-disabled)",
                &["pool", "key"],
            )?,
            key_weight: gauge(
                &r,
                "keygate_key_weight",
                "The key's weight in selection",
                &["pool", "key"],
            )?,
            cooldowns: counter(
                &r,
                "keygate_cooldowns_total",
                "Keys taken out of rotation by traffic, by reason",
                &["pool", "key", "reason"],
            )?,
            retries: counter(
                &r,
                "keygate_retries_total",
                "Attempts retried on another key, by the failed attempt's outcome",
                &["pool", "reason"],
            )?,
            no_key_available: counter(
                &r,
                "keygate_no_key_available_total",
                "Requests answered 429/503 because no key was selectable",
                &["pool"],
            )?,
            store_duration: histogram(
                &r,
                "keygate_store_duration_seconds",
                "Store call latency by operation",
                &["op"],
                store_buckets,
            )?,
            store_errors: counter(
                &r,
                "keygate_store_errors_total",
                "Failed store calls by operation",
                &["op"],
            )?,
            store_degraded,
            tokens: counter(
                &r,
                "keygate_tokens_total",
                "Tokens reported in upstream usage, by kind (prompt, completion)",
                &["pool", "key", "model", "kind"],
            )?,
            canary_requests: counter(
                &r,
                "keygate_canary_requests_total",
                "Requests by traffic group; fallback=true when canary traffic went to stable",
                &["pool", "group", "fallback"],
            )?,
            registry: r,
        })
    }

    /// Counts one upstream attempt.
    pub fn record_attempt(
        &self,
        pool: &str,
        key: &str,
        group: &str,
        outcome: Outcome,
        started: Instant,
    ) {
        self.requests
            .with_label_values(&[pool, key, group, outcome.as_str()])
            .inc();
        if !matches!(outcome, Outcome::Timeout | Outcome::ConnectError) {
            self.upstream_duration
                .with_label_values(&[pool, key])
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Counts a key leaving rotation because of traffic (the report changed its state).
    pub fn record_cooldown(&self, pool: &str, key: &str, state: KeyState, outcome: Outcome) {
        if matches!(
            state,
            KeyState::Cooling | KeyState::Open | KeyState::Disabled
        ) {
            self.cooldowns
                .with_label_values(&[pool, key, outcome.as_str()])
                .inc();
        }
    }

    /// Replaces one pool's key gauges with a snapshot's values.
    pub fn apply_snapshot(&self, pool: &str, snap: &PoolSnapshot) {
        for k in &snap.keys {
            for s in KeyState::ALL {
                let v = if s == k.status { 1.0 } else { 0.0 };
                self.key_state
                    .with_label_values(&[pool, &k.id, s.as_str()])
                    .set(v);
            }
            let remaining = k.cooldown_until_ms.saturating_sub(snap.now_ms) as f64 / 1000.0;
            self.key_cooldown
                .with_label_values(&[pool, &k.id])
                .set(remaining);
            self.key_weight
                .with_label_values(&[pool, &k.id])
                .set(k.weight as f64);
        }
    }

    /// Forgets one key's gauges (a key that left the store or the config).
    pub fn remove_key_gauges(&self, pool: &str, key: &str) {
        for s in KeyState::ALL {
            let _ = self.key_state.remove_label_values(&[pool, key, s.as_str()]);
        }
        let _ = self.key_cooldown.remove_label_values(&[pool, key]);
        let _ = self.key_weight.remove_label_values(&[pool, key]);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
