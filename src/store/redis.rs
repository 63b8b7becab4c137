//! The cluster-wide store: one Lua script call per operation over one shared, self-reconnecting
//! connection, every call bounded by the store timeout.
//!
//! A pool that Redis lost (restart without persistence, `FLUSHALL`) answers `nopool`; the store
//! then re-creates it from the last spec it synced and repeats the call, so the caller never sees
//! the loss. `NOSCRIPT` after a restart or `SCRIPT FLUSH` is handled by `invoke_async`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::scripts::Scripts;
use super::{
    AdminState, Chosen, KeyStore, PoolSnapshot, PoolSpec, Report, ReportReceipt, Route,
    SelectRequest, Selection, StateCounts, StoreError, SyncReceipt, Unavailable,
};
use crate::pool::{KeyId, KeyState};

/// How to reach Redis and how long to wait for it.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub url: String,
    pub prefix: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

/// The Redis connection: one multiplexed connection that reconnects in the background.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
}

pub struct RedisStore {
    conn: Conn,
    prefix: String,
    timeout: Duration,
    scripts: Scripts,
    /// The last spec synced per pool, to re-create a pool Redis lost.
    specs: RwLock<HashMap<String, Arc<PoolSpec>>>,
}

/// A script reply flattened to strings (Lua numbers arrive as integers, strings as bulk).
fn words(v: Value) -> Result<Vec<String>, StoreError> {
    let items = match v {
        Value::Array(items) => items,
        other => vec![other],
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::Int(i) => Ok(i.to_string()),
            Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Value::SimpleString(s) => Ok(s),
            Value::Okay => Ok("OK".into()),
            Value::Nil => Ok(String::new()),
            other => Err(StoreError::Script(format!("unexpected reply {other:?}"))),
        })
        .collect()
}

fn num<T: std::str::FromStr>(w: &[String], i: usize) -> Result<T, StoreError> {
    w.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Script(format!("bad reply field {i}: {w:?}")))
}

fn map_err(e: redis::RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Script(e.to_string())
    }
}

