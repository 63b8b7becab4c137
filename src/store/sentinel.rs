//! The master of a Sentinel-managed Redis: asked of the Sentinels on first use and again after
//! any sign that it changed.
//!
//! redis-rs does not follow Sentinel's failover notices (its Sentinel client keeps the master it resolved first), so a connection to a
//! demoted master would live on, answering every write with `READONLY`. Instead the cached
//! connection is dropped on `READONLY`, `MASTERDOWN`, `LOADING`, a broken connection or a
//! timeout, and the next call asks the Sentinels again (`SENTINEL MASTERS` → the named master,
//! whose `ROLE` redis-rs checks before handing it out).
//!
//! A forced failover (`SENTINEL FAILOVER`) leaves the old master a master for several seconds
//! (Sentinel waits before it reconfigures it), accepting writes nobody will see. So the store
//! also asks the Sentinels about every probe interval ([`SentinelConn::check_master`]) and
//! moves to the master they name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{RedisError, RedisResult};

use super::connection::{node_url, Generation, Timeouts};
use super::StoreError;

/// The master connection in use.
#[derive(Clone)]
struct Current {
    conn: MultiplexedConnection,
    generation: Generation,
    /// `host:port` of the master it goes to.
    addr: String,
}

pub(crate) struct SentinelConn {
    master: String,
    timeouts: Timeouts,
    /// The Sentinel client; locked while resolving, so a burst of calls resolves once.
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// The master connection in use and its generation; `None` until (re-)resolved. A std
    /// `Mutex`: held only to clone or replace the connection, never across `.await`.
    current: Mutex<Option<Current>>,
    generations: AtomicU64,
}

impl SentinelConn {
    pub fn new(nodes: &[String], master: &str, timeouts: Timeouts) -> Result<Self, StoreError> {
        let urls: Vec<String> = nodes.iter().map(|n| node_url(n)).collect();
        let client =
            SentinelClient::build(urls, master.to_string(), None, SentinelServerType::Master)
                .map_err(|e| StoreError::InvalidArgument(format!("store.sentinels: {e}")))?;
        Ok(SentinelConn {
            master: master.to_string(),
            timeouts,
            sentinels: tokio::sync::Mutex::new(client),
            current: Mutex::new(None),
            generations: AtomicU64::new(0),
        })
    }

    fn cached(&self) -> Option<Current> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The master connection, resolving the master through the Sentinels when there is none.
    pub async fn connection(&self) -> RedisResult<(MultiplexedConnection, Generation)> {
        if let Some(c) = self.cached() {
            return Ok((c.conn, c.generation));
        }
        let mut sentinels = self.sentinels.lock().await;
        if let Some(c) = self.cached() {
            return Ok((c.conn, c.generation));
        }
        let client = sentinels.async_get_client().await?;
        let addr = client.get_connection_info().addr().to_string();
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.timeouts.async_config())
            .await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Current {
            conn: conn.clone(),
            generation,
            addr: addr.clone(),
        });
        tracing::info!(master = %self.master, %addr, "connected to the Redis master named by Sentinel");
        Ok((conn, generation))
    }

    /// Asks the Sentinels who the master is now; if it is not the one connected to, drops the
    /// connection so the next call goes to the new master.
    pub async fn check_master(&self) -> RedisResult<()> {
        let Some(current) = self.cached() else {
            return Ok(());
        };
        let named = {
            let mut sentinels = self.sentinels.lock().await;
            sentinels.async_get_client().await?
        };
        let addr = named.get_connection_info().addr().to_string();
        if addr != current.addr && self.drop_connection(current.generation) {
            tracing::warn!(master = %self.master, old = %current.addr, new = %addr,
                "Sentinel names another master; moving to it");
        }
        Ok(())
    }

    fn drop_connection(&self, generation: Generation) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
            return true;
        }
        false
    }

    /// Forgets the connection of `generation` (not a newer one) after `e`.
    pub fn invalidate(&self, generation: Generation, e: &RedisError) {
        if self.drop_connection(generation) {
            tracing::warn!(master = %self.master, error = %e, "Redis master connection failed; asking Sentinel again");
        }
    }

    /// Forgets the connection of `generation` after a call on it timed out.
    pub fn invalidate_after_timeout(&self, generation: Generation) {
        if self.drop_connection(generation) {
            tracing::warn!(master = %self.master, "Redis master did not answer in time; asking Sentinel again");
        }
    }
}
