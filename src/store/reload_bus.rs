//! Cluster-wide reload through Redis: a reload asked of one replica reaches every replica that
//! shares its `store.redis_url`, and the one that was asked collects their answers.
//!
//! Redis keys (the store's prefix, `kg` by default; no `{pool}` hash tag, so never a pool's):
//! - `kg:reload:gen` — a counter, incremented once per cluster-wide reload.
//! - `kg:reload:req:<gen>` — JSON `{"from": replica, "config_hash": ...}`, expires in 60 s.
//! - `kg:reload:ans:<gen>` — hash replica id → JSON [`ReplicaAnswer`], expires in 60 s.
//! - `kg:replicas` — sorted set replica id → last heartbeat (ms, the replica's clock), so the
//!   replica that asked knows whose answers to wait for.
//!
//! Every replica polls `kg:reload:gen` every [`POLL`]; a new generation makes it re-read its
//! own config file and write its answer. A replica whose file's hash differs from the asking
//! replica's says so in its answer and its log. The asking replica waits at most
//! [`ANSWER_DEADLINE`] for the replicas seen in the last [`ALIVE_WITHIN`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

/// How often a replica checks for a cluster-wide reload (and says it is alive).
pub const POLL: Duration = Duration::from_millis(500);
/// How long the asking replica waits for the others' answers.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(5);
/// A replica that said it was alive within this long is waited for.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(10);
/// How long requests and answers stay in Redis.
const KEEP_S: u64 = 60;
/// A replica silent this long is dropped from `kg:replicas` (replicas come and go).
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// The deadline of one Redis call of this module.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// One replica's answer to a reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaAnswer {
    pub replica: String,
    /// Short SHA-256 of the config file this replica read (empty when it could not read it).
    pub config_hash: String,
    pub ok: bool,
    /// Every problem, when the reload was refused (the replica kept its running config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The file differs from the one of the replica that asked.
    #[serde(default)]
    pub differs_from_requester: bool,
}

#[derive(Serialize, Deserialize)]
struct ReloadRequest {
    from: String,
    config_hash: String,
}

/// This replica's link to the others: its id and a Redis connection made on demand.
pub struct ReloadBus {
    pub replica: String,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    prefix: String,
}

/// A name for this replica: `KEYGATE_REPLICA_ID`, else the host name (a pod's name) and the
/// process id.
pub fn replica_id() -> String {
    if let Some(id) = std::env::var("KEYGATE_REPLICA_ID")
        .ok()
        .filter(|s| !s.is_empty())
    {
        return id;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "keygate".to_string());
    format!("{host}-{}", std::process::id())
}

fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as u64)
}

