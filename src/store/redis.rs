//! The cluster-wide store: one Lua script call per operation over one shared, self-reconnecting
//! connection, every call bounded by the store timeout.
//!
//! A pool that Redis lost (restart without persistence, `FLUSHALL`) answers `nopool`; the store
//! then re-creates it from the last spec it synced and repeats the call (for any call but a
//! rotation op: `Op::is_rotation`), so the caller never sees the loss (and tells the listener of
//! [`RedisStore::on_recreated`], so the failover layer can write back what it knew). The scripts
//! are functions of one library (`redis/shared.rs` `Core::eval`): a Redis that lost it (a restart,
//! `FUNCTION FLUSH`) answers "Function not found", and the call loads it and runs again; on a
//! Redis without Functions, `NOSCRIPT` after a restart or `SCRIPT FLUSH` is handled by
//! `invoke_async`, which loads the script and runs it again.
//!
//! One deadline covers a whole store call, re-creation and script loading included: a dead,
//! hung (`SIGSTOP`) or black-holed Redis never holds a caller longer than `timeout`.
//!
//! Beside this file: `redis/shared.rs` (what every call needs), `coalesce.rs` (selects coalesced
//! per pool), `ops.rs` (each [`Op`] as its script's ARGV), `recreate.rs` (a pool Redis lost),
//! `snapshot.rs` (reading a pool back) and `reply.rs` (every script reply decoded).

mod coalesce;
mod ops;
mod recreate;
mod reply;
mod shared;
mod snapshot;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::connection::{Conn, Endpoint, Timeouts};
use super::scripts::Scripts;
use super::{
    KeyStore, Op, PoolSnapshot, PoolSpec, Receipt, SelectRequest, Selection, StoreError,
    SyncReceipt,
};
use coalesce::{Coalescer, SelectArgs};
pub use recreate::RecreatedListener;
use reply::parse_selection;
use shared::{map_err, Core};

/// How to reach Redis and how long to wait for it.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub url: String,
    pub prefix: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

pub struct RedisStore {
    core: Arc<Core>,
    /// Selects waiting per pool while one is in flight (see `coalesce.rs`).
    selects: Coalescer,
    /// The last spec synced per pool, to re-create a pool Redis lost.
    specs: RwLock<HashMap<String, Arc<PoolSpec>>>,
    /// Told each time this store creates a pool Redis did not have (see `recreate.rs`).
    on_recreated: OnceLock<RecreatedListener>,
    /// Held while a lost pool is re-created: the requests that find it missing at the same
    /// moment wait for one `sync` instead of each sending the whole pool (at 10,000 keys one
    /// sync is a ~1 MB command and ~10 MB of client buffers).
    resync: tokio::sync::Mutex<()>,
}

impl RedisStore {
    /// Connects lazily to one Redis server: the first call opens the connection, so a replica
    /// starts even while Redis is down.
    pub fn connect(opts: &RedisOptions) -> Result<RedisStore, StoreError> {
        RedisStore::connect_to(
            &Endpoint::Url(opts.url.clone()),
            &opts.prefix,
            opts.timeout,
            opts.connect_timeout,
        )
    }

    /// Connects lazily to one server, a Sentinel-managed master or a Cluster.
    pub fn connect_to(
        endpoint: &Endpoint,
        prefix: &str,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        let timeouts = Timeouts {
            response: timeout,
            connect: connect_timeout,
        };
        let core = Arc::new(Core {
            conn: Conn::open(endpoint, timeouts)?,
            prefix: prefix.to_string(),
            timeout,
            scripts: Scripts::new(),
            functions: AtomicBool::new(true),
        });
        Ok(RedisStore {
            selects: Coalescer::new(core.clone()),
            core,
            specs: RwLock::new(HashMap::new()),
            on_recreated: OnceLock::new(),
            resync: tokio::sync::Mutex::new(()),
        })
    }

    /// The deadline of one call: the store timeout.
    pub fn timeout(&self) -> Duration {
        self.core.timeout
    }

    pub fn pool_base(&self, pool: &str) -> String {
        self.core.pool_base(pool)
    }

    /// Loads the script library into Redis now (on a Cluster, every master), so no call pays
    /// the load; on a Redis without Functions, every script for EVALSHA (which then never pays
    /// the NOSCRIPT round trip).
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.core.timeout * 4;
        if self.core.functions.load(Ordering::Relaxed) && self.core.load_library(deadline).await? {
            return Ok(());
        }
        for s in self.core.scripts.all() {
            let s = &s.script;
            self.core
                .call(deadline, |mut h| async move { s.load_async(&mut h).await })
                .await?;
        }
        Ok(())
    }

    /// Follows a topology change no call noticed (a Sentinel that names a new master while the
    /// old one still answers). Bounded by four store timeouts.
    pub async fn check_topology(&self) -> Result<(), StoreError> {
        tokio::time::timeout(self.core.timeout * 4, self.core.conn.check_topology())
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(map_err)
    }

    /// One round trip to Redis (used by readiness checks and the degraded-mode probe).
    pub async fn ping_redis(&self) -> Result<(), StoreError> {
        self.core
            .query::<String>(redis::cmd("PING"))
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl KeyStore for RedisStore {
    async fn select(&self, pool: &str, req: &SelectRequest<'_>) -> Result<Selection, StoreError> {
        let args = SelectArgs::new(req);
        let now = req.now_ms.unwrap_or(0);
        let deadline = Instant::now() + self.core.timeout;
        let w = self
            .on_pool(pool, deadline, || {
                self.selects.select(pool, now, &args, deadline)
            })
            .await?;
        parse_selection(&w)
    }

    async fn apply(&self, pool: &str, op: Op<'_>) -> Result<Receipt, StoreError> {
        self.run_op(pool, &op).await
    }

    /// Paged: see [`RedisStore::snapshot_versioned`] and the header of `lua/snapshot.lua`.
    async fn snapshot(&self, pool: &str, now_ms: Option<u64>) -> Result<PoolSnapshot, StoreError> {
        self.snapshot_versioned(pool, now_ms).await.map(|(s, _)| s)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_redis().await
    }

    async fn sync(&self, spec: &PoolSpec) -> Result<SyncReceipt, StoreError> {
        self.specs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.name.clone(), Arc::new(spec.clone()));
        let receipt = self
            .run_sync(spec, Instant::now() + self.core.timeout)
            .await?;
        if let SyncReceipt::Synced { created, .. } = receipt {
            if created > 0 && created as usize == spec.keys.len() {
                self.tell_recreated(&spec.name);
            }
        }
        Ok(receipt)
    }
}
