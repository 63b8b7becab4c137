//! The running gateway's state: the config-derived [`Gateway`] (swapped whole on reload) and the
//! shared [`AppState`] every handler reads. The HTTP surface over it is `crate::routes`.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::http::HeaderValue;
use tokio_util::task::TaskTracker;

pub mod budget;
pub mod circuit;
pub mod upstream_client;

use crate::config::{Config, PoolConfig};
use crate::metrics::Metrics;
use crate::pool::KeyId;
use crate::store::budget::{BudgetRecord, KeyLimits};
use crate::store::redis::RedisStore;
use crate::store::{KeyStore, PoolSpec, SyncReceipt};
use crate::upstream::scrub::Scrubber;
use upstream_client::UpstreamClient;

/// One pool as the proxy uses it: config, store spec, the upstream and the keys' secrets.
pub struct PoolRuntime {
    pub config: Arc<PoolConfig>,
    pub spec: PoolSpec,
    /// `spec.has_budgets()`, computed once: it looks at every key, and a pool may hold 10,000.
    pub has_budgets: bool,
    /// Per key id, its configured budget limits (empty when the pool has no budgets): what the
    /// provider's `x-ratelimit-*` hints are measured against before they ride the success batch
    /// (`ProviderHints::that_bind`).
    pub limits: FxHashMap<KeyId, KeyLimits>,
    /// The configured base URL, parsed; requests only ever go to its scheme, host and port.
    pub base_url: UpstreamBase,
    /// Per key id: what an attempt sends.
    pub auth: FxHashMap<KeyId, KeyAuth>,
    /// Every secret of the pool, found and masked in whatever an upstream answers.
    pub scrubber: Arc<Scrubber>,
    /// The upstream HTTP client (connection pool), with this pool's timeouts and HTTP/2 mode.
    pub http: UpstreamClient,
}

/// A pool's base URL, parsed once: the URL, and the scheme and authority of every upstream URI
/// built on it (`proxy::forward::upstream_uri` puts a request's path and query after them
/// rather than parsing the whole URI again).
pub struct UpstreamBase {
    pub url: url::Url,
    /// `None` where the URL's origin is not a URI `http` reads (the full parse then decides).
    pub origin: Option<(http::uri::Scheme, http::uri::Authority)>,
}

impl UpstreamBase {
    pub fn new(url: url::Url) -> UpstreamBase {
        let origin = http::Uri::try_from(&url[..url::Position::BeforePath])
            .ok()
            .and_then(|uri| {
                let parts = uri.into_parts();
                Some((parts.scheme?, parts.authority?))
            });
        UpstreamBase { url, origin }
    }
}

/// One key's credentials as the proxy uses them, found by id in O(1) (a pool may hold 10,000).
pub struct KeyAuth {
    /// `Bearer <secret>`, marked sensitive (never logged by http/hyper).
    pub header: HeaderValue,
    /// `OpenAI-Organization` / `OpenAI-Project`; `None` when neither is set (most keys): one
    /// pointer in each of a pool's 10,000 entries instead of two 40-byte header values.
    pub account: Option<Box<Account>>,
}

/// A key's `OpenAI-Organization` / `OpenAI-Project`: the key's own, else the pool's, else none.
pub struct Account {
    pub organization: Option<HeaderValue>,
    pub project: Option<HeaderValue>,
}

impl KeyAuth {
    /// `Authorization` plus the account headers; `None` for an account without either.
    pub fn new(header: HeaderValue, account: Account) -> KeyAuth {
        let set = account.organization.is_some() || account.project.is_some();
        KeyAuth {
            header,
            account: set.then(|| Box::new(account)),
        }
    }

    /// The `OpenAI-Organization` this key sends.
    pub fn organization(&self) -> Option<&HeaderValue> {
        self.account.as_ref()?.organization.as_ref()
    }

    /// The `OpenAI-Project` this key sends.
    pub fn project(&self) -> Option<&HeaderValue> {
        self.account.as_ref()?.project.as_ref()
    }
}