impl RedisStore {
    /// Connects lazily: the first call opens the connection, so a replica starts even while
    /// Redis is down.
    pub fn connect(opts: &RedisOptions) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(opts.url.as_str())
            .map_err(|e| StoreError::InvalidArgument(format!("store.redis_url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(opts.timeout))
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(map_err)?;
        Ok(RedisStore {
            conn: Conn::Single(manager),
            prefix: opts.prefix.clone(),
            timeout: opts.timeout,
            scripts: Scripts::new(),
            specs: RwLock::new(HashMap::new()),
        })
    }

    /// `kg:{P}`: KEYS[1] of every script; the hash tag keeps a pool in one Cluster slot.
    pub fn pool_base(&self, pool: &str) -> String {
        format!("{}:{{{}}}", self.prefix, pool)
    }

    async fn eval(&self, script: &Script, pool: &str, args: &[&str]) -> Result<Value, StoreError> {
        let mut inv = script.key(self.pool_base(pool));
        for a in args {
            inv.arg(*a);
        }
        let call = async {
            match &self.conn {
                Conn::Single(c) => inv.invoke_async::<Value>(&mut c.clone()).await,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(map_err),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Runs a script; if Redis lost the pool, re-creates it from config and runs it again.
    async fn eval_pool(
        &self,
        script: &Script,
        pool: &str,
        args: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        let w = words(self.eval(script, pool, args).await?)?;
        if w.first().map(String::as_str) != Some("nopool") {
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
        tracing::warn!(pool, "pool missing from Redis; re-creating it from config");
        self.run_sync(&spec).await?;
        let w = words(self.eval(script, pool, args).await?)?;
        match w.first().map(String::as_str) {
            Some("nopool") => Err(StoreError::UnknownPool(pool.to_string())),
            _ => Ok(w),
        }
    }

    async fn run_sync(&self, spec: &PoolSpec) -> Result<SyncReceipt, StoreError> {
        let mut args = vec![spec.fingerprint()];
        args.extend(spec.sync_args());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let w = words(self.eval(&self.scripts.sync, &spec.name, &refs).await?)?;
        match w.first().map(String::as_str) {
            Some("unchanged") => Ok(SyncReceipt::Unchanged),
            Some("synced") => Ok(SyncReceipt::Synced {
                created: num(&w, 1)?,
                updated: num(&w, 2)?,
                removed: num(&w, 3)?,
            }),
            _ => Err(StoreError::Script(format!("sync reply {w:?}"))),
        }
    }

    /// Loads every script into Redis now (EVALSHA then never pays the NOSCRIPT round trip).
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        for s in self.scripts.all() {
            let call = async {
                match &self.conn {
                    Conn::Single(c) => s.load_async(&mut c.clone()).await,
                }
            };
            tokio::time::timeout(self.timeout * 4, call)
                .await
                .map_err(|_| StoreError::Timeout)?
                .map_err(map_err)?;
        }
        Ok(())
    }

    /// One round trip to Redis (used by readiness checks and the degraded-mode probe).
    pub async fn ping_redis(&self) -> Result<(), StoreError> {
        let call = async {
            match &self.conn {
                Conn::Single(c) => {
                    redis::cmd("PING")
                        .query_async::<String>(&mut c.clone())
                        .await
                }
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map(|_| ()).map_err(map_err),
            Err(_) => Err(StoreError::Timeout),
        }
    }
}

fn now_arg(now: Option<u64>) -> String {
    now.unwrap_or(0).to_string()
}

fn expect_ok(w: &[String], pool: &str, key: &KeyId) -> Result<(), StoreError> {
    match w.first().map(String::as_str) {
        Some("ok") => Ok(()),
        Some("nokey") => Err(StoreError::UnknownKey(key.to_string())),
        Some("nopool") => Err(StoreError::UnknownPool(pool.to_string())),
        _ => Err(StoreError::Script(format!("unexpected reply {w:?}"))),
    }
}

fn parse_selection(w: &[String]) -> Result<Selection, StoreError> {
    match w.first().map(String::as_str) {
        Some("key") => Ok(Selection::Key(Chosen {
            key: w
                .get(1)
                .and_then(|s| KeyId::new(s))
                .ok_or_else(|| StoreError::Script(format!("bad key in {w:?}")))?,
            group: w.get(2).cloned().unwrap_or_default(),
            fallback: w.get(3).map(String::as_str) == Some("1"),
            probe: w.get(4).map(String::as_str) == Some("1"),
        })),
        Some("none") => {
            let earliest: i64 = num(w, 1)?;
            let mut counts = [0u64; 6];
            for (i, c) in counts.iter_mut().enumerate() {
                *c = num::<i64>(w, 3 + i)?.max(0) as u64;
            }
            Ok(Selection::None(Unavailable {
                retry_at_ms: (earliest >= 0).then_some(earliest as u64),
                now_ms: num(w, 2)?,
                counts: StateCounts::from_array(counts),
            }))
        }
        _ => Err(StoreError::Script(format!("unexpected select reply {w:?}"))),
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
        let (now, rand, bucket) = (
            now_arg(req.now_ms),
            req.rand.to_string(),
            bucket.to_string(),
        );
        let mut args: Vec<&str> = vec![&now, &rand, route, &bucket];
        args.extend(req.exclude.iter().map(KeyId::as_str));
        let w = self.eval_pool(&self.scripts.select, pool, &args).await?;
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
        let w = self.eval_pool(&self.scripts.report, pool, &args).await?;
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

    async fn set_state(
        &self,
        pool: &str,
        key: &KeyId,
        state: AdminState,
    ) -> Result<KeyState, StoreError> {
        let args = ["0", key.as_str(), state.as_str()];
        let w = self.eval_pool(&self.scripts.set_state, pool, &args).await?;
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
            .eval_pool(&self.scripts.set_weight, pool, &["0", key.as_str(), &w])
            .await?;
        expect_ok(&reply, pool, key)
    }

    async fn set_group(&self, pool: &str, key: &KeyId, group: &str) -> Result<(), StoreError> {
        let reply = self
            .eval_pool(&self.scripts.set_group, pool, &["0", key.as_str(), group])
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
            .eval_pool(&self.scripts.set_canary, pool, &["0", &p])
            .await?;
        match w.first().map(String::as_str) {
            Some("ok") => Ok(()),
            _ => Err(StoreError::Script(format!("unexpected reply {w:?}"))),
        }
    }

    async fn reset_counters(&self, pool: &str, key: &KeyId) -> Result<(), StoreError> {
        let w = self
            .eval_pool(&self.scripts.reset, pool, &["0", key.as_str()])
            .await?;
        expect_ok(&w, pool, key)
    }

    async fn snapshot(&self, pool: &str, now_ms: Option<u64>) -> Result<PoolSnapshot, StoreError> {
        let now = now_arg(now_ms);
        let w = self
            .eval_pool(&self.scripts.snapshot, pool, &[&now])
            .await?;
        let json = w
            .first()
            .ok_or_else(|| StoreError::Script("empty snapshot".into()))?;
        serde_json::from_str(json).map_err(|e| StoreError::Script(format!("snapshot: {e}")))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.ping_redis().await
    }

    async fn sync(&self, spec: &PoolSpec) -> Result<SyncReceipt, StoreError> {
        self.specs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.name.clone(), Arc::new(spec.clone()));
        self.run_sync(spec).await
    }
}
