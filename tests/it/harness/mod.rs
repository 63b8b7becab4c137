//! Test harness: real redis-server processes, stores built on them, helpers to wait on
//! conditions instead of sleeping.

pub mod exposition;
pub mod fault_proxy;
pub mod gateway;
pub mod load;
pub mod processes;
pub mod redis_server;
pub mod topology;

mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::pool::KeyId;
use keygate::store::memory::MemoryStore;
use keygate::store::redis::{RedisOptions, RedisStore};
use keygate::store::spec::SpecKey;
use keygate::store::{KeyStore, PoolSpec, StorePolicy};

pub use redis_server::RedisServer;

/// README "Budgets": the redis-cli script that reads a key's budget entry (one packed field of
/// `kg:{P}:budget`; KEYS[1] the hash, ARGV[1] the key id) as name, value pairs. The README shows
/// it as a redis-cli command; keep the two the same.
pub const READ_BUDGET: &str = "local b = redis.call('HGET', KEYS[1], ARGV[1]) \
if not b then return {} end \
local v = {struct.unpack('<dddddddddddd', b)} \
local n = {'b_rpm', 'b_tpm', 'b_conc', 'b_rpd', 'b_tpd', 'l_rpm', 'l_tpm', \
'tat_r', 'tat_rd', 'tat_t', 'tat_td', 'n_in'} \
local out = {} \
for i = 1, 12 do out[2 * i - 1] = n[i]; out[2 * i] = string.format('%d', v[i]) end \
return out";

/// A key's budget entry read with [`READ_BUDGET`]: field name -> value.
pub fn read_budget(
    conn: &mut redis::Connection,
    hash: &str,
    key: &str,
) -> std::collections::HashMap<String, i64> {
    let pairs: Vec<String> = redis::cmd("EVAL")
        .arg(READ_BUDGET)
        .arg(1)
        .arg(hash)
        .arg(key)
        .query(conn)
        .expect("the README's budget script runs");
    (pairs.chunks(2))
        .map(|p| (p[0].clone(), p[1].parse().expect("an integer")))
        .collect()
}

pub fn kid(s: &str) -> KeyId {
    KeyId::new(s).expect("valid id")
}

pub fn redis_store(server: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::connect(&RedisOptions {
        url: server.url(),
        prefix: prefix.to_string(),
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
    })
    .expect("redis store")
}

/// A pool spec with keys `(id, weight, group)`.
pub fn spec(name: &str, keys: &[(&str, u32, &str)]) -> PoolSpec {
    PoolSpec {
        name: name.to_string(),
        policy: StorePolicy {
            cooldown_default_ms: 1_000,
            cooldown_max_ms: 60_000,
            breaker_errors: 3,
            breaker_window_ms: 10_000,
            breaker_open_ms: 5_000,
            quota_cooldown_ms: 100_000,
            probe_lease_ms: 2_000,
        },
        canary_group: "canary".into(),
        canary_percent: 0,
        canary_fallback: true,
        keys: keys
            .iter()
            .map(|(id, w, g)| SpecKey {
                id: kid(id),
                weight: *w,
                group: g.to_string(),
                limits: Default::default(),
            })
            .collect(),
        budget: Default::default(),
    }
}

/// One store under test plus whatever keeps it alive.
pub struct Subject {
    pub store: Arc<dyn KeyStore>,
    #[allow(dead_code)] // held for its Drop: the redis-server lives as long as the store
    pub redis: Option<RedisServer>,
}

pub fn memory_subject() -> Subject {
    Subject {
        store: Arc::new(MemoryStore::new()),
        redis: None,
    }
}

pub fn redis_subject() -> Subject {
    let server = RedisServer::start();
    Subject {
        store: Arc::new(redis_store(&server, "kg")),
        redis: Some(server),
    }
}

/// Polls `cond` until it holds, failing after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until_or_explain(limit, what, cond, String::new).await;
}

/// [`wait_until`], and on a timeout also says what `explain` finds (the state that kept the
/// condition false).
pub async fn wait_until_or_explain<F, Fut>(
    limit: Duration,
    what: &str,
    mut cond: F,
    explain: impl Fn() -> String,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what} {}",
            explain()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
