//! What every Redis call needs, shared (behind an `Arc`) by the store and the tasks that send
//! coalesced selects: the connection, the scripts, the key prefix and the store timeout.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::{RedisError, Value};
use tokio::time::Instant;

use super::super::connection::{Conn, Handle};
use super::super::scripts::{Lua, Scripts};
use super::super::StoreError;

pub(crate) struct Core {
    pub conn: Conn,
    pub prefix: String,
    pub timeout: Duration,
    pub scripts: Scripts,
    /// Whether scripts run as functions of the library (`FCALL`); false once this Redis said it
    /// has no Functions (or may not load them), and from then on they go by `EVALSHA`.
    pub functions: AtomicBool,
}

/// Why a call failed: Redis answered an error, or the deadline passed.
enum Failure {
    Redis(RedisError),
    Timeout,
}

impl Failure {
    fn into_store(self) -> StoreError {
        match self {
            Failure::Redis(e) => map_err(e),
            Failure::Timeout => StoreError::Timeout,
        }
    }
}

/// `FCALL` of a function this Redis does not hold: it restarted empty, or `FUNCTION FLUSH`.
fn function_missing(e: &RedisError) -> bool {
    e.to_string().contains("Function not found")
}

/// This Redis cannot run the library: no Functions before 7.0 (`unknown command`), an ACL that
/// forbids `FUNCTION` or `FCALL` (`NOPERM`), or a load it refused.
fn no_functions(e: &RedisError) -> bool {
    let text = e.to_string();
    text.contains("unknown command")
        || text.contains("NOPERM")
        || text.contains("Error registering functions")
        || text.contains("Error compiling function")
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

    /// Runs one script before `deadline`: `FCALL` of its function, loading the library first
    /// when Redis does not hold it; `EVALSHA` (which loads the script on `NOSCRIPT`) on a
    /// Redis without Functions. A failure tells the connection (Sentinel then asks for the
    /// master again). `base` is the pool's [`Core::pool_base`] (a coalesced select's queue
    /// keeps its own, made once).
    pub async fn eval<A: AsRef<str>>(
        &self,
        lua: &Lua,
        base: &str,
        args: &[A],
        deadline: Instant,
    ) -> Result<Value, StoreError> {
        if self.functions.load(Ordering::Relaxed) {
            // Sized once: growing the command's buffers argument by argument cost about 2,000
            // instructions a request (BENCHMARKS.md, "Where a request's CPU goes").
            let bytes: usize = args.iter().map(|a| a.as_ref().len()).sum();
            let mut cmd = redis::Cmd::with_capacity(
                4 + args.len(),
                8 + lua.function.len() + base.len() + bytes,
            );
            cmd.arg("FCALL").arg(&lua.function).arg(1).arg(base);
            for a in args {
                cmd.arg(a.as_ref());
            }
            let mut loaded = false;
            loop {
                let cmd = &cmd;
                match self
                    .try_call(deadline, |mut h| async move {
                        cmd.query_async::<Value>(&mut h).await
                    })
                    .await
                {
                    Ok(v) => return Ok(v),
                    Err(Failure::Redis(e)) if function_missing(&e) && !loaded => {
                        loaded = true;
                        match self.load_library(deadline).await {
                            Ok(true) => continue,
                            Ok(false) => break,
                            Err(e) => return Err(e),
                        }
                    }
                    Err(Failure::Redis(e)) if no_functions(&e) => {
                        self.stop_functions(&e);
                        break;
                    }
                    Err(f) => return Err(f.into_store()),
                }
            }
        }
        let mut inv = lua.script.key(base);
        for a in args {
            inv.arg(a.as_ref());
        }
        self.call(deadline, |mut h| async move {
            inv.invoke_async::<Value>(&mut h).await
        })
        .await
    }

    /// Loads the library (`FUNCTION LOAD REPLACE`: on a Cluster, every master). Ok(false): this
    /// Redis cannot hold it, and scripts go by `EVALSHA` from now on.
    pub async fn load_library(&self, deadline: Instant) -> Result<bool, StoreError> {
        let lib = &self.scripts.library;
        let loaded = self
            .try_call(deadline, |mut h| async move {
                redis::cmd("FUNCTION")
                    .arg("LOAD")
                    .arg("REPLACE")
                    .arg(&lib.code)
                    .query_async::<String>(&mut h)
                    .await
            })
            .await;
        match loaded {
            Ok(_) => {
                tracing::debug!(library = %lib.name, "loaded the script library");
                Ok(true)
            }
            Err(Failure::Redis(e)) if no_functions(&e) => {
                self.stop_functions(&e);
                Ok(false)
            }
            Err(f) => Err(f.into_store()),
        }
    }

    fn stop_functions(&self, e: &RedisError) {
        if self.functions.swap(false, Ordering::Relaxed) {
            tracing::info!(
                error = %e,
                "Redis cannot run the script library (Functions need Redis 7 and the FUNCTION \
                 and FCALL commands); running the scripts with EVALSHA"
            );
        }
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
        self.try_call(deadline, op)
            .await
            .map_err(Failure::into_store)
    }

    /// [`Core::call`], with Redis's error as it came.
    async fn try_call<T, F, Fut>(&self, deadline: Instant, op: F) -> Result<T, Failure>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let (handle, generation) = tokio::time::timeout_at(deadline, self.conn.handle())
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(Failure::Redis)?;
        match tokio::time::timeout_at(deadline, op(handle)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.conn.failed(generation, &e);
                Err(Failure::Redis(e))
            }
            Err(_) => {
                self.conn.timed_out(generation);
                Err(Failure::Timeout)
            }
        }
    }
}
