//! Start-up: config → store → state → server. Kept out of `main` so tests start whole gateways
//! in process on port 0.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::{serve, ConnCap, ConnLimits};
use crate::state::{sync_pools, AppState, Gateway};
use crate::store::failover::{FailoverOptions, FailoverStore};
use crate::store::instrumented::InstrumentedStore;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::successes::SuccessBatcher;
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
    build_store_and_redis(config, metrics).map(|(store, _)| store)
}

/// The store, and the Redis behind its failover layer when there is one.
type StoreAndRedis = (Arc<dyn KeyStore>, Option<Arc<RedisStore>>);

/// [`build_store`], and the Redis behind its failover layer (readiness asks it directly: the
/// failover layer answers for it while it is down).
fn build_store_and_redis(
    config: &Config,
    metrics: Option<Arc<Metrics>>,
) -> Result<StoreAndRedis, String> {
    let s = &config.store;
    let Some(endpoint) = redis_endpoint(s) else {
        return Ok((Arc::new(MemoryStore::new()), None));
    };
    let redis = Arc::new(
        RedisStore::connect_to(
            &endpoint,
            &s.prefix,
            Duration::from_millis(s.timeout_ms),
            Duration::from_millis(s.connect_timeout_ms),
        )
        .map_err(|e| e.to_string())?,
    );
    let store = FailoverStore::new(redis.clone(), FailoverOptions::from_config(s), metrics)
        .map_err(|e| e.to_string())?;
    Ok((Arc::new(store), Some(redis)))
}

/// Builds the shared state and syncs every pool into the store (a store that is down now is
/// not fatal: pools are re-created on first use).
pub async fn build_state(
    config: Config,
    config_path: Option<PathBuf>,
) -> Result<Arc<AppState>, String> {
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
    let (inner, redis) = build_store_and_redis(&config, Some(metrics.clone()))?;
    let store: Arc<dyn KeyStore> = Arc::new(InstrumentedStore::new(inner, metrics.clone()));
    let health = crate::state::Health::new(redis);
    // Boxed: the start-up future is nested deep enough already (rustc's query depth).
    Box::pin(health.check_store_at_start()).await;
    let flush = Duration::from_millis(config.store.report_flush_ms);
    let successes = SuccessBatcher::new(store.clone(), flush);
    let reload_bus = crate::store::reload_bus::ReloadBus::new(&config.store);
    let renew_every = (config.pools.iter())
        .map(|p| Duration::from_millis(p.limits.lease_s.saturating_mul(1000) / 3))
        .min()
        .unwrap_or(Duration::from_secs(3))
        .max(Duration::from_millis(100));
    let leases = Arc::new(crate::store::leases::Leases::default());
    leases.start(store.clone(), renew_every);
    let gateway = Gateway::from_config(config)?;
    metrics.initialise_pools(&gateway.config.pools);
    for pool in gateway.pools.values().filter(|p| p.has_budgets) {
        // Exported from the start (zero), so dashboards see the family before the first wait.
        metrics.budget_wait.with_label_values(&[&pool.spec.name]);
    }
    sync_pools(&*store, &gateway).await;
    metrics.init_clients(gateway.clients.iter().map(|c| c.name.as_str()));
    Ok(Arc::new(AppState {
        gateway: ArcSwap::from_pointee(gateway),
        store,
        metrics,
        tasks: TaskTracker::new(),
        successes,
        leases,
        config_path,
        health,
        reload_bus,
        circuits: Default::default(),
        budgets: Default::default(),
    }))
}

