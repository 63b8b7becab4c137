//! keygate's integration tests: one binary so it links once. Every test talks to real
//! components: its own redis-server processes and real HTTP servers.

mod admin;
mod e2e;
mod faults;
mod fuzz;
#[allow(dead_code)] // helpers serve many test modules; not every one uses each
mod harness;
mod hostile;
mod observability;
mod proxy;
mod proxy_batch;
mod proxy_lifecycle;
mod reload;
mod secrets;
mod store_batch;
mod store_conformance;
mod store_failover;
mod store_model;
mod store_redis;
mod store_snapshot;
mod store_topologies;
