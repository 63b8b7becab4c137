//! keygate's integration tests: one binary so it links once. Every test talks to real
//! components: its own redis-server processes and real HTTP servers.

/// Runs each named `async fn(&Subject)` once against the memory store and once against a
/// redis-server of its own (`store_conformance`, `store_batch`).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test] async fn $name() { super::$name(&crate::harness::memory_subject()).await })*
        }
        mod redis {
            $(#[tokio::test] async fn $name() { super::$name(&crate::harness::redis_subject()).await })*
        }
    };
}

mod admin;
mod budget_accuracy;
mod e2e;
mod faults;
mod fuzz;
#[allow(dead_code)] // helpers serve many test modules; not every one uses each
mod harness;
mod harness_processes;
mod honest;
mod hostile;
mod observability;
mod proxy;
mod proxy_batch;
mod proxy_budgets;
mod proxy_lifecycle;
mod reload;
mod rotation;
mod secrets;
mod store_batch;
mod store_budgets;
mod store_coalesce;
mod store_conformance;
mod store_failover;
mod store_model;
mod store_redis;
mod store_snapshot;
mod store_topologies;
