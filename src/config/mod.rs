//! The gateway's configuration (README.md, "Configuration reference"): a TOML file,
//! `KEYGATE_*` environment overrides, and a validation that reports every problem at once, each
//! with its path.
//!
//! Loading runs in four steps, all adding to one list of [`Problem`]s:
//! 1. the text is parsed into a TOML tree (a syntax error stops here, with its line);
//! 2. the environment overrides below are applied to that tree;
//! 3. each section, client, pool, pool sub-table and key is decoded on its own into a serde
//!    struct with `deny_unknown_fields` (so one typo does not hide the next one); decode errors
//!    carry their path and the line of the offending value;
//! 4. the decoded values are checked and turned into the public types; key secrets are read
//!    from the environment or from files, and never appear in a message.
//!
//! # Environment overrides
//!
//! `KEYGATE_<SECTION>__<FIELD>` (upper case, two underscores) replaces one scalar field of the
//! `server`, `store` or `admin` section before decoding, e.g.
//! `KEYGATE_SERVER__LISTEN=0.0.0.0:8080`,
//! `KEYGATE_STORE__REDIS_URL=redis://redis:6379/0`, `KEYGATE_STORE__TIMEOUT_MS=80`,
//! `KEYGATE_ADMIN__TOKEN_ENV=MY_ADMIN_TOKEN`. Every field of those three sections is covered
//! (see `ENV_OVERRIDES`). Numeric fields must parse as non-negative integers. An empty value
//! clears an optional field: `KEYGATE_STORE__REDIS_URL=""` selects the embedded store, and
//! likewise `KEYGATE_SERVER__METRICS_LISTEN`, `KEYGATE_ADMIN__LISTEN` and
//! `KEYGATE_STORE__SENTINEL_MASTER`. `KEYGATE_SERVER__HTTP2` takes `true` or `false`. The list
//! fields `store.sentinels` and `store.cluster_nodes` take comma-separated values. A problem
//! about an overridden field names the variable that set it. [`Config::load`] also rejects
//! `KEYGATE_SERVER__*`, `KEYGATE_STORE__*` and `KEYGATE_ADMIN__*` variables that match no
//! field, so a misspelt override does not pass silently.
//!
//! # Admin token
//!
//! `admin.token_env` (default `KEYGATE_ADMIN_TOKEN`) names the variable holding the admin
//! bearer token. When that variable is unset or empty, or `token_env = ""`, there is no admin
//! API: [`AdminConfig::token`] is `None`. This is not an error, even when `token_env` was
//! configured explicitly, so `check-config` passes on a machine without the token.
//!
//! # Layout
//!
//! - this file: the public types, [`Config::load`] and [`Config::from_toml_str`];
//! - `secret`: [`Secret`], [`redact_url`] and [`hash_token`];
//! - `env`: the environment overrides;
//! - `decode`: TOML decoding, error paths and line numbers, the raw section shapes;
//! - `check` and `check_pools`: validation, section by section;
//! - `warnings`: what is valid but unsafe (inline secrets, readable or symlinked secret files).

mod check;
mod check_pools;
mod check_rotation;
mod decode;
mod env;
mod limits;
mod secret;
#[cfg(test)]
mod tests;
mod warnings;
mod wire;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use check::{check_clients, check_server, check_store, resolve_admin};
use check_pools::check_pools;
use decode::{split_sections, syntax_error, Ctx, RawAdmin};
use env::{apply_env_overrides, stray_overrides};
pub use limits::{Limits, PoolLimits};
pub use secret::{hash_token, redact_url, Secret};
pub use warnings::warnings;
pub use wire::{name_matches, path_matches, HeaderLists};
pub use wire::{DEFAULT_EXPOSED, DEFAULT_FORWARDED, DEFAULT_PATHS, NEVER_EXPOSED, NEVER_FORWARDED};

/// The group every key belongs to unless it names the pool's canary group.
pub const STABLE_GROUP: &str = "stable";
/// The variable read for the admin token when `admin.token_env` is not configured.
pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "KEYGATE_ADMIN_TOKEN";
/// The shortest admin token accepted (`openssl rand -hex 24` gives 48 characters).
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// The whole validated configuration. Built only by [`Config::load`] / [`Config::from_toml_str`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub admin: AdminConfig,
    pub clients: Vec<ClientConfig>,
    /// Shared with each pool's runtime (`state::PoolRuntime`), not copied: a pool's keys are
    /// most of a large config.
    pub pools: Vec<Arc<PoolConfig>>,
}

