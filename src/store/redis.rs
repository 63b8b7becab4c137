//! The cluster-wide store: one Lua script call per operation over one shared, self-reconnecting
//! connection, every call bounded by the store timeout.
//!
//! A pool that Redis lost (restart without persistence, `FLUSHALL`) answers `nopool`; the store
//! then re-creates it from the last spec it synced and repeats the call, so the caller never sees
//! the loss (and notes the pool in [`RedisStore::recreated_pools`] so the failover layer can
//! write back what it knew). `NOSCRIPT` after a restart or `SCRIPT FLUSH` is handled by
//! `invoke_async`, which loads the script and runs it again.
//!
//! One deadline covers a whole store call, re-creation and script loading included: a dead,
//! hung (`SIGSTOP`) or black-holed Redis never holds a caller longer than `timeout`.
//!
//! Beside this file: `redis/shared.rs` (what every call needs), `coalesce.rs` (selects coalesced
//! per pool), `recreate.rs` (a pool Redis lost), `snapshot.rs` (reading a pool back) and
//! `reply.rs` (script replies parsed).

mod coalesce;
mod recreate;
mod reply;
mod rotation;
mod shared;
mod snapshot;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::connection::{Conn, Endpoint, Timeouts};
use super::scripts::Scripts;
use super::{
    AdminState, BatchReceipt, KeyStore, PoolSnapshot, PoolSpec, Report, ReportReceipt, Route,
    SelectRequest, Selection, StoreError, SuccessBatch, SyncReceipt,
};
use crate::pool::{KeyId, KeyState};
use crate::rotation::{RotationOp, RotationReply};
use coalesce::Coalescer;
use reply::{expect_ok, now_arg, num, parse_selection};
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
    /// Pools this store (re-)created from their spec since the set was last cleared.
    recreated: Mutex<HashSet<String>>,
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
        });
        Ok(RedisStore {
            selects: Coalescer::new(core.clone()),
            core,
            specs: RwLock::new(HashMap::new()),
            recreated: Mutex::new(HashSet::new()),
            resync: tokio::sync::Mutex::new(()),
        })
    }

    /// The deadline of one call: the store timeout.
    pub fn timeout(&self) -> Duration {
        self.core.timeout
    }

    /// Pools this store created in Redis from their spec because Redis did not have them
    /// (a restart without persistence, `FLUSHALL`, or the first start), not yet cleared.
    pub fn recreated_pools(&self) -> Vec<String> {
        let set = self.recreated.lock().unwrap_or_else(|e| e.into_inner());
        set.iter().cloned().collect()
    }

    /// Whether any pool waits in [`RedisStore::recreated_pools`].
    pub fn has_recreated(&self) -> bool {
        let set = self.recreated.lock().unwrap_or_else(|e| e.into_inner());
        !set.is_empty()
    }

    pub fn is_recreated(&self, pool: &str) -> bool {
        let set = self.recreated.lock().unwrap_or_else(|e| e.into_inner());
        set.contains(pool)
    }

    /// Forgets that `pool` was re-created (its lost state was written back, or nothing was).
    pub fn clear_recreated(&self, pool: &str) {
        let mut set = self.recreated.lock().unwrap_or_else(|e| e.into_inner());
        set.remove(pool);
    }

    pub fn pool_base(&self, pool: &str) -> String {
        self.core.pool_base(pool)
    }

    /// Loads every script into Redis now (EVALSHA then never pays the NOSCRIPT round trip; on a
    /// Cluster, every node gets them).
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.core.timeout * 4;
        for s in self.core.scripts.all() {
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
        let (route, bucket) = match req.route {
            Route::Bucket(b) => ("bucket", b),
            Route::Canary => ("canary", 0),
            Route::Stable => ("stable", 0),
        };
        let now = now_arg(req.now_ms);
        let mut args = Vec::with_capacity(4 + req.exclude.len());
        args.extend([
            req.rand.to_string(),
            route.to_string(),
            bucket.to_string(),
            req.exclude.len().to_string(),
        ]);
        args.extend(req.exclude.iter().map(|k| k.as_str().to_string()));
        let deadline = Instant::now() + self.core.timeout;
        let w = self
            .on_pool(pool, deadline, || {
                self.selects.select(pool, &now, &args, deadline)
            })
            .await?;
        parse_selection(&w)
    }

    async fn report(&self, pool: &str, r: &Report<'_>) -> Result<ReportReceipt, StoreError> {
        let now = now_arg(r.now_ms);
        let hint = r
            .cooldown_ms
            .map_or(-1, |h| h.min(i64::MAX as u64) as i64)
            .to_string();
        let status = r.http_status.to_string();
        let probe = if r.probe { "1" } else { "0" };
        let args = [
            now.as_str(),
            r.key.as_str(),
            r.outcome.as_str(),
            &hint,
            &status,
            probe,
        ];
        let w = self
            .eval_pool(&self.core.scripts.report, pool, &args)
            .await?;
        expect_ok(&w, pool, r.key)?;
        Ok(ReportReceipt {
            state: w
                .get(1)
                .and_then(|s| KeyState::parse(s))
                .ok_or_else(|| StoreError::Script(format!("bad state in {w:?}")))?,
            changed: w.get(2).map(String::as_str) == Some("1"),
            cooldown_until_ms: num(&w, 3)?,
            now_ms: num(&w, 4)?,
        })
    }

    async fn report_successes(
        &self,
        pool: &str,
        batch: &SuccessBatch<'_>,
    ) -> Result<BatchReceipt, StoreError> {
        let mut owned = Vec::with_capacity(1 + batch.keys.len() * 3);
        owned.push(now_arg(batch.now_ms));
        for k in batch.keys {
            owned.push(k.count.to_string());
            owned.push(k.http_status.to_string());
            owned.push(k.age_ms.to_string());
        }
        let mut args: Vec<&str> = Vec::with_capacity(1 + batch.keys.len() * 4);
        args.push(&owned[0]);
        for (i, k) in batch.keys.iter().enumerate() {
            args.push(k.key.as_str());
            args.extend(owned[1 + i * 3..4 + i * 3].iter().map(String::as_str));
        }
        let w = self
            .eval_pool(&self.core.scripts.report_batch, pool, &args)
            .await?;
        match w.first().map(String::as_str) {
            Some("ok") => Ok(BatchReceipt {
                applied: num(&w, 1)?,
                held: num(&w, 2)?,
                now_ms: num(&w, 3)?,
            }),
            _ => Err(StoreError::Script(format!("unexpected reply {w:?}"))),
        }
    }

    async fn set_state(
        &self,
        pool: &str,
        key: &KeyId,
        state: AdminState,
    ) -> Result<KeyState, StoreError> {
        let args = ["0", key.as_str(), state.as_str()];
        let w = self
            .eval_pool(&self.core.scripts.set_state, pool, &args)
            .await?;
        expect_ok(&w, pool, key)?;
        w.get(1)
            .and_then(|s| KeyState::parse(s))
            .ok_or_else(|| StoreError::Script(format!("bad state in {w:?}")))
    }

    async fn set_weight(&self, pool: &str, key: &KeyId, weight: u32) -> Result<(), StoreError> {
        if weight > 1000 {
            return Err(StoreError::InvalidArgument(
                "weight must be 0..=1000".into(),
            ));
        }
        let w = weight.to_string();
        let reply = self
            .eval_pool(
                &self.core.scripts.set_weight,
                pool,
                &["0", key.as_str(), &w],
            )
            .await?;
        expect_ok(&reply, pool, key)
    }

    async fn set_group(&self, pool: &str, key: &KeyId, group: &str) -> Result<(), StoreError> {
        let reply = self
            .eval_pool(
                &self.core.scripts.set_group,
                pool,
                &["0", key.as_str(), group],
            )
            .await?;
        expect_ok(&reply, pool, key)
    }

    async fn set_canary(&self, pool: &str, percent: u8) -> Result<(), StoreError> {
        if percent > 100 {
            return Err(StoreError::InvalidArgument(
                "percent must be 0..=100".into(),
            ));
        }
        let p = percent.to_string();
        let w = self
            .eval_pool(&self.core.scripts.set_canary, pool, &["0", &p])
            .await?;
        match w.first().map(String::as_str) {
            Some("ok") => Ok(()),
            _ => Err(StoreError::Script(format!("unexpected reply {w:?}"))),
        }
    }

    async fn reset_counters(&self, pool: &str, key: &KeyId) -> Result<(), StoreError> {
        let w = self
            .eval_pool(&self.core.scripts.reset, pool, &["0", key.as_str()])
            .await?;
        expect_ok(&w, pool, key)
    }

    /// Paged: see [`RedisStore::snapshot_versioned`] and the header of `lua/snapshot.lua`.
    async fn snapshot(&self, pool: &str, now_ms: Option<u64>) -> Result<PoolSnapshot, StoreError> {
        self.snapshot_versioned(pool, now_ms).await.map(|(s, _)| s)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_redis().await
    }

    async fn rotation(&self, pool: &str, op: RotationOp) -> Result<RotationReply, StoreError> {
        self.rotation_op(pool, op).await
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
                self.mark_recreated(&spec.name);
            }
        }
        Ok(receipt)
    }
}
