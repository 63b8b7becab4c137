//! Prometheus metrics (README.md, "Metrics, dashboards and alerts"): per-key counters recorded by the proxy, store timings
//! recorded by [`InstrumentedStore`], and key-state gauges filled from store snapshots (the
//! cluster-wide truth) at scrape time, cached for `store.snapshot_cache_ms`.
//!
//! Labels are pool names, key ids, groups, outcomes, models: never a secret, never a raw URI.
//!
//! The per-key families live in [`keys::KeyTable`] (plain atomics, rendered in chunks); the
//! few per-pool and per-operation families use the `prometheus` crate's registry.

mod keys;
mod limits;
pub mod steps;

use std::sync::Arc;
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::{PoolConfig, STABLE_GROUP};
use crate::pool::{KeyState, Outcome};
pub use keys::{KeySeries, MODELS_PER_KEY, UPSTREAM_BUCKETS};
pub use limits::LimitMetrics;

/// The `op` label values of `keygate_store_duration_seconds` and `keygate_store_errors_total`:
/// the store operations `src/store/instrumented.rs` times.
pub const STORE_OPS: [&str; 11] = [
    "select",
    "report",
    "report_batch",
    "set_state",
    "set_weight",
    "set_group",
    "set_canary",
    "reset",
    "snapshot",
    "sync",
    "ping",
];

/// The `reason` label of `keygate_client_rejections_total` (and the error code) of a request
/// refused because its client's circuit is open (`crate::state::circuit`).
pub const CIRCUIT_OPEN: &str = "client_circuit_open";