/// `[server]`: where keygate listens and how much it accepts from a client.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// A separate listener for `/metrics`, then served there only; `None` serves it on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    pub max_body_bytes: usize,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace_s: u64,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub max_header_bytes: usize,
    /// A connection with no request in flight is closed after this long (HTTP/1.1 keep-alive
    /// and HTTP/2 alike). A new connection has `header_read_timeout_ms` for its first request.
    pub idle_timeout_ms: u64,
    /// Serve HTTP/2 cleartext (h2c) next to HTTP/1.1; `false` speaks HTTP/1.1 only.
    pub http2: bool,
    /// Open connections on `listen`; past it new connections are accepted and closed at once.
    pub max_connections: usize,
    /// Request bytes buffered in flight across the process; past it requests get 503
    /// `server_busy`.
    pub max_buffered_bytes: usize,
    /// The same per client, unless its `[[clients]] max_buffered_bytes` says otherwise; past it
    /// that client's requests get 429 `client_busy`.
    pub client_max_buffered_bytes: usize,
    /// The most `Retry-After` keygate's own 429/503 answers announce; a longer wait is announced
    /// as this with `x-should-retry: false` (README.md, "Errors keygate answers itself").
    pub max_retry_after_s: u64,
    /// How often the config file's modification time and hash are checked for a change that
    /// then reloads it (a ConfigMap swapped under a running pod); 0: never.
    pub config_watch_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            max_body_bytes: 16 * 1024 * 1024,
            shutdown_grace_s: 30,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_header_bytes: 65_536,
            idle_timeout_ms: 60_000,
            http2: true,
            max_connections: 10_000,
            max_buffered_bytes: 256 << 20,
            client_max_buffered_bytes: 64 << 20,
            max_retry_after_s: 60,
            config_watch_ms: 5000,
        }
    }
}

/// `[store]`: where key state lives. At most one of `redis_url`, `sentinels`, `cluster_nodes`;
/// none of them selects the embedded (single-replica) store. `Debug` hides URL passwords.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `redis://`, `rediss://`, `redis+unix://` or `unix://`. May hold a password: never logged.
    pub redis_url: Option<String>,
    /// `host:port` or `redis://` URLs of Sentinels; needs `sentinel_master`.
    pub sentinels: Vec<String>,
    pub sentinel_master: Option<String>,
    /// `host:port` or `redis://` URLs of Redis Cluster seed nodes.
    pub cluster_nodes: Vec<String>,
    /// First part of every Redis key name (`kg:{pool}:key:id`).
    pub prefix: String,
    /// Deadline of one store call; a slow store must not stall requests.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Consecutive store failures before the replica switches to its in-process fallback.
    pub degraded_after_failures: u32,
    /// ... which must also last this long with no answer from the store, unless a confirming
    /// `PING` fails (0: the count alone switches). Keeps a burst of timeouts from switching.
    pub degraded_after_ms: u64,
    /// How often a degraded replica checks whether the store is back.
    pub probe_interval_ms: u64,
    /// How long a state snapshot (metrics, admin listing) may be reused; 0 disables the cache.
    pub snapshot_cache_ms: u64,
    /// How long a replica buffers successful reports before writing them in one script call per
    /// pool (at most 60 s); 0 reports every success at once.
    pub report_flush_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            redis_url: None,
            sentinels: Vec::new(),
            sentinel_master: None,
            cluster_nodes: Vec::new(),
            prefix: "kg".to_string(),
            timeout_ms: 50,
            connect_timeout_ms: 200,
            degraded_after_failures: 3,
            degraded_after_ms: 1000,
            probe_interval_ms: 500,
            snapshot_cache_ms: 1000,
            report_flush_ms: 50,
        }
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact_all = |urls: &[String]| urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>();
        f.debug_struct("StoreConfig")
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("sentinels", &redact_all(&self.sentinels))
            .field("sentinel_master", &self.sentinel_master)
            .field("cluster_nodes", &redact_all(&self.cluster_nodes))
            .field("prefix", &self.prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("degraded_after_failures", &self.degraded_after_failures)
            .field("degraded_after_ms", &self.degraded_after_ms)
            .field("probe_interval_ms", &self.probe_interval_ms)
            .field("snapshot_cache_ms", &self.snapshot_cache_ms)
            .field("report_flush_ms", &self.report_flush_ms)
            .finish()
    }
}

