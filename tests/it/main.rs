//! keygate's integration tests: one binary so it links once. Every test talks to real
//! components: its own redis-server processes and real HTTP servers.

/// Runs each named `async fn(&Subject)` once against the memory store and once against a
/// redis-server of its own (`store::conformance`, `store::batch`).
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
mod harness;
mod honest;
mod hostile;
mod observability;
mod ops;
mod proxy;
mod routes;
mod secrets;
mod store;
