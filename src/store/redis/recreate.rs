//! A pool Redis lost (a restart without persistence, `FLUSHALL`): a script answers `nopool`, and
//! the store re-creates the pool from the last spec it synced (one `sync` for all the callers that
//! find it lost at once), tells its listener (the failover layer, which writes back what it knew),
//! and makes the call again, all within the call's deadline.

use tokio::time::Instant;

use super::super::scripts::Lua;
use super::reply::{parse_sync, words};
use super::RedisStore;
use crate::store::{PoolSpec, StoreError, SyncReceipt};

/// Told the name of each pool this store creates in Redis from its spec because Redis did not
/// have it (lost to a restart or `FLUSHALL`, or never created: the first start). Called at once,
/// on the calling task, before the re-created pool is used; it must not block.
pub type RecreatedListener = Box<dyn Fn(&str) + Send + Sync>;

/// A script's reply, as far as [`RedisStore::on_pool`] reads it: whether it says `nopool`.
pub(super) trait PoolReply {
    fn pool_lost(&self) -> bool;
}

/// A reply's words (`{"nopool"}`).
impl PoolReply for Vec<String> {
    fn pool_lost(&self) -> bool {
        self.first().map(String::as_str) == Some("nopool")
    }
}

/// `select`'s line for one request.
impl PoolReply for String {
    fn pool_lost(&self) -> bool {
        self == "nopool"
    }
}

impl RedisStore {
    /// Sets the one listener told of every pool this store (re-)creates. A store has at most
    /// one: a second is refused.
    pub fn on_recreated(&self, listener: RecreatedListener) -> Result<(), StoreError> {
        self.on_recreated.set(listener).map_err(|_| {
            StoreError::InvalidArgument(
                "this Redis store already has a re-creation listener".into(),
            )
        })
    }

    pub(super) fn tell_recreated(&self, pool: &str) {
        if let Some(listener) = self.on_recreated.get() {
            listener(pool);
        }
    }

    /// Runs a script; if Redis lost the pool, re-creates it from config and runs it again. The
    /// whole of it shares one deadline.
    pub(super) async fn eval_pool<A: AsRef<str>>(
        &self,
        script: &Lua,
        pool: &str,
        args: &[A],
    ) -> Result<Vec<String>, StoreError> {
        let deadline = Instant::now() + self.core.timeout;
        self.on_pool(pool, deadline, || async {
            words(
                self.core
                    .eval(script, &self.core.pool_base(pool), args, deadline)
                    .await?,
            )
        })
        .await
    }

    /// Makes `call` (a script call on `pool`: its words, or `select`'s line) and, if its reply
    /// says Redis lost the pool, re-creates the pool from the last spec synced (one sync for all
    /// the callers that find it lost at once) and makes the call again, all before `deadline`.
    pub(super) async fn on_pool<F, Fut, R>(
        &self,
        pool: &str,
        deadline: Instant,
        call: F,
    ) -> Result<R, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<R, StoreError>>,
        R: PoolReply,
    {
        let lost = |r: &R| r.pool_lost();
        let w = call().await?;
        if !lost(&w) {
            return Ok(w);
        }
        let spec = self
            .specs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(pool)
            .cloned();
        let Some(spec) = spec else {
            return Err(StoreError::UnknownPool(pool.to_string()));
        };
        let _one_sync = tokio::time::timeout_at(deadline, self.resync.lock())
            .await
            .map_err(|_| StoreError::Timeout)?;
        // Another request may have re-created it while this one waited.
        let w = call().await?;
        if !lost(&w) {
            return Ok(w);
        }
        tracing::warn!(pool, "pool missing from Redis; re-creating it from config");
        // Told before the pool exists again, so no snapshot of the empty pool is taken for the
        // last known state.
        self.tell_recreated(pool);
        self.run_sync(&spec, deadline).await?;
        let w = call().await?;
        if lost(&w) {
            return Err(StoreError::UnknownPool(pool.to_string()));
        }
        Ok(w)
    }

    pub(super) async fn run_sync(
        &self,
        spec: &PoolSpec,
        deadline: Instant,
    ) -> Result<SyncReceipt, StoreError> {
        let mut args = vec![spec.fingerprint()];
        args.extend(spec.sync_args());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let w = words(
            self.core
                .eval(
                    &self.core.scripts.sync,
                    &self.core.pool_base(&spec.name),
                    &refs,
                    deadline,
                )
                .await?,
        )?;
        parse_sync(&w)
    }
}
