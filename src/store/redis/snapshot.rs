//! Reading a pool back from Redis: its change counter, and a snapshot page by page.

use std::collections::BTreeMap;

use super::reply::{now_arg, parse_snapshot_page};
use super::RedisStore;
use crate::store::{KeyRecord, PoolSnapshot, StoreError};

/// Ids per `snapshot.lua` page (the SSCAN COUNT hint). A page of 128 keys costs Redis 1.5-3 ms
/// (SLOWLOG, `store_snapshot` tests), so a snapshot of a 10,000-key pool, about 80 pages, never
/// holds Redis's one thread longer than that at a time.
const SNAPSHOT_PAGE: &str = "128";

impl RedisStore {
    /// The pool's change counter (meta field `ver`, bumped by every script that changes what a
    /// snapshot shows, counters aside): one `HMGET`, no script. `None`: Redis has no such pool.
    pub async fn pool_version(&self, pool: &str) -> Result<Option<u64>, StoreError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(format!("{}:meta", self.pool_base(pool)))
            .arg("ver")
            .arg("layout");
        let (ver, layout) = self
            .core
            .query::<(Option<u64>, Option<String>)>(cmd)
            .await?;
        Ok(layout.map(|_| ver.unwrap_or(0)))
    }

    /// How many replicas said they were alive (`kg:replicas`, written by
    /// `reload_bus::ReloadBus::heartbeat`) within `within` of this replica's clock.
    pub async fn live_replicas(&self, within: std::time::Duration) -> Result<u64, StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut cmd = redis::cmd("ZCOUNT");
        cmd.arg(format!("{}:replicas", self.core.prefix))
            .arg(now.saturating_sub(within.as_millis() as u64))
            .arg("+inf");
        self.core.query::<u64>(cmd).await
    }

    /// A snapshot read page by page (`lua/snapshot.lua`), each page one script call with its
    /// own deadline, plus the pool's change counter as the first page saw it (a later change,
    /// even one made by a later page's recoveries, moves the counter past it). Ids SSCAN
    /// returned twice keep their later read.
    pub async fn snapshot_versioned(
        &self,
        pool: &str,
        now_ms: Option<u64>,
    ) -> Result<(PoolSnapshot, u64), StoreError> {
        let mut now = now_arg(now_ms);
        let mut cursor = "0".to_string();
        let mut head = None;
        let mut keys: BTreeMap<String, KeyRecord> = BTreeMap::new();
        loop {
            let args = [now.as_str(), cursor.as_str(), SNAPSHOT_PAGE];
            let w = self
                .eval_pool(&self.core.scripts.snapshot, pool, &args)
                .await?;
            let mut page = parse_snapshot_page(&w)?;
            keys.extend(page.body.keys.drain(..).map(|k| (k.id.clone(), k)));
            if head.is_none() {
                now = page.body.now_ms.to_string();
                head = Some(page.body);
            }
            if page.cursor == "0" {
                break;
            }
            cursor = page.cursor;
        }
        let head = head.ok_or_else(|| StoreError::Script("empty snapshot".into()))?;
        let snapshot = PoolSnapshot {
            now_ms: head.now_ms,
            canary_group: head.canary_group,
            canary_percent: head.canary_percent,
            keys: keys.into_values().collect(),
        };
        Ok((snapshot, head.ver))
    }
}