/// Warns when the bundled mock provider (`serve --mock-upstream ADDR`) listens where no pool's
/// `base_url` points: every request would then go elsewhere, and fail with no hint.
pub fn warn_if_mock_serves_no_pool(config: &Config, mock: std::net::SocketAddr) {
    let served = |base_url: &str| {
        let Ok(url) = url::Url::parse(base_url) else {
            return false;
        };
        let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
        let same_host = mock.ip().is_unspecified()
            || host.parse::<std::net::IpAddr>().ok() == Some(mock.ip())
            || (host == "localhost" && mock.ip().is_loopback());
        same_host && url.port_or_known_default() == Some(mock.port())
    };
    if !config.pools.iter().any(|p| served(&p.base_url)) {
        let urls: Vec<String> = (config.pools.iter())
            .map(|p| format!("{} → {}", p.name, p.base_url))
            .collect();
        tracing::warn!(mock = %mock, pools = %urls.join(", "), "--mock-upstream serves no pool: no pool's base_url names its host and port, so no request reaches the mock");
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

/// Connections each side listener (`metrics_listen`, `admin.listen`) holds at once: scrapes and
/// operators need few, and these ports stay reachable when the public one is at its cap.
const SIDE_LISTENER_CONNECTIONS: usize = 256;

fn conn_limits(server: &crate::config::ServerConfig) -> ConnLimits {
    ConnLimits {
        header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
        max_header_bytes: server.max_header_bytes,
        grace: Duration::from_secs(server.shutdown_grace_s),
        idle_timeout: Duration::from_millis(server.idle_timeout_ms),
        http2: server.http2,
    }
}

/// Serves until `shutdown`, then drains, writes the buffered successes and flushes background
/// reports. A gateway started from a config file also reloads it on SIGHUP until then.
pub async fn run(state: Arc<AppState>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let gateway = state.gateway();
    let server = &gateway.config.server;
    let limits = conn_limits(server);
    let (stop_reloads, reloads_stopped) = tokio::sync::oneshot::channel::<()>();
    let reloader = match state.config_path {
        Some(_) => crate::reload::spawn_sighup_reloader(state.clone(), async move {
            let _ = reloads_stopped.await;
        }),
        None => None,
    };
    let (stop_watcher, watcher_stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = crate::reload::watch::spawn_reload_watcher(state.clone(), async move {
        let _ = watcher_stopped.await;
    });
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
    let side_stop = tokio_util::sync::CancellationToken::new();
    let mut side_listeners = Vec::new();
    let sides = [
        (
            "server.metrics_listen",
            server.metrics_listen,
            crate::routes::metrics_router(state.clone()),
        ),
        (
            "admin.listen",
            gateway.config.admin.listen,
            crate::routes::admin_router(state.clone()),
        ),
    ];
    for (what, addr, router) in sides {
        let Some(addr) = addr else { continue };
        let stop = side_stop.clone().cancelled_owned();
        side_listeners.extend(spawn_side_listener(what, addr, router, limits, stop).await);
    }
    let metrics = &state.metrics.limits;
    let cap = ConnCap::counted(
        server.max_connections,
        metrics.connections_open.clone(),
        metrics.connections_rejected.clone(),
    );
    drop(gateway);
    serve(
        listener,
        crate::routes::public(state.clone()),
        limits,
        cap,
        shutdown,
    )
    .await;
    trimmer.abort();
    let _ = stop_rotation.send(());
    let _ = rotation.await;
    side_stop.cancel();
    for side in side_listeners {
        let _ = side.await;
    }
    let _ = stop_reloads.send(());
    let _ = stop_watcher.send(());
    for task in [reloader, watcher].into_iter().flatten() {
        let _ = task.await;
    }
    // Requests are done: write the buffered successes (later ones, from connections past the
    // grace period, are reported at once), then wait for the reports still running.
    let _ = tokio::time::timeout(Duration::from_secs(5), state.successes.shutdown()).await;
    state.leases.shutdown().await;
    state.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), state.tasks.wait()).await;
}

/// Serves `router` alone on `addr` (`/metrics` on `server.metrics_listen`, `/admin` on
/// `admin.listen`): a port that is not exposed with the API. A port that cannot be bound is
/// logged, not fatal; that surface is then not served at all.
async fn spawn_side_listener(
    what: &'static str,
    addr: std::net::SocketAddr,
    router: axum::Router,
    limits: ConnLimits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    match crate::server::bind(addr) {
        Ok(l) => {
            tracing::info!(%addr, "{what} listener");
            let cap = ConnCap::new(SIDE_LISTENER_CONNECTIONS);
            Some(tokio::spawn(serve(l, router, limits, cap, stop)))
        }
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot bind {what}; what it serves is not served");
            None
        }
    }
}
