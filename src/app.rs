//! The running gateway: the config-derived [`Gateway`] (swapped whole on reload), the shared
//! [`AppState`], and [`router`], the whole HTTP surface.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tokio_util::task::TaskTracker;

use crate::config::{Config, PoolConfig};
use crate::metrics::Metrics;
use crate::pool::KeyId;
use crate::store::{KeyStore, PoolSpec};

/// One pool as the proxy uses it: config, store spec, the upstream and the keys' secrets.
pub struct PoolRuntime {
    pub config: PoolConfig,
    pub spec: PoolSpec,
    /// The configured base URL, parsed; requests only ever go to its scheme, host and port.
    pub base_url: url::Url,
    /// `Bearer <secret>` per key id, marked sensitive (never logged by http/hyper).
    pub auth: HashMap<KeyId, HeaderValue>,
    /// The upstream HTTP client (connection pool), with this pool's connect timeout.
    pub http: reqwest::Client,
}

/// A client token's owner and the pools it may use.
pub struct ClientAuth {
    pub name: String,
    pub token_sha256: [u8; 32],
    pub pools: Vec<String>,
}

/// Everything derived from one config version; immutable, replaced whole on reload.
pub struct Gateway {
    pub config: Arc<Config>,
    pub pools: HashMap<String, Arc<PoolRuntime>>,
    pub clients: Vec<ClientAuth>,
}

fn http_client(pool: &PoolConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(pool.timeouts.connect_ms))
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("pools.{}: cannot build HTTP client: {e}", pool.name))
}

impl Gateway {
    pub fn from_config(config: Config) -> Result<Gateway, String> {
        let mut pools = HashMap::new();
        for p in &config.pools {
            let base_url = url::Url::parse(&p.base_url)
                .map_err(|e| format!("pools.{}.base_url: {e}", p.name))?;
            let mut auth = HashMap::new();
            for k in &p.keys {
                let id =
                    KeyId::new(&k.id).ok_or_else(|| format!("pools.{}: bad key id", p.name))?;
                let mut v = HeaderValue::from_str(&format!("Bearer {}", k.secret.expose()))
                    .map_err(|_| {
                        format!(
                            "pools.{}.keys.{}: secret is not a valid header value",
                            p.name, k.id
                        )
                    })?;
                v.set_sensitive(true);
                auth.insert(id, v);
            }
            let rt = PoolRuntime {
                config: p.clone(),
                spec: PoolSpec::from_config(p),
                base_url,
                auth,
                http: http_client(p)?,
            };
            pools.insert(p.name.clone(), Arc::new(rt));
        }
        let clients = config
            .clients
            .iter()
            .map(|c| ClientAuth {
                name: c.name.clone(),
                token_sha256: c.token_sha256,
                pools: c.pools.clone(),
            })
            .collect();
        Ok(Gateway {
            config: Arc::new(config),
            pools,
            clients,
        })
    }
}

/// Shared by every request.
pub struct AppState {
    pub gateway: ArcSwap<Gateway>,
    pub store: Arc<dyn KeyStore>,
    pub metrics: Arc<Metrics>,
    /// Background work (reports sent after the response started); awaited on shutdown.
    pub tasks: TaskTracker,
    /// Plain successes, buffered and written in batches (`store.report_flush_ms`); flushed on
    /// shutdown.
    pub successes: crate::proxy::successes::SuccessBatcher,
    /// The file `reload` re-reads; `None` when the config did not come from a file.
    pub config_path: Option<PathBuf>,
    pub health: crate::health::Health,
}

impl AppState {
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.load_full()
    }
}

/// The whole HTTP surface: `/v1/*` proxy, health, metrics, admin.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/{*path}", any(crate::proxy::handle))
        .route("/v1", any(crate::proxy::handle_root))
        .route("/healthz", get(healthz))
        .route("/readyz", get(crate::health::readyz))
        .route("/metrics", get(metrics))
        .nest("/admin", crate::admin::router(state.clone()))
        .fallback(not_found)
        .with_state(state)
}

/// Only `/metrics` (for `server.metrics_listen`).
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

pub(crate) async fn not_found() -> Response {
    crate::error::ApiError::not_found("Unknown path; keygate serves /v1/*.").into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    crate::health::refresh_key_gauges(&state).await;
    (
        StatusCode::OK,
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        axum::body::Body::from_stream(futures::stream::iter(
            state
                .metrics
                .render_chunks()
                .map(|chunk| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(chunk))),
        )),
    )
        .into_response()
}