/// Every metric keygate exports, registered once.
pub struct Metrics {
    pub registry: Registry,
    /// The per-key families (requests, upstream duration, state, cooldown, weight, cooldowns,
    /// tokens).
    pub keys: keys::KeyTable,
    pub retries: IntCounterVec,
    pub no_key_available: IntCounterVec,
    pub store_duration: HistogramVec,
    pub store_errors: IntCounterVec,
    pub store_degraded: IntGauge,
    pub canary_requests: IntCounterVec,
    /// `keygate_client_rejections_total{client,reason}`: requests refused because of what
    /// their client did before (`client_circuit_open`).
    pub client_rejections: IntCounterVec,
    /// Connections, buffer budgets and admin refusals.
    pub limits: LimitMetrics,
    /// How long requests waited for a key's budget (README "Budgets"), per pool.
    pub budget_wait: HistogramVec,
    /// Budgeted keys' headroom over the next minute, from snapshots (`kind`: requests, tokens).
    pub budget_remaining: IntGaugeVec,
    /// `keygate_rotation_step{pool}`: the canary percent of the running plan's step (0: none).
    pub rotation_step: IntGaugeVec,
    /// `keygate_rotation_state{pool,state}`: 1 for the state of the pool's latest plan.
    pub rotation_state: IntGaugeVec,
    /// `keygate_key_expiry_seconds{pool,key}`: seconds until a key's configured `expires`.
    pub key_expiry: IntGaugeVec,
    /// Per pool, the counts of a running rotation's current step (empty while none runs).
    pub rotation_steps: steps::Recorders,
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
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
        let store_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        ];
        let store_degraded = IntGauge::new(
            "keygate_store_degraded",
            "1 while this replica serves from its in-process store because Redis is unreachable",
        )?;
        r.register(Box::new(store_degraded.clone()))?;
        let budget_remaining = IntGaugeVec::new(
            Opts::new(
                "keygate_key_budget_remaining",
                "A budgeted key's headroom over the next minute: requests or tokens it may still start",
            ),
            &["pool", "key", "kind"],
        )?;
        r.register(Box::new(budget_remaining.clone()))?;
        let metrics = Metrics {
            keys: keys::KeyTable::default(),
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
            canary_requests: counter(
                &r,
                "keygate_canary_requests_total",
                "Requests by traffic group; fallback=true when canary traffic went to stable",
                &["pool", "group", "fallback"],
            )?,
            client_rejections: counter(
                &r,
                "keygate_client_rejections_total",
                "Requests refused because of what their client did before, by reason",
                &["client", "reason"],
            )?,
            limits: LimitMetrics::register(&r)?,
            budget_wait: histogram(
                &r,
                "keygate_budget_wait_seconds",
                "How long requests waited for a reserved slot of a key's budget",
                &["pool"],
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            )?,
            budget_remaining,
            rotation_step: gauge(
                &r,
                "keygate_rotation_step",
                "Canary percent of the pool's running rotation step (0 when no plan runs)",
                &["pool"],
            )?,
            rotation_state: gauge(
                &r,
                "keygate_rotation_state",
                "1 for the state of the pool's latest rotation plan (none, running, paused, rolled_back, done, aborted)",
                &["pool", "state"],
            )?,
            key_expiry: gauge(
                &r,
                "keygate_key_expiry_seconds",
                "Seconds until a key's configured expiry (negative once expired)",
                &["pool", "key"],
            )?,
            rotation_steps: steps::Recorders::default(),
            registry: r,
        };
        for op in STORE_OPS {
            metrics.store_errors.with_label_values(&[op]);
            metrics.store_duration.with_label_values(&[op]);
        }
        Ok(metrics)
    }

    /// Exports every per-pool series of `pools` whose label values are known in advance, at 0,
    /// so an alert on `increase(...)` sees the first event and a dashboard shows 0, not "no
    /// data". Called at start-up and on every reload (a removed pool keeps its series).
    pub fn initialise_pools(&self, pools: &[Arc<PoolConfig>]) {
        for pool in pools {
            let name = pool.name.as_str();
            self.no_key_available.with_label_values(&[name]);
            for reason in Outcome::ALL.into_iter().filter(|o| o.is_failure()) {
                self.retries.with_label_values(&[name, reason.as_str()]);
            }
            let canary = pool.canary.group.as_str();
            for (group, fallback) in [
                (STABLE_GROUP, "false"),
                (STABLE_GROUP, "true"),
                (canary, "false"),
            ] {
                self.canary_requests
                    .with_label_values(&[name, group, fallback]);
            }
        }
    }

    /// Shows every configured client's rejection counters at 0 before its first refusal (so
    /// `increase()` sees the first one).
    pub fn init_clients<'a>(&self, clients: impl Iterator<Item = &'a str>) {
        for client in clients {
            let reason = CIRCUIT_OPEN;
            self.client_rejections.with_label_values(&[client, reason]);
        }
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
        let series = self.keys.get(pool, key);
        series.count_request(group, outcome);
        if let Some(step) = self.rotation_steps.get(pool) {
            step.record(group, outcome, started.elapsed());
        }
        if !matches!(outcome, Outcome::Timeout | Outcome::ConnectError) {
            series.observe(started.elapsed());
        }
    }

    /// `keygate_requests_total{pool,key,group,outcome}` as this replica counted it.
    pub fn requests(&self, pool: &str, key: &str, group: &str, outcome: Outcome) -> u64 {
        self.keys
            .find(pool, key)
            .map_or(0, |s| s.requests(group, outcome))
    }

    /// Counts a key leaving rotation because of traffic (the report changed its state).
    pub fn record_cooldown(&self, pool: &str, key: &str, state: KeyState, outcome: Outcome) {
        if matches!(
            state,
            KeyState::Cooling | KeyState::Open | KeyState::Disabled
        ) {
            self.keys.get(pool, key).count_cooldown(outcome);
        }
    }

    /// Counts the tokens of one answer's `usage` (at most [`MODELS_PER_KEY`] models per key;
    /// the rest as `other`).
    pub fn record_tokens(&self, pool: &str, key: &str, model: &str, prompt: u64, completion: u64) {
        self.keys
            .get(pool, key)
            .count_tokens(model, prompt, completion);
    }

    /// Sets one key's gauges (its state, the cooldown it has left, its weight) from a store
    /// snapshot (`health::refresh_key_gauges`).
    pub fn set_key_gauges(
        &self,
        pool: &str,
        key: &str,
        state: KeyState,
        cooldown_ms: u64,
        weight: u32,
    ) {
        self.keys
            .get(pool, key)
            .set_gauges(state, cooldown_ms, weight);
    }

    /// `keygate_key_budget_remaining` of one key: the requests and tokens its schedules let
    /// start within the next minute; `None` for a dimension the key has no limit on.
    pub fn set_budget_remaining(
        &self,
        pool: &str,
        key: &str,
        requests: Option<u64>,
        tokens: Option<u64>,
    ) {
        for (unit, value) in [("requests", requests), ("tokens", tokens)] {
            if let Some(v) = value {
                self.budget_remaining
                    .with_label_values(&[pool, key, unit])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
    }

    /// Hides the key gauges `keep(pool, key)` refuses: keys that left the store or the config.
    pub fn retain_key_gauges(&self, keep: impl Fn(&str, &str) -> bool) {
        self.keys.retain_gauges(keep);
    }

    /// The text exposition format, in chunks of about 64 KiB: the registry's families first,
    /// then the per-key ones, rendered as the iterator is consumed.
    pub fn render_chunks(&self) -> impl Iterator<Item = String> + Send + 'static {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        std::iter::once(head).chain(keys::Renderer::new(self.keys.entries(), 64 * 1024))
    }

    /// The whole text exposition format in one string.
    pub fn render(&self) -> String {
        self.render_chunks().collect()
    }
}
