//! Where the Redis store's commands go: one Redis (a self-reconnecting `ConnectionManager`), the
//! master a set of Sentinels names (`sentinel.rs`), or a Redis Cluster (`cluster.rs`). Each
//! hands out a [`Handle`], a cheap clone that speaks `aio::ConnectionLike`, so scripts run the
//! same way on all three; errors and timeouts are reported back so Sentinel can re-resolve.

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::cluster::ClusterConn;
use super::sentinel::SentinelConn;
use super::StoreError;

/// Which Redis deployment to talk to (from `[store]`: `redis_url`, `sentinels` +
/// `sentinel_master`, or `cluster_nodes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// One Redis server (`redis://`, `rediss://`, `redis+unix://`, `unix://`).
    Url(String),
    /// The master named `master`, found through any of the Sentinels `nodes`.
    Sentinel { nodes: Vec<String>, master: String },
    /// A Redis Cluster reached through any of its seed `nodes`.
    Cluster { nodes: Vec<String> },
}

/// `host:port` as a `redis://` URL; URLs pass through.
pub(crate) fn node_url(node: &str) -> String {
    if node.contains("://") {
        node.to_string()
    } else {
        format!("redis://{node}")
    }
}

/// How long to wait for Redis: per command, and per connection attempt.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub response: Duration,
    pub connect: Duration,
}

impl Timeouts {
    pub fn async_config(&self) -> redis::AsyncConnectionConfig {
        redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(self.response))
            .set_connection_timeout(Some(self.connect))
    }
}

/// The store's way to Redis: one multiplexed connection (per master, per Cluster node) that every
/// request of the replica shares, never a pool. Many tasks' commands then go out in one write
/// and their replies come back in one read, on both sides; a pool pays a read and a write per
/// command and a checkout, and measured less throughput at more CPU per call on the client and
/// on Redis (BENCHMARKS.md, "One multiplexed connection, not a pool").
pub(crate) enum Conn {
    Single(ConnectionManager),
    Sentinel(SentinelConn),
    Cluster(ClusterConn),
}

/// One usable connection, cloned out of [`Conn`] for one call.
pub(crate) enum Handle {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Which connection a handle came from, so a failure only drops that one.
pub(crate) type Generation = u64;

fn invalid(what: &str, e: RedisError) -> StoreError {
    StoreError::InvalidArgument(format!("{what}: {e}"))
}

impl Conn {
    /// Opens nothing yet: every kind connects on first use, so a replica starts while Redis is
    /// down.
    pub fn open(endpoint: &Endpoint, t: Timeouts) -> Result<Conn, StoreError> {
        match endpoint {
            Endpoint::Url(url) => {
                let client =
                    redis::Client::open(url.as_str()).map_err(|e| invalid("store.redis_url", e))?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(t.response))
                    .set_connection_timeout(Some(t.connect))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let manager = ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|e| invalid("store.redis_url", e))?;
                Ok(Conn::Single(manager))
            }
            Endpoint::Sentinel { nodes, master } => {
                Ok(Conn::Sentinel(SentinelConn::new(nodes, master, t)?))
            }
            Endpoint::Cluster { nodes } => Ok(Conn::Cluster(ClusterConn::new(nodes, t)?)),
        }
    }

    /// A connection for one call (Sentinel and Cluster may connect here).
    pub async fn handle(&self) -> Result<(Handle, Generation), RedisError> {
        match self {
            Conn::Single(m) => Ok((Handle::Manager(m.clone()), 0)),
            Conn::Sentinel(s) => s
                .connection()
                .await
                .map(|(c, g)| (Handle::Multiplexed(c), g)),
            Conn::Cluster(c) => c.connection().await.map(|c| (Handle::Cluster(c), 0)),
        }
    }

    /// A call on the handle of `generation` failed with `e`.
    pub fn failed(&self, generation: Generation, e: &RedisError) {
        if let Conn::Sentinel(s) = self {
            if must_reresolve(e) {
                s.invalidate(generation, e);
            }
        }
    }

    /// Follows a topology change nobody reported as an error (Sentinel: a master that was
    /// replaced while still answering). A no-op for one server and for Cluster (whose
    /// connection refreshes its slot map by itself).
    pub async fn check_topology(&self) -> Result<(), RedisError> {
        match self {
            Conn::Sentinel(s) => s.check_master().await,
            _ => Ok(()),
        }
    }

    /// A call on the handle of `generation` ran out of time (the master may be hung).
    pub fn timed_out(&self, generation: Generation) {
        if let Conn::Sentinel(s) = self {
            s.invalidate_after_timeout(generation);
        }
    }
}

/// Errors after which a Sentinel client must ask again who the master is: the node was demoted
/// (`READONLY`), lost its master, is still loading, or the connection broke.
pub(crate) fn must_reresolve(e: &RedisError) -> bool {
    matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
        || e.to_string().contains("READONLY")
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
}

impl ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Handle::Manager(c) => c.req_packed_command(cmd),
            Handle::Multiplexed(c) => c.req_packed_command(cmd),
            Handle::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Handle::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Handle::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Handle::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Manager(c) => c.get_db(),
            Handle::Multiplexed(c) => c.get_db(),
            Handle::Cluster(c) => c.get_db(),
        }
    }
}
