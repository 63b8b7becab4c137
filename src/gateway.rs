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
use crate::proxy::successes::SuccessBatcher;
use crate::server::{serve, ConnLimits};
use crate::store::failover::{FailoverOptions, FailoverStore};
use crate::store::instrumented::InstrumentedStore;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{Endpoint, KeyStore};

/// Which Redis the config names, if any.
fn redis_endpoint(s: &crate::config::StoreConfig) -> Option<Endpoint> {
    if let Some(url) = &s.redis_url {
        return Some(Endpoint::Url(url.clone()));
    }
    if let (false, Some(master)) = (s.sentinels.is_empty(), &s.sentinel_master) {
        return Some(Endpoint::Sentinel {
            nodes: s.sentinels.clone(),
            master: master.clone(),
        });
    }
    (!s.cluster_nodes.is_empty()).then(|| Endpoint::Cluster {
        nodes: s.cluster_nodes.clone(),
    })
}

/// The store the config asks for: Redis (one server, Sentinel or Cluster) behind the failover
/// layer that answers from memory while Redis is unreachable; without Redis, the embedded memory
/// store. Must run inside the Tokio runtime (the failover layer starts its probe task).
pub fn build_store(
    config: &Config,
    metrics: Option<Arc<Metrics>>,
) -> Result<Arc<dyn KeyStore>, String> {
    let s = &config.store;
    let Some(endpoint) = redis_endpoint(s) else {
        return Ok(Arc::new(MemoryStore::new()));
    };
    let redis = RedisStore::connect_to(
        &endpoint,
        &s.prefix,
        Duration::from_millis(s.timeout_ms),
        Duration::from_millis(s.connect_timeout_ms),
    )
    .map_err(|e| e.to_string())?;
    let store = FailoverStore::new(Arc::new(redis), FailoverOptions::from_config(s), metrics)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(store))
}

/// Builds the shared state and syncs every pool into the store (a store that is down now is
/// not fatal: pools are re-created on first use).
pub async fn build_state(
    config: Config,
    config_path: Option<PathBuf>,
) -> Result<Arc<AppState>, String> {
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
    let store: Arc<dyn KeyStore> = Arc::new(InstrumentedStore::new(
        build_store(&config, Some(metrics.clone()))?,
        metrics.clone(),
    ));
    let flush = Duration::from_millis(config.store.report_flush_ms);
    let successes = SuccessBatcher::new(store.clone(), flush);
    let gateway = Gateway::from_config(config)?;
    sync_pools(&*store, &gateway).await;
    Ok(Arc::new(AppState {
        gateway: ArcSwap::from_pointee(gateway),
        store,
        metrics,
        tasks: TaskTracker::new(),
        successes,
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

/// How often a serving replica hands freed heap pages back to the OS.
const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Returns the heap's free pages to the OS. glibc's malloc keeps memory freed in the middle of
/// its heap resident; at start-up (a 10,000-key config, its sync, the first snapshots) and after
/// a `/metrics` render of a large pool that is tens of MB no request needs any more
/// (BENCHMARKS.md, "Resident memory"). `malloc_trim` walks glibc's free lists only: it takes
/// well under a millisecond here. With jemalloc, the binary's default allocator, Rust's heap is
/// not glibc's: jemalloc's background thread returns free pages by itself (`src/main.rs`), and
/// this call only trims what C code allocated from glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only touches glibc's own heap structures.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Serves until `shutdown`, then drains, writes the buffered successes and flushes background
/// reports. A gateway started from a config file also reloads it on SIGHUP until then.
pub async fn run(state: Arc<AppState>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let server = &state.gateway().config.server;
    let limits = ConnLimits {
        header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
        max_header_bytes: server.max_header_bytes,
        grace: Duration::from_secs(server.shutdown_grace_s),
    };
    let (stop_reloads, reloads_stopped) = tokio::sync::oneshot::channel::<()>();
    let reloader = match state.config_path {
        Some(_) => crate::reload::spawn_sighup_reloader(state.clone(), async move {
            let _ = reloads_stopped.await;
        }),
        None => None,
    };
    release_free_memory();
    let trimmer = tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            release_free_memory();
        }
    });
    let (stop_rotation, rotation_stopped) = tokio::sync::oneshot::channel::<()>();
    let rotation = tokio::spawn(crate::rotation::driver::run(
        state.clone(),
        crate::rotation::driver::replica_id(),
        async move {
            let _ = rotation_stopped.await;
        },
    ));
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = spawn_metrics_listener(&state, limits, async move {
        let _ = metrics_stopped.await;
    })
    .await;
    serve(
        listener,
        crate::app::router(state.clone()),
        limits,
        shutdown,
    )
    .await;
    trimmer.abort();
    let _ = stop_rotation.send(());
    let _ = rotation.await;
    let _ = stop_metrics.send(());
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    let _ = stop_reloads.send(());
    if let Some(reloader) = reloader {
        let _ = reloader.await;
    }
    // Requests are done: write the buffered successes (later ones, from connections past the
    // grace period, are reported at once), then wait for the reports still running.
    let _ = tokio::time::timeout(Duration::from_secs(5), state.successes.shutdown()).await;
    state.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), state.tasks.wait()).await;
}

/// Serves `/metrics` alone on `server.metrics_listen`, when configured (a scrape port that is not
/// exposed with the API). A port that cannot be bound is logged, not fatal.
async fn spawn_metrics_listener(
    state: &Arc<AppState>,
    limits: ConnLimits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    let addr = state.gateway().config.server.metrics_listen?;
    match TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!(%addr, "metrics listener");
            let router = crate::app::metrics_router(state.clone());
            Some(tokio::spawn(serve(l, router, limits, stop)))
        }
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot bind server.metrics_listen; /metrics stays on the main port only");
            None
        }
    }
}