impl ReloadBus {
    /// `None` when the config names no plain `redis_url` (the embedded store has one replica;
    /// Sentinel and Cluster deployments reload each replica on its own).
    pub fn new(store: &crate::config::StoreConfig) -> Option<ReloadBus> {
        let client = redis::Client::open(store.redis_url.as_deref()?).ok()?;
        Some(ReloadBus {
            replica: replica_id(),
            client,
            conn: tokio::sync::Mutex::new(None),
            prefix: store.prefix.clone(),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// Runs one command with a deadline, connecting first when needed; a failure drops the
    /// connection so the next call reconnects.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, String> {
        let mut slot = self.conn.lock().await;
        if slot.is_none() {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CALL_TIMEOUT))
                .set_response_timeout(Some(CALL_TIMEOUT));
            let connect = self
                .client
                .get_multiplexed_async_connection_with_config(&config);
            let conn = tokio::time::timeout(CALL_TIMEOUT, connect).await;
            *slot = Some(
                conn.map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| e.to_string())?,
            );
        }
        let Some(conn) = slot.as_mut() else {
            return Err("no connection".to_string());
        };
        match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async::<T>(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                *slot = None;
                Err(e.to_string())
            }
            Err(_) => {
                *slot = None;
                Err("timed out".to_string())
            }
        }
    }

    /// The current generation, and a heartbeat saying this replica is alive (forgetting the
    /// replicas silent for [`FORGET_AFTER`]).
    pub async fn heartbeat(&self) -> Result<u64, String> {
        let now = now_ms();
        let mut alive = redis::cmd("ZADD");
        alive.arg(self.key("replicas")).arg(now).arg(&self.replica);
        self.query::<i64>(&alive).await?;
        let before = now.saturating_sub(FORGET_AFTER.as_millis() as u64);
        let mut forget = redis::cmd("ZREMRANGEBYSCORE");
        forget.arg(self.key("replicas")).arg(0).arg(before);
        self.query::<i64>(&forget).await?;
        let generation: Option<u64> = self
            .query(redis::cmd("GET").arg(self.key("reload:gen")))
            .await?;
        Ok(generation.unwrap_or(0))
    }

    /// Who asked for reload `generation`, and with which file; `None` once it expired.
    pub async fn request(&self, generation: u64) -> Result<Option<(String, String)>, String> {
        let key = self.key(&format!("reload:req:{generation}"));
        let raw: Option<String> = self.query(redis::cmd("GET").arg(key)).await?;
        Ok(raw
            .and_then(|r| serde_json::from_str::<ReloadRequest>(&r).ok())
            .map(|r| (r.from, r.config_hash)))
    }

    /// Writes this replica's answer to reload `generation`.
    pub async fn answer(&self, generation: u64, answer: &ReplicaAnswer) -> Result<(), String> {
        let key = self.key(&format!("reload:ans:{generation}"));
        let json = serde_json::to_string(answer).map_err(|e| e.to_string())?;
        let mut set = redis::cmd("HSET");
        set.arg(&key).arg(&self.replica).arg(json);
        self.query::<i64>(&set).await?;
        self.query::<i64>(redis::cmd("EXPIRE").arg(&key).arg(KEEP_S))
            .await?;
        Ok(())
    }

    /// Asks every replica to reload (this one has already: `own` is its answer), and collects
    /// the answers of the replicas alive now, waiting at most [`ANSWER_DEADLINE`]. A replica
    /// that did not answer in time is listed with `ok: false`.
    pub async fn reload_everywhere(
        &self,
        own: ReplicaAnswer,
    ) -> Result<Vec<ReplicaAnswer>, String> {
        let generation: u64 = self
            .query(redis::cmd("INCR").arg(self.key("reload:gen")))
            .await?;
        self.answer(generation, &own).await?;
        let request = ReloadRequest {
            from: self.replica.clone(),
            config_hash: own.config_hash.clone(),
        };
        let json = serde_json::to_string(&request).map_err(|e| e.to_string())?;
        let req_key = self.key(&format!("reload:req:{generation}"));
        let mut set = redis::cmd("SET");
        set.arg(req_key).arg(json).arg("EX").arg(KEEP_S);
        self.query::<String>(&set).await?;
        let since = now_ms().saturating_sub(ALIVE_WITHIN.as_millis() as u64);
        let mut alive_cmd = redis::cmd("ZRANGEBYSCORE");
        alive_cmd.arg(self.key("replicas")).arg(since).arg("+inf");
        let alive: Vec<String> = self.query(&alive_cmd).await?;
        let ans_key = self.key(&format!("reload:ans:{generation}"));
        let deadline = tokio::time::Instant::now() + ANSWER_DEADLINE;
        let mut answers: BTreeMap<String, String> = BTreeMap::new();
        loop {
            answers = self
                .query(redis::cmd("HGETALL").arg(&ans_key))
                .await
                .unwrap_or(answers);
            let all_in = alive.iter().all(|r| answers.contains_key(r));
            if all_in || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut out: Vec<ReplicaAnswer> = (answers.values())
            .filter_map(|a| serde_json::from_str(a).ok())
            .collect();
        for missing in alive.iter().filter(|r| !answers.contains_key(*r)) {
            out.push(ReplicaAnswer {
                replica: missing.clone(),
                config_hash: String::new(),
                ok: false,
                error: Some(format!("no answer within {} s", ANSWER_DEADLINE.as_secs())),
                differs_from_requester: false,
            });
        }
        out.sort_by(|a, b| a.replica.cmp(&b.replica));
        Ok(out)
    }
}
