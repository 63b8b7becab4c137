//! A Redis Cluster, reached through its seed nodes. The cluster connection routes each script by
//! its first key, the pool base `kg:{P}`: every key a script touches carries the same `{P}` hash
//! tag, so a pool lives in one slot and no script meets `CROSSSLOT`. `SCRIPT LOAD` goes to every
//! node (so `invoke_async`'s reload after `NOSCRIPT` covers the node that asked); `MOVED`, slot
//! refreshes and reconnects are the cluster connection's own work.

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::RedisResult;
use tokio::sync::OnceCell;

use super::connection::{node_url, Timeouts};
use super::StoreError;

pub(crate) struct ClusterConn {
    client: ClusterClient,
    /// Connected on first use; a failed or abandoned attempt is tried again by the next call.
    conn: OnceCell<ClusterConnection>,
}

impl ClusterConn {
    pub fn new(nodes: &[String], t: Timeouts) -> Result<Self, StoreError> {
        let urls: Vec<String> = nodes.iter().map(|n| node_url(n)).collect();
        let client = ClusterClientBuilder::new(urls)
            .connection_timeout(t.connect)
            .response_timeout(t.response)
            // Retries (MOVED, a reconnect) stay inside the store timeout the caller applies.
            .retries(3)
            .min_retry_wait(5)
            .max_retry_wait(50)
            .build()
            .map_err(|e| StoreError::InvalidArgument(format!("store.cluster_nodes: {e}")))?;
        Ok(ClusterConn {
            client,
            conn: OnceCell::new(),
        })
    }

    pub async fn connection(&self) -> RedisResult<ClusterConnection> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let c = self.client.get_async_connection().await?;
                tracing::info!("connected to the Redis Cluster");
                Ok::<_, redis::RedisError>(c)
            })
            .await?;
        Ok(c.clone())
    }
}