/// `[admin]`: the admin API is on only when a token was found (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// The variable the token was read from; `None` when configured as `""`.
    pub token_env: Option<String>,
    pub token: Option<Secret>,
    /// A listener of its own for `/admin`; when set, the public port does not serve `/admin`.
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token_env: Some(DEFAULT_ADMIN_TOKEN_ENV.to_string()),
            token: None,
            listen: None,
        }
    }
}

/// `[[clients]]`: an application allowed to call keygate. Only the token's hash is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    pub name: String,
    pub token_sha256: [u8; 32],
    /// The pools this client may use, in preference order (at least one).
    pub pools: Vec<String>,
    /// Request bytes this client may have buffered at once; `None`: the server's
    /// `client_max_buffered_bytes`.
    pub max_buffered_bytes: Option<usize>,
    /// Requests this client may have in flight at once; `None`: no limit.
    pub max_concurrent: Option<usize>,
}

/// `[[pools]]`: one upstream provider and the keys that call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    /// Without a trailing slash, e.g. `https://api.holysheep.ai/v1`.
    pub base_url: String,
    /// Upstream attempts per request, each on a different key (1..=10).
    pub max_attempts: u32,
    /// Allowed models; empty allows any.
    pub models: Vec<String>,
    /// Model → models to try instead when the first is refused.
    pub fallbacks: BTreeMap<String, Vec<String>>,
    pub policy: Policy,
    pub timeouts: Timeouts,
    /// Whether the upstream client speaks HTTP/2 (README, "Upstream connections").
    pub upstream_http2: UpstreamHttp2,
    pub canary: CanaryConfig,
    /// `[pools.rotation]`: defaults of rotation plans (README, "Rotating keys").
    pub rotation: RotationConfig,
    pub keys: Vec<KeyConfig>,
    /// Paths after `/v1/` the pool serves (`prefix/*` matches under a prefix); others get 404.
    pub paths: Vec<String>,
    /// `[pools.headers]`: headers let through each way besides the defaults (`wire.rs`).
    pub headers: HeaderLists,
    /// `OpenAI-Organization` / `OpenAI-Project` sent upstream for keys that set none.
    pub organization: Option<String>,
    pub project: Option<String>,
    /// `[pools.limits]`: per-key budgets (README "Budgets").
    pub limits: PoolLimits,
}

/// `[pools.rotation]`: how a rotation plan ramps new keys and when it rolls back. Every field
/// can be overridden per plan (`keygate rotate start`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RotationConfig {
    /// Canary percents, rising, ending at 100.
    pub steps: Vec<u8>,
    /// Canary requests (cluster-wide) a step needs before it may advance.
    pub min_requests: u64,
    /// How long each step lasts at least.
    pub min_dwell_s: u64,
    /// How often the driving replica evaluates the plan.
    pub eval_interval_ms: u64,
    /// The canary's error ratio may exceed stable's by this many percentage points.
    pub max_error_increase_pct: u32,
    /// The canary's p99 latency may be this percent of stable's (plus `p99_slack_ms`).
    pub max_p99_ratio_pct: u32,
    pub p99_slack_ms: u64,
    /// How long the driver's lease lasts without renewal; another replica takes over after it.
    pub lease_ms: u64,
    /// At 100%: how long the drained old keys get to finish their in-flight requests.
    pub drain_wait_ms: u64,
    /// A key with `expires` and a `successor` starts its rotation this long before expiry.
    pub start_before_expiry_h: u64,
    /// A key with `expires` is warned about (log, `keygate_key_expiry_seconds`) this long before.
    pub warn_before_expiry_h: u64,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            steps: vec![5, 25, 50, 100],
            min_requests: 100,
            min_dwell_s: 300,
            eval_interval_ms: 5000,
            max_error_increase_pct: 5,
            max_p99_ratio_pct: 200,
            p99_slack_ms: 100,
            lease_ms: 10_000,
            drain_wait_ms: 30_000,
            start_before_expiry_h: 168,
            warn_before_expiry_h: 336,
        }
    }
}

