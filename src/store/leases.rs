//! This replica's leases on budgeted keys (README.md, "Budgets"), per pool, and the task that
//! renews them with a single `settle` call per pool every third of the pool's lease, so a
//! replica that dies stops holding slots one lease later. The proxy holds and releases them
//! (`crate::proxy::key_budget`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{KeyStore, KeyStoreExt, Settlement};
use crate::pool::KeyId;

/// This replica's live leases, per pool: (key, lease id). A lease id is unique per key, not per
/// pool: it is usually the request's random draw (`lua/lib.lua` budget_spend).
#[derive(Default)]
pub struct Leases {
    live: Mutex<HashMap<String, HashSet<(KeyId, u64)>>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<(KeyId, u64)>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn hold(&self, pool: &str, lease: u64, key: &KeyId) {
        let mut live = self.lock();
        live.entry(pool.to_string())
            .or_default()
            .insert((key.clone(), lease));
    }

    pub(crate) fn release(&self, pool: &str, lease: u64, key: &KeyId) {
        if let Some(p) = self.lock().get_mut(pool) {
            p.remove(&(key.clone(), lease));
        }
    }

    /// Renews every live lease of every pool, one `settle` call per pool.
    async fn renew_all(&self, store: &dyn KeyStore) {
        let pools: Vec<(String, Vec<(KeyId, u64)>)> = (self.lock().iter())
            .filter(|(_, l)| !l.is_empty())
            .map(|(p, l)| (p.clone(), l.iter().cloned().collect()))
            .collect();
        for (pool, renew) in pools {
            let s = Settlement {
                ended: &[],
                renew: &renew,
                now_ms: None,
            };
            if let Err(e) = store.settle(&pool, &s).await {
                tracing::warn!(pool = %pool, error = %e, "lease renewal failed");
            }
        }
    }

    /// Starts the renewal task: every `every` (a third of the shortest lease).
    pub fn start(self: &Arc<Self>, store: Arc<dyn KeyStore>, every: Duration) {
        let me = self.clone();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = me.cancel.cancelled() => return,
                    _ = tick.tick() => me.renew_all(&*store).await,
                }
            }
        });
    }

    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
