//! The key store through its `KeyStore` interface: one conformance suite run against both stores,
//! per-key budgets on both, a model-based comparison of Redis with memory, and what only the
//! Redis store does (coalesced selects, lost and re-created pools, snapshots, Sentinel and
//! Cluster, failover to memory).

mod batch;
mod budgets;
mod coalesce;
mod conformance;
mod failover;
mod model;
mod redis;
mod snapshot;
mod topologies;
