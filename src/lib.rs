//! keygate: one pool of upstream LLM API keys shared by many stateless gateway replicas.
//!
//! Layout (ARCHITECTURE.md has the code map and each module's invariants), lower layers first;
//! a module uses only those above it in this list (`scripts/check-imports.sh` checks it):
//! - `pool`: key ids, key states, state counts and the outcome of one attempt: pure data.
//! - `config`: the TOML config, `KEYGATE_*` overrides, validation, the `Secret` type.
//! - `upstream`: what an upstream answer means for its key (status, body, rate-limit headers),
//!   and the scrubbing of the pool's secrets out of it.
//! - `error`, `usage`, `metrics`: the API's error shape, token counting, Prometheus metrics.
//! - `store`: the `KeyStore` trait; the Redis store (Lua scripts in `lua/`), the memory store,
//!   the failover and instrumented wrappers, success batching, per-key budgets and this
//!   replica's leases, the Redis bus of cluster-wide reloads.
//! - `state`: the running gateway: the config-derived `Gateway`, the shared `AppState` and what
//!   it counts per replica (client circuits, buffer and concurrency budgets).
//! - `proxy` (the `/v1/*` handler), `admin`, `health`, `reload` (hot reload: SIGHUP,
//!   `POST /admin/reload` reaching every replica through Redis, a change of the file itself):
//!   what serves requests over the state; `routes`: the HTTP surface; `server`: the accept loop,
//!   connection budgets and graceful shutdown.
//! - `gateway`: start-up (config → store → state → server); `cli`: the binary's commands.
//! - `mock`: the OpenAI-compatible mock provider (tests, benchmarks, `keygate mock-upstream`).
//! - `rotation`: guarded key rotation, a plan in the store driven by one replica under a lease.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod error;
pub mod gateway;
pub mod health;
pub mod metrics;
#[cfg(feature = "mock")]
pub mod mock;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod rotation;
pub mod routes;
pub mod server;
pub mod state;
pub mod store;
pub mod upstream;
pub mod usage;