/// A client token's owner and the pools it may use.
pub struct ClientAuth {
    pub name: String,
    pub token_sha256: [u8; 32],
    pub pools: Vec<String>,
    /// Request bytes it may have buffered at once (its own setting or the server's default).
    pub max_buffered_bytes: usize,
    /// Requests it may have in flight at once; `None`: no limit.
    pub max_concurrent: Option<usize>,
}

/// Everything derived from one config version; immutable, replaced whole on reload.
pub struct Gateway {
    pub config: Arc<Config>,
    pub pools: FxHashMap<String, Arc<PoolRuntime>>,
    pub clients: Vec<ClientAuth>,
}

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

impl Gateway {
    pub fn from_config(config: Config) -> Result<Gateway, String> {
        let mut pools = FxHashMap::default();
        for p in &config.pools {
            let base_url = url::Url::parse(&p.base_url)
                .map_err(|e| format!("pools.{}.base_url: {e}", p.name))?;
            let mut auth = FxHashMap::default();
            let account = |key: &Option<String>, pool: &Option<String>| {
                (key.as_ref().or(pool.as_ref())).and_then(|v| HeaderValue::from_str(v).ok())
            };
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
                let key_auth = KeyAuth::new(
                    v,
                    Account {
                        organization: account(&k.organization, &p.organization),
                        project: account(&k.project, &p.project),
                    },
                );
                auth.insert(id, key_auth);
            }
            let spec = PoolSpec::from_config(p);
            let has_budgets = spec.has_budgets();
            let limits = (spec.keys.iter())
                .filter(|_| has_budgets)
                .map(|k| (k.id.clone(), k.limits))
                .collect();
            let rt = PoolRuntime {
                config: p.clone(),
                has_budgets,
                limits,
                spec,
                base_url: UpstreamBase::new(base_url),
                auth,
                scrubber: Arc::new(Scrubber::new(p.keys.iter().map(|k| &k.secret))),
                http: UpstreamClient::new(p),
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
                max_buffered_bytes: (c.max_buffered_bytes)
                    .unwrap_or(config.server.client_max_buffered_bytes),
                max_concurrent: c.max_concurrent,
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
    /// This replica's in-flight leases on budgeted keys, renewed in the background.
    pub leases: Arc<crate::store::leases::Leases>,
    /// The file `reload` re-reads; `None` when the config did not come from a file.
    pub config_path: Option<PathBuf>,
    pub health: Health,
    /// Per (pool, client): key-damaging answers counted on this replica, and who is refused.
    pub circuits: crate::state::circuit::ClientCircuits,
    /// Request bytes buffered and requests in flight, against the configured budgets.
    pub budgets: crate::state::budget::Budgets,
    /// The way to the other replicas for a cluster-wide reload; `None` without `redis_url`.
    pub reload_bus: Option<crate::store::reload_bus::ReloadBus>,
}

/// Whether the configured Redis was ever reached, and when the key gauges were last filled
/// from store snapshots (`crate::health` reads and fills it).
#[derive(Default)]
pub struct Health {
    /// The configured Redis, asked directly until it first answers; `None`: the embedded store.
    pub(crate) redis: Option<Arc<RedisStore>>,
    /// Redis answered at least once since start (always true for the embedded store).
    pub(crate) store_reached: AtomicBool,
    pub(crate) gauges_at: Mutex<Option<Instant>>,
    /// Serialises refreshes so a burst of scrapes costs one round of snapshots.
    pub(crate) refresh: tokio::sync::Mutex<()>,
    /// Per pool with budgets, the budget records of its usable keys as of the last snapshot
    /// (the `x-ratelimit-*` headers of 429 `pool_exhausted`).
    pub(crate) budgets: Mutex<HashMap<String, Arc<Vec<Option<BudgetRecord>>>>>,
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
            Ok(SyncReceipt::Unchanged) => {
                tracing::info!(pool = %pool.spec.name, "pool synced: unchanged")
            }
            Ok(SyncReceipt::Synced {
                created,
                updated,
                removed,
            }) => tracing::info!(pool = %pool.spec.name, created, updated, removed, "pool synced"),
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
