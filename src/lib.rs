//! keygate: one pool of upstream LLM API keys shared by many stateless gateway replicas.
//!
//! Layout:
//! - `config`: the TOML config, `KEYGATE_*` overrides, validation, the `Secret` type.
//! - `pool`: key ids, key states, outcomes, and the classification of upstream answers.
//! - `store`: the `KeyStore` trait; the Redis store (Lua scripts in `lua/`) and the memory store.
//! - `usage`: token usage from JSON bodies and SSE streams.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod config;
pub mod pool;
pub mod store;
pub mod usage;
