//! Start-up: config → store → state → server. Kept out of `main` so tests start whole gateways
//! in process on port 0.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::app::{AppState, Gateway};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::{serve, ConnLimits};
use crate::store::instrumented::InstrumentedStore;
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::KeyStore;

/// The store the config asks for: Redis when a URL is set, else the embedded memory store.
pub fn build_store(config: &Config) -> Result<Arc<dyn KeyStore>, String> {
    let s = &config.store;
    match &s.redis_url {
        Some(url) => {
            let opts = RedisOptions {
                url: url.clone(),
                prefix: s.prefix.clone(),
                timeout: Duration::from_millis(s.timeout_ms),
                connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            };
            let store = RedisStore::connect(&opts).map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
        None => Ok(Arc::new(MemoryStore::new())),
    }
}

/// Builds the shared state and syncs every pool into the store (a store that is down now is
/// not fatal: pools are re-created on first use).
pub async fn build_state(
    config: Config,
    config_path: Option<PathBuf>,
) -> Result<Arc<AppState>, String> {
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
    let store: Arc<dyn KeyStore> = Arc::new(InstrumentedStore::new(
        build_store(&config)?,
        metrics.clone(),
    ));
    let gateway = Gateway::from_config(config)?;
    sync_pools(&*store, &gateway).await;
    Ok(Arc::new(AppState {
        gateway: ArcSwap::from_pointee(gateway),
        store,
        metrics,
        tasks: TaskTracker::new(),
        config_path,
        health: Default::default(),
    }))
}

/// Creates or updates every pool of `gateway` in the store.
pub async fn sync_pools(store: &dyn KeyStore, gateway: &Gateway) {
    for pool in gateway.pools.values() {
        match store.sync(&pool.spec).await {
            Ok(r) => tracing::info!(pool = %pool.spec.name, receipt = ?r, "pool synced"),
            Err(e) => {
                tracing::warn!(pool = %pool.spec.name, error = %e, "pool sync failed; will retry on first use")
            }
        }
    }
}

/// Serves until `shutdown`, then drains and flushes background reports.
pub async fn run(state: Arc<AppState>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let server = &state.gateway().config.server;
    let limits = ConnLimits {
        header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
        max_header_bytes: server.max_header_bytes,
        grace: Duration::from_secs(server.shutdown_grace_s),
    };
    serve(
        listener,
        crate::app::router(state.clone()),
        limits,
        shutdown,
    )
    .await;
    state.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), state.tasks.wait()).await;
}
