//! The running gateway's state: the config-derived [`Gateway`] (swapped whole on reload) and the
//! shared [`AppState`] every handler reads. The HTTP surface over it is `crate::routes`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::http::HeaderValue;
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
    /// Per key id: what an attempt sends and what an error answer is scrubbed of.
    pub auth: HashMap<KeyId, KeyAuth>,
    /// The upstream HTTP client (connection pool), with this pool's connect timeout.
    pub http: UpstreamClient,
}

/// One key's credentials as the proxy uses them, found by id in O(1) (a pool may hold 10,000).
pub struct KeyAuth {
    /// `Bearer <secret>`, marked sensitive (never logged by http/hyper).
    pub header: HeaderValue,
    /// Where the key is in the pool's `config.keys` (its secret: an upstream error answer that
    /// echoes it is redacted before the client sees it). An index, not a second copy of the
    /// secret: 10,000 keys stay 10,000 secrets in memory.
    pub index: usize,
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

/// hyper_util's pooled client, HTTP/1.1 or HTTP/2 (by ALPN over TLS), plain or TLS upstreams.
/// It follows no redirect and adds nothing but `Host`.
pub type UpstreamClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

/// The proxy variables other HTTP clients (reqwest, curl) honour. keygate's upstream client
/// connects directly and never routes a request, and its key, through a proxy it was not
/// configured with; a replica started with one of these set names them in a warning (never their
/// values: they may carry credentials).
pub fn ignored_proxy_env(env: impl Fn(&str) -> Option<String>) -> Vec<&'static str> {
    let names = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ];
    names
        .into_iter()
        .filter(|n| env(n).is_some_and(|v| !v.is_empty()))
        .collect()
}

fn http_client(pool: &PoolConfig) -> UpstreamClient {
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(Duration::from_millis(pool.timeouts.connect_ms)));
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(connector)
}

impl Gateway {
    pub fn from_config(config: Config) -> Result<Gateway, String> {
        let mut pools = HashMap::new();
        for p in &config.pools {
            let base_url = url::Url::parse(&p.base_url)
                .map_err(|e| format!("pools.{}.base_url: {e}", p.name))?;
            let mut auth = HashMap::new();
            for (index, k) in p.keys.iter().enumerate() {
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
                auth.insert(id, KeyAuth { header: v, index });
            }
            let rt = PoolRuntime {
                config: p.clone(),
                spec: PoolSpec::from_config(p),
                base_url,
                auth,
                http: http_client(p),
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
    pub successes: crate::store::successes::SuccessBatcher,
    /// The file `reload` re-reads; `None` when the config did not come from a file.
    pub config_path: Option<PathBuf>,
    pub health: Health,
}

/// When the key gauges were last filled from store snapshots (`crate::health`).
#[derive(Default)]
pub struct Health {
    pub(crate) gauges_at: Mutex<Option<Instant>>,
    /// Serialises refreshes so a burst of scrapes costs one round of snapshots.
    pub(crate) refresh: tokio::sync::Mutex<()>,
}

impl AppState {
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.load_full()
    }
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

#[cfg(test)]
mod tests {
    use super::ignored_proxy_env;

    #[test]
    fn proxy_variables_that_are_set_are_named_and_empty_ones_are_not() {
        let env = |n: &str| match n {
            "HTTPS_PROXY" => Some("http://user:secret@proxy:3128".to_string()),
            "http_proxy" => Some(String::new()),
            _ => None,
        };
        assert_eq!(ignored_proxy_env(env), vec!["HTTPS_PROXY"]);
        assert!(ignored_proxy_env(|_| None).is_empty());
    }
}
