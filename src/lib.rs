//! keygate: one pool of upstream LLM API keys shared by many stateless gateway replicas.
//!
//! Layout:
//! - `config`: the TOML config, `KEYGATE_*` overrides, validation, the `Secret` type.
//! - `pool`: key ids, key states, outcomes, and the classification of upstream answers.
//! - `store`: the `KeyStore` trait; the Redis store (Lua scripts in `lua/`), the memory store,
//!   the instrumented decorator.
//! - `proxy`: the `/v1/*` handler: auth, canary routing, select → forward → report → retry.
//! - `app`: the config-derived runtime, shared state and the router; `gateway`: start-up;
//!   `server`: the accept loop and graceful shutdown; `health`: readiness and key gauges.
//! - `reload`: hot reload of the config file (SIGHUP, `POST /admin/reload` reaching every
//!   replica through Redis, a change of the file itself).
//! - `rotation`: guarded key rotation, a plan in the store driven by one replica under a lease.
//! - `metrics`, `error`, `usage`, `admin`, `mock` (the OpenAI-compatible mock provider), `cli`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod error;
pub mod gateway;
pub mod health;
pub mod metrics;
pub mod mock;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod rotation;
pub mod server;
pub mod store;
pub mod usage;