/// `[pools.policy]`: how the key state machine (README.md, "Key states") reacts to outcomes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Cooling time after a 429 without a hint, doubled per strike up to `cooldown_max_s`.
    pub cooldown_default_s: u64,
    pub cooldown_max_s: u64,
    /// Errors within `breaker_window_s` that open the breaker.
    pub breaker_errors: u32,
    pub breaker_window_s: u64,
    pub breaker_open_s: u64,
    /// How long a key with `insufficient_quota` stays disabled.
    pub quota_cooldown_s: u64,
    /// How long one half-open probe holds a key before another replica may probe it.
    pub probe_lease_s: u64,
    /// How long a key that answered 401/403 is benched (cooling, reason `auth_unconfirmed`)
    /// while keygate confirms with a probe of its own; the key comes back when it ends.
    pub auth_bench_s: u64,
    /// The path (after the base URL) of that probe: a cheap authenticated `GET`.
    pub auth_probe_path: String,
    /// Key-damaging answers (a 401/403 that benched a key keygate's probe then found fine) one
    /// client may cause on this pool within `client_circuit_window_s` before it is refused for
    /// `client_circuit_open_s`; 0 turns the per-client circuit off. Counted per replica.
    pub client_circuit_threshold: u32,
    pub client_circuit_window_s: u64,
    pub client_circuit_open_s: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            cooldown_default_s: 60,
            cooldown_max_s: 900,
            breaker_errors: 5,
            breaker_window_s: 60,
            breaker_open_s: 30,
            quota_cooldown_s: 3600,
            probe_lease_s: 30,
            auth_bench_s: 30,
            auth_probe_path: "models".to_string(),
            client_circuit_threshold: 5,
            client_circuit_window_s: 60,
            client_circuit_open_s: 60,
        }
    }
}

/// `[pools.timeouts]` of one upstream attempt.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    pub connect_ms: u64,
    /// Until the response head arrives (a streamed answer may then run up to `total_ms`).
    pub first_byte_ms: u64,
    pub total_ms: u64,
    /// Until the response head arrives, across all attempts of a request: a hung upstream fails
    /// the request in this time, not `max_attempts × first_byte_ms`. `None`: `first_byte_ms`.
    pub first_byte_total_ms: Option<u64>,
    /// Idle keep-alive connections kept per upstream host; more are closed when they fall idle.
    pub idle_connections: usize,
    /// How long an idle upstream connection is kept before it is closed.
    pub idle_timeout_ms: u64,
}

impl Timeouts {
    /// The first-byte budget of a whole request (see `first_byte_total_ms`).
    pub fn first_byte_budget_ms(&self) -> u64 {
        self.first_byte_total_ms.unwrap_or(self.first_byte_ms)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 2000,
            first_byte_ms: 30_000,
            total_ms: 300_000,
            first_byte_total_ms: None,
            idle_connections: 256,
            idle_timeout_ms: 30_000,
        }
    }
}

/// `[[pools]] upstream_http2`: how the upstream client chooses between HTTP/1.1 and HTTP/2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamHttp2 {
    /// HTTP/2 when a TLS upstream offers it by ALPN, else HTTP/1.1 (plaintext upstreams).
    #[default]
    Alpn,
    /// HTTP/2 always, without negotiation: h2c to plaintext upstreams that speak it.
    PriorKnowledge,
    /// HTTP/1.1 only (ALPN offers only `http/1.1`).
    Never,
}

impl UpstreamHttp2 {
    pub const NAMES: [&'static str; 3] = ["alpn", "prior_knowledge", "never"];

    pub fn parse(s: &str) -> Option<UpstreamHttp2> {
        match s {
            "alpn" => Some(UpstreamHttp2::Alpn),
            "prior_knowledge" => Some(UpstreamHttp2::PriorKnowledge),
            "never" => Some(UpstreamHttp2::Never),
            _ => None,
        }
    }
}

/// `[pools.canary]`: gray routing (README.md, "Pointing applications at keygate").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryConfig {
    pub group: String,
    /// Share of unforced traffic sent to the canary group (0..=100).
    pub percent: u8,
    /// When the canary group has no selectable key, serve the request from stable.
    pub fallback: bool,
    /// Which identity keeps a request in its group.
    pub sticky_by: StickyBy,
}

