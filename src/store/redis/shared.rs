//! What every Redis call needs, shared (behind an `Arc`) by the store and the tasks that send
//! coalesced selects: the connection, the scripts, the key prefix and the store timeout.

use std::future::Future;
use std::time::Duration;

use redis::{Script, Value};
use tokio::time::Instant;

use super::super::connection::{Conn, Handle};
use super::super::scripts::Scripts;
use super::super::StoreError;

pub(crate) struct Core {
    pub conn: Conn,
    pub prefix: String,
    pub timeout: Duration,
    pub scripts: Scripts,
}

pub(crate) fn map_err(e: redis::RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Script(e.to_string())
    }
}

impl Core {
    /// `kg:{P}`: KEYS[1] of every script; the hash tag keeps a pool in one Cluster slot.
    pub fn pool_base(&self, pool: &str) -> String {
        format!("{}:{{{}}}", self.prefix, pool)
    }

    /// Runs one script before `deadline`. A failure tells the connection (Sentinel then asks
    /// for the master again).
    pub async fn eval<A: AsRef<str>>(
        &self,
        script: &Script,
        pool: &str,
        args: &[A],
        deadline: Instant,
    ) -> Result<Value, StoreError> {
        let mut inv = script.key(self.pool_base(pool));
        for a in args {
            inv.arg(a.as_ref());
        }
        self.call(deadline, |mut h| async move {
            inv.invoke_async::<Value>(&mut h).await
        })
        .await
    }

    /// Runs one plain command within the store timeout.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.timeout;
        self.call(deadline, |mut h| async move {
            cmd.query_async::<T>(&mut h).await
        })
        .await
    }

    /// Runs `op` on a connection handle before `deadline`; a failure or a timeout is reported
    /// to the connection (Sentinel then asks for the master again).
    pub async fn call<T, F, Fut>(&self, deadline: Instant, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let (handle, generation) = tokio::time::timeout_at(deadline, self.conn.handle())
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(map_err)?;
        match tokio::time::timeout_at(deadline, op(handle)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.conn.failed(generation, &e);
                Err(map_err(e))
            }
            Err(_) => {
                self.conn.timed_out(generation);
                Err(StoreError::Timeout)
            }
        }
    }
}
