//! The budget and operator-surface metrics: open and refused connections, request bytes
//! buffered in flight, requests refused by a budget, admin authentication failures.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct LimitMetrics {
    /// `keygate_connections_open`: connections held on the public listener.
    pub connections_open: IntGauge,
    /// `keygate_connections_rejected_total`: connections closed at once because
    /// `server.max_connections` were open.
    pub connections_rejected: IntCounter,
    /// `keygate_buffered_request_bytes`: request body bytes reserved in flight.
    pub buffered_bytes: IntGauge,
    /// `keygate_budget_refusals_total{reason}`: requests refused by a budget (`server_busy`,
    /// `client_busy`, `client_concurrency_exceeded`).
    pub budget_refusals: IntCounterVec,
    /// `keygate_admin_auth_failures_total`: admin requests with a missing or wrong token.
    pub admin_auth_failures: IntCounter,
}

impl LimitMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<LimitMetrics> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let budget_refusals = IntCounterVec::new(
            Opts::new(
                "keygate_budget_refusals_total",
                "Requests refused because a buffer or concurrency budget was full, by reason",
            ),
            &["reason"],
        )?;
        r.register(Box::new(budget_refusals.clone()))?;
        for reason in ["server_busy", "client_busy", "client_concurrency_exceeded"] {
            budget_refusals.with_label_values(&[reason]);
        }
        Ok(LimitMetrics {
            connections_open: gauge(
                "keygate_connections_open",
                "Connections open on the public listener",
            )?,
            connections_rejected: counter(
                "keygate_connections_rejected_total",
                "Connections closed on accept because server.max_connections were open",
            )?,
            buffered_bytes: gauge(
                "keygate_buffered_request_bytes",
                "Request body bytes buffered in flight across the process",
            )?,
            budget_refusals,
            admin_auth_failures: counter(
                "keygate_admin_auth_failures_total",
                "Admin requests refused for a missing or wrong admin token",
            )?,
        })
    }
}