/// `[pools.canary] sticky_by`: what decides the group of a request that does not force one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StickyBy {
    /// `X-User-Id`, else the body's `user` field, else a draw per request.
    #[default]
    User,
    /// `X-User-Id`, else the client token's name (one token: one group).
    Client,
    /// A draw per request, whatever the request says.
    Random,
}

impl StickyBy {
    pub const NAMES: [&'static str; 3] = ["user", "client", "random"];

    pub fn parse(s: &str) -> Option<StickyBy> {
        match s {
            "user" => Some(StickyBy::User),
            "client" => Some(StickyBy::Client),
            "random" => Some(StickyBy::Random),
            _ => None,
        }
    }
}

impl Default for CanaryConfig {
    fn default() -> Self {
        CanaryConfig {
            group: "canary".to_string(),
            percent: 0,
            fallback: true,
            sticky_by: StickyBy::User,
        }
    }
}

/// `[[pools.keys]]`: one upstream API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyConfig {
    pub id: String,
    pub secret: Secret,
    /// Where the secret came from (kept for admin display and reload).
    pub secret_env: Option<String>,
    /// Resolved against the config file's directory.
    pub secret_file: Option<PathBuf>,
    /// Share of selections (0..=1000); 0 keeps the key on standby, never selected.
    pub weight: u32,
    /// `stable` or the pool's canary group.
    pub group: String,
    /// This key's `OpenAI-Organization` / `OpenAI-Project`, instead of the pool's.
    pub organization: Option<String>,
    pub project: Option<String>,
    /// The key's own budgets (`limits = {...}`), overriding the pool's field by field.
    pub limits: Limits,
    /// When the provider retires this key (`expires = "2027-03-01"`), as Unix ms.
    pub expires_ms: Option<u64>,
    /// The key (in the canary group) that replaces this one when it nears expiry.
    pub successor: Option<String>,
}

impl Config {
    /// Reads `path`, applies the real process environment, and resolves relative
    /// `secret_file` paths against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![Problem::new(
                path.display().to_string(),
                format!("cannot read: {e}"),
            )],
        })?;
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let stray = stray_overrides(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()));
        let env = |name: &str| std::env::var(name).ok();
        match Config::from_toml_str(&text, &env, base_dir) {
            Ok(config) if stray.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError { problems: stray }),
            Err(mut error) => {
                error.problems.extend(stray);
                Err(error)
            }
        }
    }

    /// Parses and validates `text`. Every environment lookup (overrides, `secret_env`,
    /// `admin.token_env`) goes through `env`; relative `secret_file` paths join `base_dir`.
    pub fn from_toml_str(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        base_dir: &Path,
    ) -> Result<Config, ConfigError> {
        let mut root: toml::Table = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        let mut ctx = Ctx::new(text);
        apply_env_overrides(&mut root, env, &mut ctx);
        let sections = split_sections(root, &mut ctx);
        let server = ctx.decode::<ServerConfig>(sections.server, "server");
        if let Some(server) = &server {
            check_server(server, &mut ctx);
        }
        let store = ctx
            .decode::<StoreConfig>(sections.store, "store")
            .map(|store| check_store(store, &mut ctx));
        let admin = ctx
            .decode::<RawAdmin>(sections.admin, "admin")
            .map(|raw| resolve_admin(raw, env, &mut ctx));
        let pool_names: HashSet<String> = (sections.pools.iter().flatten())
            .filter_map(|t| t.get("name").and_then(toml::Value::as_str))
            .map(str::to_string)
            .collect();
        let clients = check_clients(sections.clients, &pool_names, &mut ctx);
        let pools = check_pools(sections.pools, env, base_dir, &mut ctx);
        match (server, store, admin) {
            (Some(server), Some(store), Some(admin)) if ctx.problems.is_empty() => Ok(Config {
                server,
                store,
                admin,
                clients,
                pools: pools.into_iter().map(Arc::new).collect(),
            }),
            _ => Err(ctx.into_error()),
        }
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name).map(|p| &**p)
    }
}

/// Everything wrong with a config, one [`Problem`] per line when displayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// One thing wrong with a config: where (`pools[1].keys[3].weight`) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Empty for a TOML syntax error, whose message carries the line instead.
    pub path: String,
    pub message: String,
}

impl Problem {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}
