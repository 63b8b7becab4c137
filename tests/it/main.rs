//! keygate's integration tests: one binary so it links once. Every test talks to real
//! components: its own redis-server processes and real HTTP servers.

#[allow(dead_code)] // helpers serve many test modules; not every one uses each
mod harness;
mod proxy;
mod store_conformance;
mod store_model;
mod store_redis;
