//! The gateway's configuration (DESIGN section 7): a TOML file, `KEYGATE_*` environment
//! overrides, and a validation that reports every problem at once, each with its path.
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
//! `server`, `store` or `admin` section before decoding, e.g. `KEYGATE_SERVER__LISTEN=0.0.0.0:8080`,
//! `KEYGATE_STORE__REDIS_URL=redis://redis:6379/0`, `KEYGATE_STORE__TIMEOUT_MS=80`,
//! `KEYGATE_ADMIN__TOKEN_ENV=MY_ADMIN_TOKEN`. Every field of those three sections is covered
//! (see `ENV_OVERRIDES`). Numeric fields must parse as non-negative integers. An empty value
//! clears an optional field: `KEYGATE_STORE__REDIS_URL=""` selects the embedded store, and
//! likewise `KEYGATE_SERVER__METRICS_LISTEN` and `KEYGATE_STORE__SENTINEL_MASTER`. The list
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

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::pool::is_valid_id;

/// The group every key belongs to unless it names the pool's canary group.
pub const STABLE_GROUP: &str = "stable";
/// The variable read for the admin token when `admin.token_env` is not configured.
pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "KEYGATE_ADMIN_TOKEN";

const MASK: &str = "*****";
/// Secret prefixes that are safe to show in a fingerprint (they say which provider, not which key).
const KNOWN_PREFIXES: [&str; 4] = ["sk-", "sk_", "pk-", "hf_"];
/// Shorter secrets show no characters at all in their fingerprint.
const FINGERPRINT_MIN_CHARS: usize = 12;
const ID_RULE: &str = "must be 1..=64 characters of [A-Za-z0-9._-], not starting with '.'";
const BASE_URL_RULE: &str = "must be an http:// or https:// URL without query or fragment";
const REDIS_SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];

/// An upstream API key or the admin token. `Debug`, `Display` and `Serialize` print `*****`, so a
/// secret cannot leak through a log line, `{:?}` of a config, or an admin JSON answer.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it: the upstream `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A masked form for humans, like `sk-…9f3a`: a known provider prefix, then the last four
    /// characters. Secrets shorter than 12 characters show only `…`.
    pub fn fingerprint(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() < FINGERPRINT_MIN_CHARS {
            return "…".to_string();
        }
        let prefix = KNOWN_PREFIXES
            .iter()
            .find(|p| self.0.starts_with(*p))
            .map_or("", |p| *p);
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{prefix}…{tail}")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(MASK)
    }
}

/// Constant-time comparison, so comparing a presented token does not leak a matching prefix.
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

/// The whole validated configuration. Built only by [`Config::load`] / [`Config::from_toml_str`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub admin: AdminConfig,
    pub clients: Vec<ClientConfig>,
    pub pools: Vec<PoolConfig>,
}

/// `[server]`: where keygate listens and how much it accepts from a client.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// A separate listener for `/metrics`; `None` serves it on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    pub max_body_bytes: usize,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace_s: u64,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub max_header_bytes: usize,
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
        }
    }
}

/// `[store]`: where key state lives. At most one of `redis_url`, `sentinels`, `cluster_nodes`;
/// none of them selects the embedded (single-replica) store.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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
    /// How often a degraded replica checks whether the store is back.
    pub probe_interval_ms: u64,
    /// How long a state snapshot (metrics, admin listing) may be reused; 0 disables the cache.
    pub snapshot_cache_ms: u64,
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
            probe_interval_ms: 500,
            snapshot_cache_ms: 1000,
        }
    }
}

/// `[admin]`: the admin API is on only when a token was found (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// The variable the token was read from; `None` when configured as `""`.
    pub token_env: Option<String>,
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token_env: Some(DEFAULT_ADMIN_TOKEN_ENV.to_string()),
            token: None,
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
    pub canary: CanaryConfig,
    pub keys: Vec<KeyConfig>,
}

/// `[pools.policy]`: how the key state machine of DESIGN section 2 reacts to outcomes.
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
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 2000,
            first_byte_ms: 30_000,
            total_ms: 300_000,
        }
    }
}

/// `[pools.canary]`: gray routing of DESIGN section 4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryConfig {
    pub group: String,
    /// Share of unforced traffic sent to the canary group (0..=100).
    pub percent: u8,
    /// When the canary group has no selectable key, serve the request from stable.
    pub fallback: bool,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        CanaryConfig {
            group: "canary".to_string(),
            percent: 0,
            fallback: true,
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
            .map(|raw| resolve_admin(raw, env));
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
                pools,
            }),
            _ => Err(ctx.into_error()),
        }
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
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

/// The lowercase hex SHA-256 of a client token, as `[[clients]] token_sha256` expects.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

// ---- environment overrides ----

/// How an override's text becomes a TOML value.
#[derive(Clone, Copy)]
enum Kind {
    /// A non-negative integer.
    Integer,
    Text,
    /// Text; empty removes the field (back to its default, `None`).
    OptionalText,
    /// Comma-separated text.
    List,
}

/// Every `(section, field)` that `KEYGATE_<SECTION>__<FIELD>` may override.
const ENV_OVERRIDES: [(&str, &str, Kind); 18] = [
    ("server", "listen", Kind::Text),
    ("server", "metrics_listen", Kind::OptionalText),
    ("server", "max_body_bytes", Kind::Integer),
    ("server", "shutdown_grace_s", Kind::Integer),
    ("server", "header_read_timeout_ms", Kind::Integer),
    ("server", "body_read_timeout_ms", Kind::Integer),
    ("server", "max_header_bytes", Kind::Integer),
    ("store", "redis_url", Kind::OptionalText),
    ("store", "sentinels", Kind::List),
    ("store", "sentinel_master", Kind::OptionalText),
    ("store", "cluster_nodes", Kind::List),
    ("store", "prefix", Kind::Text),
    ("store", "timeout_ms", Kind::Integer),
    ("store", "connect_timeout_ms", Kind::Integer),
    ("store", "degraded_after_failures", Kind::Integer),
    ("store", "probe_interval_ms", Kind::Integer),
    ("store", "snapshot_cache_ms", Kind::Integer),
    ("admin", "token_env", Kind::Text),
];

const OVERRIDE_SECTIONS: [&str; 3] = ["KEYGATE_SERVER__", "KEYGATE_STORE__", "KEYGATE_ADMIN__"];

fn override_var(section: &str, field: &str) -> String {
    format!(
        "KEYGATE_{}__{}",
        section.to_ascii_uppercase(),
        field.to_ascii_uppercase()
    )
}

fn apply_env_overrides(
    root: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
    ctx: &mut Ctx,
) {
    for (section, field, kind) in ENV_OVERRIDES {
        let var = override_var(section, field);
        let Some(text) = env(&var) else { continue };
        let path = format!("{section}.{field}");
        let Some(value) = parse_override(kind, &text) else {
            let message = format!("{var}={text:?} is not a non-negative integer");
            ctx.problems.push(Problem::new(path, message));
            continue;
        };
        let entry = root
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        // A section that is not a table is reported when it is decoded.
        let Some(table) = entry.as_table_mut() else {
            continue;
        };
        match value {
            Some(value) => table.insert(field.to_string(), value),
            None => table.remove(field),
        };
        ctx.overridden.insert(path, var);
    }
}

/// The value for the tree (`Some(None)`: remove the field), or `None` if `text` does not parse.
fn parse_override(kind: Kind, text: &str) -> Option<Option<toml::Value>> {
    let value = match kind {
        Kind::Integer => {
            let n = text.trim().parse::<i64>().ok().filter(|n| *n >= 0)?;
            Some(toml::Value::Integer(n))
        }
        Kind::Text => Some(toml::Value::String(text.to_string())),
        Kind::OptionalText if text.trim().is_empty() => None,
        Kind::OptionalText => Some(toml::Value::String(text.trim().to_string())),
        Kind::List => Some(toml::Value::Array(
            (text.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        )),
    };
    Some(value)
}

/// Problems for override-looking variables that match no field (typos).
fn stray_overrides(names: impl Iterator<Item = String>) -> Vec<Problem> {
    let known: HashSet<String> = (ENV_OVERRIDES.iter())
        .map(|(section, field, _)| override_var(section, field))
        .collect();
    let mut stray: Vec<String> = names
        .filter(|n| OVERRIDE_SECTIONS.iter().any(|p| n.starts_with(p)) && !known.contains(n))
        .collect();
    stray.sort();
    (stray.into_iter())
        .map(|n| Problem::new(n, "matches no overridable field (see keygate::config docs)"))
        .collect()
}

// ---- decoding ----

/// The problems found so far, and what is needed to describe them.
struct Ctx<'a> {
    text: &'a str,
    problems: Vec<Problem>,
    /// Config paths set by an env override, and the variable that set them.
    overridden: HashMap<String, String>,
    /// Config path → byte offset of its value in `text`; built on the first decode error.
    offsets: OnceCell<HashMap<String, usize>>,
}

impl<'a> Ctx<'a> {
    fn new(text: &'a str) -> Ctx<'a> {
        Ctx {
            text,
            problems: Vec::new(),
            overridden: HashMap::new(),
            offsets: OnceCell::new(),
        }
    }

    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    /// Decodes `value` (found at `path`) into `T`, or records why it cannot be.
    fn decode<T: DeserializeOwned>(&mut self, value: toml::Value, path: &str) -> Option<T> {
        match value.try_into::<T>() {
            Ok(decoded) => Some(decoded),
            Err(error) => {
                let (path, message) = describe_decode_error(&error, path);
                self.problem_with_line(path, message);
                None
            }
        }
    }

    /// Records a problem, adding the line of `path` (or of its nearest ancestor) in the text.
    fn problem_with_line(&mut self, path: String, message: String) {
        let offsets = self.offsets.get_or_init(|| span_offsets(self.text));
        let mut probe = path.as_str();
        let offset = loop {
            if let Some(offset) = offsets.get(probe) {
                break Some(*offset);
            }
            match probe.rfind(['.', '[']) {
                Some(cut) => probe = &probe[..cut],
                None => break None,
            }
        };
        let message = match offset {
            Some(offset) if !self.overridden.contains_key(&path) => {
                format!("{message} (line {})", line_at(self.text, offset))
            }
            _ => message,
        };
        self.problem(path, message);
    }

    fn into_error(self) -> ConfigError {
        let overridden = self.overridden;
        let problems = (self.problems.into_iter())
            .map(|mut p| {
                if let Some(var) = overridden.get(&p.path) {
                    p.message = format!("{} (set by {var})", p.message);
                }
                p
            })
            .collect();
        ConfigError { problems }
    }
}

/// The path and message of a serde error from decoding the value at `prefix`.
fn describe_decode_error(error: &toml::de::Error, prefix: &str) -> (String, String) {
    let message = error.message();
    // toml reports the keys below `prefix` only in its Display form: "...\nin `a.b`\n".
    let shown = error.to_string();
    let keys = (shown.lines().rev())
        .find_map(|l| l.strip_prefix("in `").and_then(|r| r.strip_suffix('`')));
    let path = keys.map_or_else(|| prefix.to_string(), |keys| join_path(prefix, keys));
    if let Some((field, rest)) = backticked(message, "unknown field `") {
        let rest = rest.trim_start_matches([',', ' ']);
        let hint = if rest.is_empty() {
            String::new()
        } else {
            format!("; {rest}")
        };
        return (join_path(&path, field), format!("unknown field{hint}"));
    }
    if let Some((field, _)) = backticked(message, "missing field `") {
        return (join_path(&path, field), "is required".to_string());
    }
    (path, message.to_string())
}

/// For `message` = `{start}name` + "`" + rest, returns `(name, rest)`.
fn backticked<'m>(message: &'m str, start: &str) -> Option<(&'m str, &'m str)> {
    message.strip_prefix(start)?.split_once('`')
}

fn join_path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let at = match error.span() {
        Some(span) => {
            let line = line_at(text, span.start);
            let line_start = text.get(..span.start).and_then(|t| t.rfind('\n'));
            let column = span.start - line_start.map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {column}")
        }
        None => String::new(),
    };
    let message = format!("TOML syntax error{at}: {}", error.message().trim());
    ConfigError {
        problems: vec![Problem::new("", message)],
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A TOML tree that keeps the byte span of every value, to map config paths to lines.
enum SpanNode {
    Table(Vec<(String, toml::Spanned<SpanNode>)>),
    Array(Vec<toml::Spanned<SpanNode>>),
    Leaf,
}

impl<'de> Deserialize<'de> for SpanNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SpanNodeVisitor)
    }
}

struct SpanNodeVisitor;

impl<'de> Visitor<'de> for SpanNodeVisitor {
    type Value = SpanNode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<SpanNode, E> {
        Ok(SpanNode::Leaf)
    }
    fn visit_i64<E>(self, _: i64) -> Result<SpanNode, E> {
        Ok(SpanNode::Leaf)
    }
    fn visit_u64<E>(self, _: u64) -> Result<SpanNode, E> {
        Ok(SpanNode::Leaf)
    }
    fn visit_f64<E>(self, _: f64) -> Result<SpanNode, E> {
        Ok(SpanNode::Leaf)
    }
    fn visit_str<E>(self, _: &str) -> Result<SpanNode, E> {
        Ok(SpanNode::Leaf)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SpanNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(SpanNode::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SpanNode, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(SpanNode::Table(entries))
    }
}

/// Config path (`pools[0].keys[1].weight`) → byte offset of its value, for every value in `text`.
fn span_offsets(text: &str) -> HashMap<String, usize> {
    fn walk(node: &SpanNode, path: &str, out: &mut HashMap<String, usize>) {
        let children: Vec<(String, &toml::Spanned<SpanNode>)> = match node {
            SpanNode::Table(entries) => (entries.iter())
                .map(|(key, child)| (join_path(path, key), child))
                .collect(),
            SpanNode::Array(items) => (items.iter().enumerate())
                .map(|(i, child)| (format!("{path}[{i}]"), child))
                .collect(),
            SpanNode::Leaf => Vec::new(),
        };
        for (child_path, child) in children {
            out.insert(child_path.clone(), child.span().start);
            walk(child.get_ref(), &child_path, out);
        }
    }
    let mut out = HashMap::new();
    if let Ok(root) = toml::from_str::<SpanNode>(text) {
        walk(&root, "", &mut out);
    }
    out
}

/// The top-level sections, each still a TOML value so they decode (and fail) separately.
struct Sections {
    server: toml::Value,
    store: toml::Value,
    admin: toml::Value,
    clients: Vec<toml::Table>,
    /// `None` when `pools` is present but not an array of tables (already reported).
    pools: Option<Vec<toml::Table>>,
}

fn split_sections(root: toml::Table, ctx: &mut Ctx) -> Sections {
    let empty = || toml::Value::Table(toml::Table::new());
    let mut sections = Sections {
        server: empty(),
        store: empty(),
        admin: empty(),
        clients: Vec::new(),
        pools: Some(Vec::new()),
    };
    for (key, value) in root {
        match key.as_str() {
            "server" => sections.server = value,
            "store" => sections.store = value,
            "admin" => sections.admin = value,
            "clients" => sections.clients = ctx.decode(value, "clients").unwrap_or_default(),
            "pools" => sections.pools = ctx.decode(value, "pools"),
            _ => ctx.problem_with_line(
                key,
                "unknown section (expected server, store, admin, clients or pools)".to_string(),
            ),
        }
    }
    sections
}

// ---- raw shapes of the sections that differ from their public types ----

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAdmin {
    token_env: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            token_env: DEFAULT_ADMIN_TOKEN_ENV.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Option<String>,
    token_sha256: Option<String>,
    #[serde(default)]
    pools: Vec<String>,
}

/// Sub-tables and keys stay TOML values so each decodes, and reports, on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: Option<String>,
    base_url: Option<String>,
    #[serde(default = "default_max_attempts")]
    max_attempts: i64,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    fallbacks: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    policy: toml::Table,
    #[serde(default)]
    timeouts: toml::Table,
    #[serde(default)]
    canary: toml::Table,
    #[serde(default)]
    keys: Vec<toml::Table>,
}

fn default_max_attempts() -> i64 {
    3
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawCanary {
    group: String,
    percent: i64,
    fallback: bool,
}

impl Default for RawCanary {
    fn default() -> Self {
        let canary = CanaryConfig::default();
        RawCanary {
            group: canary.group,
            percent: i64::from(canary.percent),
            fallback: canary.fallback,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: Option<String>,
    /// Inline secret: for tests only, a real config should not hold secrets.
    secret: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    #[serde(default = "default_weight")]
    weight: i64,
    group: Option<String>,
}

fn default_weight() -> i64 {
    1
}

// ---- checks, one section at a time ----

fn check_server(server: &ServerConfig, ctx: &mut Ctx) {
    let at_least_one = [
        ("max_body_bytes", server.max_body_bytes as u64),
        ("header_read_timeout_ms", server.header_read_timeout_ms),
        ("body_read_timeout_ms", server.body_read_timeout_ms),
        ("max_header_bytes", server.max_header_bytes as u64),
    ];
    for (field, value) in at_least_one {
        if value == 0 {
            ctx.problem(format!("server.{field}"), "must be at least 1");
        }
    }
    if server.metrics_listen == Some(server.listen) {
        ctx.problem("server.metrics_listen", "must differ from server.listen");
    }
}

/// Checks the store section; an empty `redis_url` or `sentinel_master` becomes `None`.
fn check_store(mut store: StoreConfig, ctx: &mut Ctx) -> StoreConfig {
    store.redis_url = store.redis_url.filter(|u| !u.trim().is_empty());
    store.sentinel_master = store.sentinel_master.filter(|m| !m.trim().is_empty());
    if let Some(url) = &store.redis_url {
        if !REDIS_SCHEMES
            .iter()
            .any(|s| url.len() > s.len() && url.starts_with(s))
        {
            let message = "must start with redis://, rediss://, redis+unix:// or unix://";
            ctx.problem("store.redis_url", message);
        }
    }
    for (field, nodes) in [
        ("sentinels", &store.sentinels),
        ("cluster_nodes", &store.cluster_nodes),
    ] {
        for (i, node) in nodes.iter().enumerate() {
            if !is_node_address(node) {
                ctx.problem(
                    format!("store.{field}[{i}]"),
                    "must be host:port or a redis:// URL",
                );
            }
        }
    }
    let backends = [
        store.redis_url.is_some(),
        !store.sentinels.is_empty(),
        !store.cluster_nodes.is_empty(),
    ];
    if backends.iter().filter(|set| **set).count() > 1 {
        ctx.problem(
            "store",
            "set at most one of redis_url, sentinels, cluster_nodes",
        );
    }
    match (store.sentinels.is_empty(), store.sentinel_master.is_some()) {
        (false, false) => ctx.problem("store.sentinel_master", "is required with store.sentinels"),
        (true, true) => ctx.problem("store.sentinel_master", "is only used with store.sentinels"),
        _ => {}
    }
    if !is_valid_id(&store.prefix) {
        ctx.problem("store.prefix", ID_RULE);
    }
    let at_least_one = [
        ("timeout_ms", store.timeout_ms),
        ("connect_timeout_ms", store.connect_timeout_ms),
        (
            "degraded_after_failures",
            u64::from(store.degraded_after_failures),
        ),
        ("probe_interval_ms", store.probe_interval_ms),
    ];
    for (field, value) in at_least_one {
        if value == 0 {
            ctx.problem(format!("store.{field}"), "must be at least 1");
        }
    }
    store
}

/// `host:port` (port 1..=65535, IPv6 in brackets) or a `redis://` / `rediss://` URL.
fn is_node_address(node: &str) -> bool {
    if let Some(rest) = node
        .strip_prefix("redis://")
        .or_else(|| node.strip_prefix("rediss://"))
    {
        return !rest.is_empty() && !rest.contains(char::is_whitespace);
    }
    match node.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(|c: char| c.is_whitespace() || c == '/')
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

fn resolve_admin(raw: RawAdmin, env: &dyn Fn(&str) -> Option<String>) -> AdminConfig {
    let token_env = Some(raw.token_env).filter(|name| !name.is_empty());
    let token = (token_env.as_deref())
        .and_then(env)
        .map(|token| token.trim().to_string())
        .filter(|token| !token.is_empty())
        .map(Secret::new);
    AdminConfig { token_env, token }
}

/// Remembers where each name was first seen, to report a duplicate with both places.
struct FirstSeen<K>(HashMap<K, String>);

impl<K: Hash + Eq> FirstSeen<K> {
    fn new() -> Self {
        FirstSeen(HashMap::new())
    }

    /// Where `key` was seen before, if it was; otherwise remembers `path` for it.
    fn earlier(&mut self, key: K, path: &str) -> Option<String> {
        if let Some(first) = self.0.get(&key) {
            return Some(first.clone());
        }
        self.0.insert(key, path.to_string());
        None
    }
}

/// A required id-like field: `None` (problem recorded) when missing or malformed.
fn required_id(value: Option<String>, path: String, ctx: &mut Ctx) -> Option<String> {
    match value {
        None => ctx.problem(path, "is required"),
        Some(id) if !is_valid_id(&id) => ctx.problem(path, ID_RULE),
        Some(id) => return Some(id),
    }
    None
}

fn check_clients(
    tables: Vec<toml::Table>,
    pool_names: &HashSet<String>,
    ctx: &mut Ctx,
) -> Vec<ClientConfig> {
    let mut names = FirstSeen::new();
    let mut tokens = FirstSeen::new();
    let mut clients = Vec::new();
    for (i, table) in tables.into_iter().enumerate() {
        let path = format!("clients[{i}]");
        let Some(raw) = ctx.decode::<RawClient>(toml::Value::Table(table), &path) else {
            continue;
        };
        let name = required_id(raw.name, format!("{path}.name"), ctx);
        let first = name
            .as_ref()
            .and_then(|n| Some((n, names.earlier(n.clone(), &path)?)));
        if let Some((name, first)) = first {
            let message = format!("duplicate client {name:?} (also {first})");
            ctx.problem(format!("{path}.name"), message);
        }
        let token = parse_token_hash(raw.token_sha256, &format!("{path}.token_sha256"), ctx);
        if let Some(first) = token.and_then(|t| tokens.earlier(t, &path)) {
            ctx.problem(
                format!("{path}.token_sha256"),
                format!("same token as {first}"),
            );
        }
        if raw.pools.is_empty() {
            ctx.problem(format!("{path}.pools"), "at least one pool is required");
        }
        for (j, pool) in raw.pools.iter().enumerate() {
            if !pool_names.contains(pool) {
                ctx.problem(
                    format!("{path}.pools[{j}]"),
                    format!("unknown pool {pool:?}"),
                );
            }
        }
        if let (Some(name), Some(token_sha256)) = (name, token) {
            let pools = raw.pools;
            clients.push(ClientConfig {
                name,
                token_sha256,
                pools,
            });
        }
    }
    clients
}

fn parse_token_hash(value: Option<String>, path: &str, ctx: &mut Ctx) -> Option<[u8; 32]> {
    let Some(text) = value else {
        ctx.problem(path, "is required");
        return None;
    };
    let mut hash = [0u8; 32];
    match hex::decode_to_slice(text.trim(), &mut hash) {
        Ok(()) => Some(hash),
        Err(_) => {
            ctx.problem(path, "must be 64 hex characters");
            None
        }
    }
}

fn check_pools(
    tables: Option<Vec<toml::Table>>,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: &Path,
    ctx: &mut Ctx,
) -> Vec<PoolConfig> {
    let Some(tables) = tables else {
        return Vec::new();
    };
    if tables.is_empty() {
        ctx.problem("pools", "at least one pool is required");
    }
    let mut names = FirstSeen::new();
    let mut pools = Vec::new();
    for (i, table) in tables.into_iter().enumerate() {
        let path = format!("pools[{i}]");
        let Some(raw) = ctx.decode::<RawPool>(toml::Value::Table(table), &path) else {
            continue;
        };
        let Some(pool) = check_pool(raw, &path, env, base_dir, ctx) else {
            continue;
        };
        if let Some(first) = names.earlier(pool.name.clone(), &path) {
            let message = format!("duplicate pool {:?} (also {first})", pool.name);
            ctx.problem(format!("{path}.name"), message);
        }
        pools.push(pool);
    }
    pools
}

fn check_pool(
    raw: RawPool,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: &Path,
    ctx: &mut Ctx,
) -> Option<PoolConfig> {
    let name = required_id(raw.name, format!("{path}.name"), ctx);
    let base_url = match raw.base_url {
        None => {
            ctx.problem(format!("{path}.base_url"), "is required");
            None
        }
        Some(url) => normalize_base_url(&url).or_else(|| {
            ctx.problem(format!("{path}.base_url"), BASE_URL_RULE);
            None
        }),
    };
    let max_attempts = u32::try_from(raw.max_attempts)
        .ok()
        .filter(|n| (1..=10).contains(n));
    if max_attempts.is_none() {
        ctx.problem(format!("{path}.max_attempts"), "must be 1..=10");
    }
    check_models(&raw.models, &raw.fallbacks, path, ctx);
    let policy = ctx.decode::<Policy>(toml::Value::Table(raw.policy), &format!("{path}.policy"));
    if let Some(policy) = &policy {
        check_policy(policy, path, ctx);
    }
    let timeouts_path = format!("{path}.timeouts");
    let timeouts = ctx.decode::<Timeouts>(toml::Value::Table(raw.timeouts), &timeouts_path);
    if let Some(timeouts) = &timeouts {
        check_timeouts(timeouts, &timeouts_path, ctx);
    }
    let canary_path = format!("{path}.canary");
    let canary = (ctx.decode::<RawCanary>(toml::Value::Table(raw.canary), &canary_path))
        .and_then(|raw| check_canary(raw, &canary_path, ctx));
    let canary_group = canary.as_ref().map(|c| c.group.as_str());
    let keys = check_keys(raw.keys, path, canary_group, env, base_dir, ctx);
    Some(PoolConfig {
        name: name?,
        base_url: base_url?,
        max_attempts: max_attempts?,
        models: raw.models,
        fallbacks: raw.fallbacks,
        policy: policy?,
        timeouts: timeouts?,
        canary: canary?,
        keys,
    })
}

/// `url` without trailing slashes, if it is an http(s) URL with a host and no query or fragment.
fn normalize_base_url(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || c == '?' || c == '#';
    if host.is_empty() || url.contains(bad_char) {
        return None;
    }
    Some(url.trim_end_matches('/').to_string())
}

fn check_models(
    models: &[String],
    fallbacks: &BTreeMap<String, Vec<String>>,
    path: &str,
    ctx: &mut Ctx,
) {
    for (i, model) in models.iter().enumerate() {
        if model.trim().is_empty() {
            ctx.problem(format!("{path}.models[{i}]"), "must not be empty");
        }
    }
    let allowed = |model: &String| models.is_empty() || models.contains(model);
    for (model, targets) in fallbacks {
        let model_path = format!("{path}.fallbacks.{model}");
        if !allowed(model) {
            let message = format!("model {model:?} is not in {path}.models");
            ctx.problem(model_path.clone(), message);
        }
        for (j, target) in targets.iter().enumerate() {
            if target == model {
                ctx.problem(
                    format!("{model_path}[{j}]"),
                    "a model cannot fall back to itself",
                );
            } else if !allowed(target) {
                let message = format!("model {target:?} is not in {path}.models");
                ctx.problem(format!("{model_path}[{j}]"), message);
            }
        }
    }
}

fn check_policy(policy: &Policy, pool_path: &str, ctx: &mut Ctx) {
    let at_least_one = [
        ("cooldown_default_s", policy.cooldown_default_s),
        ("cooldown_max_s", policy.cooldown_max_s),
        ("breaker_errors", u64::from(policy.breaker_errors)),
        ("breaker_window_s", policy.breaker_window_s),
        ("breaker_open_s", policy.breaker_open_s),
        ("quota_cooldown_s", policy.quota_cooldown_s),
        ("probe_lease_s", policy.probe_lease_s),
    ];
    for (field, value) in at_least_one {
        if value == 0 {
            ctx.problem(format!("{pool_path}.policy.{field}"), "must be at least 1");
        }
    }
    if policy.cooldown_default_s > policy.cooldown_max_s {
        let message = format!("must not exceed cooldown_max_s ({})", policy.cooldown_max_s);
        ctx.problem(format!("{pool_path}.policy.cooldown_default_s"), message);
    }
}

fn check_timeouts(timeouts: &Timeouts, path: &str, ctx: &mut Ctx) {
    let fields = [
        ("connect_ms", timeouts.connect_ms),
        ("first_byte_ms", timeouts.first_byte_ms),
        ("total_ms", timeouts.total_ms),
    ];
    for (field, value) in fields {
        if value == 0 {
            ctx.problem(format!("{path}.{field}"), "must be at least 1");
        } else if value > timeouts.total_ms && timeouts.total_ms > 0 {
            let message = format!("must not exceed total_ms ({})", timeouts.total_ms);
            ctx.problem(format!("{path}.{field}"), message);
        }
    }
}

fn check_canary(raw: RawCanary, path: &str, ctx: &mut Ctx) -> Option<CanaryConfig> {
    let group_ok = if !is_valid_id(&raw.group) {
        ctx.problem(format!("{path}.group"), ID_RULE);
        false
    } else if raw.group == STABLE_GROUP {
        ctx.problem(format!("{path}.group"), "must differ from \"stable\"");
        false
    } else {
        true
    };
    let percent = u8::try_from(raw.percent).ok().filter(|p| *p <= 100);
    if percent.is_none() {
        ctx.problem(format!("{path}.percent"), "must be 0..=100");
    }
    let percent = percent?;
    group_ok.then_some(CanaryConfig {
        group: raw.group,
        percent,
        fallback: raw.fallback,
    })
}

fn check_keys(
    tables: Vec<toml::Table>,
    pool_path: &str,
    canary_group: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: &Path,
    ctx: &mut Ctx,
) -> Vec<KeyConfig> {
    let mut ids = FirstSeen::new();
    let mut keys = Vec::new();
    for (i, table) in tables.into_iter().enumerate() {
        let path = format!("{pool_path}.keys[{i}]");
        let Some(raw) = ctx.decode::<RawKey>(toml::Value::Table(table), &path) else {
            continue;
        };
        let id = required_id(raw.id.clone(), format!("{path}.id"), ctx);
        let first = id
            .as_ref()
            .and_then(|id| Some((id, ids.earlier(id.clone(), &path)?)));
        if let Some((id, first)) = first {
            let message = format!("duplicate id {id:?} (also {first})");
            ctx.problem(format!("{path}.id"), message);
        }
        let weight = u32::try_from(raw.weight).ok().filter(|w| *w <= 1000);
        if weight.is_none() {
            ctx.problem(format!("{path}.weight"), "must be 0..=1000");
        }
        let group = check_key_group(raw.group.clone(), &path, canary_group, ctx);
        let secret = resolve_secret(&raw, &path, env, base_dir, ctx);
        if let (Some(id), Some(weight), Some(group), Some((secret, secret_file))) =
            (id, weight, group, secret)
        {
            let secret_env = raw.secret_env;
            keys.push(KeyConfig {
                id,
                secret,
                secret_env,
                secret_file,
                weight,
                group,
            });
        }
    }
    keys
}

/// The key's group: `stable` unless given; given, it must be `stable` or the canary group
/// (when the canary section itself is broken, only the id rule is checked).
fn check_key_group(
    group: Option<String>,
    key_path: &str,
    canary_group: Option<&str>,
    ctx: &mut Ctx,
) -> Option<String> {
    let group = group.unwrap_or_else(|| STABLE_GROUP.to_string());
    let path = format!("{key_path}.group");
    match canary_group {
        _ if group == STABLE_GROUP => return Some(group),
        Some(canary) if group == canary => return Some(group),
        Some(canary) => {
            let message = format!("must be \"stable\" or the pool's canary group {canary:?}");
            ctx.problem(path, message);
        }
        None if !is_valid_id(&group) => ctx.problem(path, ID_RULE),
        None => {}
    }
    None
}

/// The key's secret, from exactly one of `secret_env`, `secret_file` or (tests) `secret`,
/// with the resolved file path. Messages name the source, never the secret's content.
fn resolve_secret(
    raw: &RawKey,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: &Path,
    ctx: &mut Ctx,
) -> Option<(Secret, Option<PathBuf>)> {
    let sources = [
        raw.secret.is_some(),
        raw.secret_env.is_some(),
        raw.secret_file.is_some(),
    ];
    match sources.iter().filter(|set| **set).count() {
        0 => ctx.problem(path, "needs one of secret_env or secret_file"),
        1 => {}
        _ => ctx.problem(path, "set only one of secret_env, secret_file and secret"),
    }
    let (source, value, file) = if let Some(secret) = &raw.secret {
        ("secret", secret.clone(), None)
    } else if let Some(var) = &raw.secret_env {
        let Some(value) = env(var) else {
            let message = format!("environment variable {var} is not set");
            ctx.problem(format!("{path}.secret_env"), message);
            return None;
        };
        ("secret_env", value, None)
    } else {
        let file = base_dir.join(raw.secret_file.as_ref()?);
        match std::fs::read_to_string(&file) {
            Ok(value) => ("secret_file", value, Some(file)),
            Err(e) => {
                let message = format!("cannot read {}: {e}", file.display());
                ctx.problem(format!("{path}.secret_file"), message);
                return None;
            }
        }
    };
    let value = value.trim();
    let problem = if value.is_empty() {
        "the secret is empty"
    } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
        "the secret must be printable ASCII without spaces"
    } else if sources.iter().filter(|set| **set).count() == 1 {
        return Some((Secret::new(value), file));
    } else {
        return None;
    };
    ctx.problem(format!("{path}.{source}"), problem);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of DESIGN section 7, with a real token hash (of "test").
    const DESIGN_EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:8080"
max_body_bytes = 16777216
shutdown_grace_s = 30

[store]
redis_url = "redis://127.0.0.1:6379/0"
prefix = "kg"
timeout_ms = 50

[admin]
token_env = "KEYGATE_ADMIN_TOKEN"

[[clients]]
name = "support-bot"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
pools = ["prod"]

[[pools]]
name = "prod"
base_url = "https://api.holysheep.ai/v1"
max_attempts = 3
models = ["gpt-4.1", "deepseek-v3.2"]
fallbacks = { "gpt-4.1" = ["deepseek-v3.2"] }

[pools.policy]
cooldown_default_s = 60
cooldown_max_s = 900
breaker_errors = 5
breaker_window_s = 60
breaker_open_s = 30
quota_cooldown_s = 3600

[pools.timeouts]
connect_ms = 2000
first_byte_ms = 30000
total_ms = 300000

[pools.canary]
group = "canary"
percent = 10

[[pools.keys]]
id = "prod-001"
secret_env = "HS_KEY_001"
weight = 3

[[pools.keys]]
id = "prod-004"
secret_env = "HS_KEY_004"
weight = 2
group = "canary"
"#;

    const DESIGN_ENV: [(&str, &str); 3] = [
        ("HS_KEY_001", "sk-abcdefghijk0001"),
        ("HS_KEY_004", "sk-abcdefghijk0004"),
        ("KEYGATE_ADMIN_TOKEN", "admin-token-0123456789"),
    ];

    const MINIMAL: &str = r#"
[[pools]]
name = "prod"
base_url = "https://api.example.com/v1/"

[[pools.keys]]
id = "prod-001"
secret = "sk-inline-test-0001"
"#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_toml_str(
            text,
            &|name| vars.get(name).cloned(),
            Path::new("/kg-test-base"),
        )
    }

    fn problems(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        match parse(text, env) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(error) => error.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[track_caller]
    fn assert_problem(text: &str, expected: &str) {
        let found = problems(text, &[]);
        assert!(
            found.iter().any(|p| p == expected),
            "{expected:?} not in {found:#?}"
        );
    }

    /// A pool `prod` with the given extra pool lines and keys (one TOML table per key body).
    fn pool_with(extra: &str, keys: &[&str]) -> String {
        let mut text =
            format!("[[pools]]\nname = \"prod\"\nbase_url = \"https://x.test/v1\"\n{extra}\n");
        for key in keys {
            text.push_str(&format!("[[pools.keys]]\n{key}\n"));
        }
        text
    }

    #[test]
    fn design_example_parses_with_its_values() {
        let config = parse(DESIGN_EXAMPLE, &DESIGN_ENV).expect("valid");
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.server.max_body_bytes, 16 * 1024 * 1024);
        assert_eq!(
            config.store.redis_url.as_deref(),
            Some("redis://127.0.0.1:6379/0")
        );
        assert_eq!(config.store.timeout_ms, 50);
        assert_eq!(
            config.admin.token,
            Some(Secret::new("admin-token-0123456789"))
        );
        assert_eq!(config.clients[0].name, "support-bot");
        assert_eq!(
            hex::encode(config.clients[0].token_sha256),
            hash_token("test")
        );
        assert_eq!(config.clients[0].pools, ["prod"]);
        let pool = config.pool("prod").expect("pool prod");
        assert_eq!(pool.base_url, "https://api.holysheep.ai/v1");
        assert_eq!(pool.max_attempts, 3);
        assert_eq!(pool.models, ["gpt-4.1", "deepseek-v3.2"]);
        assert_eq!(pool.fallbacks["gpt-4.1"], ["deepseek-v3.2"]);
        assert_eq!(pool.policy, Policy::default());
        assert_eq!(pool.timeouts, Timeouts::default());
        assert_eq!(
            (pool.canary.group.as_str(), pool.canary.percent),
            ("canary", 10)
        );
        assert!(pool.canary.fallback);
        let key = &pool.keys[1];
        assert_eq!(
            (key.id.as_str(), key.weight, key.group.as_str()),
            ("prod-004", 2, "canary")
        );
        assert_eq!(key.secret.expose(), "sk-abcdefghijk0004");
        assert_eq!(key.secret_env.as_deref(), Some("HS_KEY_004"));
        assert_eq!(pool.keys[0].group, STABLE_GROUP);
        assert!(config.pool("dev").is_none());
    }

    #[test]
    fn omitted_fields_take_their_defaults() {
        let config = parse(MINIMAL, &[]).expect("valid");
        assert_eq!(config.server, ServerConfig::default());
        assert_eq!(
            config.server.listen,
            SocketAddr::from(([127, 0, 0, 1], 8080))
        );
        assert_eq!(config.store, StoreConfig::default());
        assert_eq!(config.store.prefix, "kg");
        assert_eq!(config.admin, AdminConfig::default());
        assert!(config.clients.is_empty());
        let pool = &config.pools[0];
        assert_eq!(
            pool.base_url, "https://api.example.com/v1",
            "trailing slash dropped"
        );
        assert_eq!(pool.max_attempts, 3);
        assert_eq!(pool.canary, CanaryConfig::default());
        assert_eq!(
            (pool.keys[0].weight, pool.keys[0].group.as_str()),
            (1, "stable")
        );
        assert_eq!(pool.keys[0].secret_env, None);
    }

    #[test]
    fn key_problems_name_their_exact_paths() {
        let key = |id: &str| format!("id = \"{id}\"\nsecret = \"sk-test-secret-1\"");
        let mut text = pool_with("", &[&key("a-1")]);
        text.push_str(
            &pool_with(
                "",
                &[
                    &key("b-1"),
                    &key("b-2"),
                    &key("b-3"),
                    &format!("{}\nweight = 5000", key("b-4")),
                ],
            )
            .replace("\"prod\"", "\"other\""),
        );
        assert_problem(&text, "pools[1].keys[3].weight: must be 0..=1000");
        let text = pool_with("", &[&key("prod-001"), &key("prod-002"), &key("prod-001")]);
        assert_problem(
            &text,
            "pools[0].keys[2].id: duplicate id \"prod-001\" (also pools[0].keys[0])",
        );
        let text = pool_with("", &[&key("k1"), "id = \"k2\"\nsecret_env = \"HS_KEY_9\""]);
        assert_problem(
            &text,
            "pools[0].keys[1].secret_env: environment variable HS_KEY_9 is not set",
        );
        let text = pool_with(
            "",
            &[
                &key("k1"),
                "id = \"k2\"\nweight = -1\nsecret = \"sk-x-000000\"",
            ],
        );
        assert_problem(&text, "pools[0].keys[1].weight: must be 0..=1000");
        let text = pool_with("", &[&key("bad id")]);
        assert_problem(&text, &format!("pools[0].keys[0].id: {ID_RULE}"));
        assert_problem(
            &pool_with("", &["secret = \"sk-x-000000\""]),
            "pools[0].keys[0].id: is required",
        );
    }

    #[test]
    fn unreadable_secret_file_names_the_file() {
        let text = pool_with(
            "",
            &[
                "id = \"k1\"\nsecret = \"sk-test-secret-1\"",
                "id = \"k2\"\nsecret_file = \"/kg-missing/hs1\"",
            ],
        );
        let found = problems(&text, &[]);
        let expected = "pools[0].keys[1].secret_file: cannot read /kg-missing/hs1: ";
        assert!(found.iter().any(|p| p.starts_with(expected)), "{found:#?}");
    }

    #[test]
    fn a_key_needs_exactly_one_secret_source() {
        assert_problem(
            &pool_with("", &["id = \"k1\""]),
            "pools[0].keys[0]: needs one of secret_env or secret_file",
        );
        let both = "id = \"k1\"\nsecret_env = \"A\"\nsecret_file = \"/kg-missing/a\"";
        assert_problem(
            &pool_with("", &[both]),
            "pools[0].keys[0]: set only one of secret_env, secret_file and secret",
        );
    }

    #[test]
    fn a_malformed_secret_is_reported_without_its_content() {
        let text = pool_with("", &["id = \"k1\"\nsecret_env = \"HS_KEY_1\""]);
        let found = problems(&text, &[("HS_KEY_1", "sk-leaky secret")]);
        assert_eq!(
            found,
            ["pools[0].keys[0].secret_env: the secret must be printable ASCII without spaces"]
        );
        let found = problems(&text, &[("HS_KEY_1", " ")]);
        assert_eq!(found, ["pools[0].keys[0].secret_env: the secret is empty"]);
    }

    #[test]
    fn secret_file_is_read_relative_to_the_base_dir_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hs1"), "sk-from-file-0001\n").unwrap();
        let text = pool_with("", &["id = \"k1\"\nsecret_file = \"hs1\""]);
        let config = Config::from_toml_str(&text, &|_| None, dir.path()).expect("valid");
        let key = &config.pools[0].keys[0];
        assert_eq!(key.secret.expose(), "sk-from-file-0001");
        assert_eq!(
            key.secret_file.as_deref(),
            Some(dir.path().join("hs1").as_path())
        );
    }

    #[test]
    fn load_reads_the_file_and_resolves_secrets_next_to_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hs1"), "sk-from-file-0001").unwrap();
        let text = pool_with("", &["id = \"k1\"\nsecret_file = \"hs1\""]);
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).expect("valid");
        assert_eq!(config.pools[0].keys[0].secret.expose(), "sk-from-file-0001");
        let missing = Config::load(&dir.path().join("nope.toml")).unwrap_err();
        assert!(
            missing.to_string().contains("nope.toml: cannot read: "),
            "{missing}"
        );
    }

    #[test]
    fn client_problems_name_their_exact_paths() {
        let client = |name: &str, hash: &str, pools: &str| {
            format!("[[clients]]\nname = \"{name}\"\ntoken_sha256 = \"{hash}\"\npools = {pools}\n")
        };
        let good = hash_token("a");
        let text = format!("{}{MINIMAL}", client("bot", &good, "[\"dev\"]"));
        assert_problem(&text, "clients[0].pools[0]: unknown pool \"dev\"");
        let text = format!("{}{MINIMAL}", client("bot", "9f86d0", "[\"prod\"]"));
        assert_problem(&text, "clients[0].token_sha256: must be 64 hex characters");
        let text = format!(
            "{}{}{MINIMAL}",
            client("bot", &good, "[\"prod\"]"),
            client("bot", &hash_token("b"), "[\"prod\"]")
        );
        assert_problem(
            &text,
            "clients[1].name: duplicate client \"bot\" (also clients[0])",
        );
        let text = format!(
            "{}{}{MINIMAL}",
            client("a", &good, "[\"prod\"]"),
            client("b", &good, "[\"prod\"]")
        );
        assert_problem(&text, "clients[1].token_sha256: same token as clients[0]");
        let text = format!("{}{MINIMAL}", client("bot", &good, "[]"));
        assert_problem(&text, "clients[0].pools: at least one pool is required");
    }

    #[test]
    fn pool_problems_name_their_exact_paths() {
        let key = "id = \"k1\"\nsecret = \"sk-test-secret-1\"";
        assert_problem(
            &pool_with("[pools.canary]\npercent = 101", &[key]),
            "pools[0].canary.percent: must be 0..=100",
        );
        let canary_key = format!("{key}\ngroup = \"beta\"");
        let keys = [key, key, key, key, canary_key.as_str()].map(str::to_string);
        let keys: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| k.replace("k1", &format!("k{i}")))
            .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_problem(
            &pool_with("", &keys),
            "pools[0].keys[4].group: must be \"stable\" or the pool's canary group \"canary\"",
        );
        let fallbacks = "models = [\"gpt-4.1\"]\nfallbacks = { \"gpt-4.1\" = [\"x\"] }";
        assert_problem(
            &pool_with(fallbacks, &[key]),
            "pools[0].fallbacks.gpt-4.1[0]: model \"x\" is not in pools[0].models",
        );
        let unchecked = "fallbacks = { \"gpt-4.1\" = [\"x\"] }";
        assert!(
            parse(&pool_with(unchecked, &[key]), &[]).is_ok(),
            "no allowlist, no check"
        );
        for url in [
            "ftp://x.test/v1",
            "https://x.test/v1?a=b",
            "https://x.test/v1#top",
            "https:///v1",
            "x.test",
        ] {
            let text = pool_with("", &[key]).replace("https://x.test/v1", url);
            assert_problem(&text, &format!("pools[0].base_url: {BASE_URL_RULE}"));
        }
        let text = format!("{}{}", pool_with("", &[key]), pool_with("", &[key]));
        assert_problem(
            &text,
            "pools[1].name: duplicate pool \"prod\" (also pools[0])",
        );
        assert_problem(
            &pool_with("max_attempts = 0", &[key]),
            "pools[0].max_attempts: must be 1..=10",
        );
        assert_problem(
            &pool_with("max_attempts = 11", &[key]),
            "pools[0].max_attempts: must be 1..=10",
        );
        assert_problem(
            &pool_with("[pools.timeouts]\nconnect_ms = 0", &[key]),
            "pools[0].timeouts.connect_ms: must be at least 1",
        );
        let policy =
            "[pools.policy]\ncooldown_default_s = 60\ncooldown_max_s = 30\nbreaker_errors = 0";
        assert_problem(
            &pool_with(policy, &[key]),
            "pools[0].policy.cooldown_default_s: must not exceed cooldown_max_s (30)",
        );
        assert_problem(
            &pool_with(policy, &[key]),
            "pools[0].policy.breaker_errors: must be at least 1",
        );
        assert!(
            parse(&pool_with("", &[]), &[]).is_ok(),
            "a pool without keys is allowed"
        );
    }

    #[test]
    fn a_config_without_pools_is_rejected() {
        assert_eq!(problems("", &[]), ["pools: at least one pool is required"]);
    }

    #[test]
    fn store_problems_name_their_exact_paths() {
        let with_store = |store: &str| format!("[store]\n{store}\n{MINIMAL}");
        assert_problem(
            &with_store("prefix = \"k{g}\""),
            &format!("store.prefix: {ID_RULE}"),
        );
        assert_problem(
            &with_store("redis_url = \"http://r:6379\""),
            "store.redis_url: must start with redis://, rediss://, redis+unix:// or unix://",
        );
        let two = "redis_url = \"redis://r:6379\"\ncluster_nodes = [\"r1:6379\"]";
        assert_problem(
            &with_store(two),
            "store: set at most one of redis_url, sentinels, cluster_nodes",
        );
        assert_problem(
            &with_store("sentinels = [\"s1:26379\"]"),
            "store.sentinel_master: is required with store.sentinels",
        );
        assert_problem(
            &with_store("cluster_nodes = [\"r1\"]"),
            "store.cluster_nodes[0]: must be host:port or a redis:// URL",
        );
        assert_problem(
            &with_store("timeout_ms = 0"),
            "store.timeout_ms: must be at least 1",
        );
        let sentinel = "sentinels = [\"s1:26379\", \"redis://s2:26379\", \"[::1]:26379\"]\nsentinel_master = \"main\"";
        let config = parse(&with_store(sentinel), &[]).expect("valid sentinel setup");
        assert_eq!(config.store.sentinels.len(), 3);
        let config = parse(&with_store("redis_url = \"\""), &[]).expect("empty url is no url");
        assert_eq!(config.store.redis_url, None);
    }

    #[test]
    fn unknown_fields_and_bad_types_report_path_and_line() {
        let text = pool_with(
            "",
            &["id = \"k1\"\nsecret = \"sk-test-secret-1\"\nwieght = 3"],
        );
        let found = problems(&text, &[]);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].starts_with("pools[0].keys[0].wieght: unknown field; expected one of `id`"),
            "{found:#?}"
        );
        assert!(found[0].ends_with("(line 8)"), "{found:#?}");
        let text = format!("[server]\nmax_body_bytes = \"big\"\n{MINIMAL}");
        assert_eq!(
            problems(&text, &[]),
            ["server.max_body_bytes: invalid type: string \"big\", expected usize (line 2)"]
        );
        let text = format!("[servr]\nlisten = \"x\"\n{MINIMAL}");
        assert_eq!(
            problems(&text, &[]),
            ["servr: unknown section (expected server, store, admin, clients or pools) (line 1)"]
        );
        let text = format!("{MINIMAL}[pools.policy]\ncooldown = 3\n");
        let found = problems(&text, &[]);
        assert!(
            found[0].starts_with("pools[0].policy.cooldown: unknown field"),
            "{found:#?}"
        );
    }

    #[test]
    fn a_syntax_error_reports_its_line() {
        let found = problems("[server]\nlisten = \"127.0.0.1:8080\n", &[]);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("TOML syntax error at line 2, column "),
            "{found:#?}"
        );
    }

    #[test]
    fn several_problems_are_reported_together() {
        let text = format!(
            "[server]\nmax_body_bytes = 0\n[store]\nprefix = \".kg\"\n{}",
            pool_with(
                "max_attempts = 20\n[pools.canary]\npercent = 200",
                &["id = \"k1\"\nsecret_env = \"NOPE\"\nweight = 1001"]
            )
        );
        assert_eq!(
            problems(&text, &[]),
            [
                "server.max_body_bytes: must be at least 1".to_string(),
                format!("store.prefix: {ID_RULE}"),
                "pools[0].max_attempts: must be 1..=10".to_string(),
                "pools[0].canary.percent: must be 0..=100".to_string(),
                "pools[0].keys[0].weight: must be 0..=1000".to_string(),
                "pools[0].keys[0].secret_env: environment variable NOPE is not set".to_string(),
            ]
        );
    }

    #[test]
    fn env_overrides_replace_server_store_and_admin_fields() {
        let env = [
            ("HS_KEY_001", "sk-abcdefghijk0001"),
            ("HS_KEY_004", "sk-abcdefghijk0004"),
            ("KEYGATE_SERVER__LISTEN", "0.0.0.0:9090"),
            ("KEYGATE_SERVER__METRICS_LISTEN", "0.0.0.0:9091"),
            ("KEYGATE_STORE__TIMEOUT_MS", "80"),
            ("KEYGATE_STORE__REDIS_URL", ""),
            ("KEYGATE_STORE__CLUSTER_NODES", "r1:6379, r2:6379,"),
            ("KEYGATE_ADMIN__TOKEN_ENV", "MY_ADMIN"),
            ("MY_ADMIN", "my-admin-token"),
        ];
        let config = parse(DESIGN_EXAMPLE, &env).expect("valid");
        assert_eq!(config.server.listen, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(
            config.server.metrics_listen,
            Some("0.0.0.0:9091".parse().unwrap())
        );
        assert_eq!(config.store.timeout_ms, 80);
        assert_eq!(
            config.store.redis_url, None,
            "empty override selects the embedded store"
        );
        assert_eq!(config.store.cluster_nodes, ["r1:6379", "r2:6379"]);
        assert_eq!(config.admin.token_env.as_deref(), Some("MY_ADMIN"));
        assert_eq!(
            config.admin.token.as_ref().map(Secret::expose),
            Some("my-admin-token")
        );
    }

    #[test]
    fn bad_env_overrides_name_the_variable() {
        let found = problems(MINIMAL, &[("KEYGATE_STORE__TIMEOUT_MS", "fast")]);
        assert_eq!(found, ["store.timeout_ms: KEYGATE_STORE__TIMEOUT_MS=\"fast\" is not a non-negative integer"]);
        let found = problems(MINIMAL, &[("KEYGATE_STORE__TIMEOUT_MS", "0")]);
        assert_eq!(
            found,
            ["store.timeout_ms: must be at least 1 (set by KEYGATE_STORE__TIMEOUT_MS)"]
        );
        let found = problems(MINIMAL, &[("KEYGATE_SERVER__LISTEN", "nowhere")]);
        assert_eq!(
            found,
            ["server.listen: invalid socket address syntax (set by KEYGATE_SERVER__LISTEN)"]
        );
        let names = [
            "KEYGATE_STORE__REDIS_ULR",
            "KEYGATE_STORE__REDIS_URL",
            "KEYGATE_ADMIN_TOKEN",
            "PATH",
        ];
        let stray = stray_overrides(names.into_iter().map(String::from));
        assert_eq!(stray.len(), 1);
        assert_eq!(stray[0].path, "KEYGATE_STORE__REDIS_ULR");
    }

    #[test]
    fn admin_api_is_off_without_a_token() {
        let admin = |text: &str, env: &[(&str, &str)]| parse(text, env).expect("valid").admin;
        assert_eq!(admin(MINIMAL, &[]).token, None);
        assert_eq!(admin(MINIMAL, &[("KEYGATE_ADMIN_TOKEN", "")]).token, None);
        let token = admin(MINIMAL, &[("KEYGATE_ADMIN_TOKEN", "t0k3n-admin")]).token;
        assert_eq!(token, Some(Secret::new("t0k3n-admin")));
        let custom = format!("[admin]\ntoken_env = \"OPS_TOKEN\"\n{MINIMAL}");
        assert_eq!(admin(&custom, &[("KEYGATE_ADMIN_TOKEN", "x")]).token, None);
        let off = format!("[admin]\ntoken_env = \"\"\n{MINIMAL}");
        assert_eq!(
            admin(&off, &[("KEYGATE_ADMIN_TOKEN", "x")]),
            AdminConfig {
                token_env: None,
                token: None
            }
        );
    }

    #[test]
    fn secrets_never_print() {
        let config = parse(DESIGN_EXAMPLE, &DESIGN_ENV).expect("valid");
        let shown = format!("{config:?} {:#?}", config);
        for (_, secret) in DESIGN_ENV {
            assert!(!shown.contains(secret), "{secret} leaked");
        }
        let secret = Secret::new("sk-abcdefghijk9f3a");
        assert_eq!(format!("{secret} {secret:?}"), "***** *****");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"*****\"");
    }

    #[test]
    fn fingerprint_shows_a_known_prefix_and_the_last_four_chars() {
        assert_eq!(Secret::new("sk-abcdefghijk9f3a").fingerprint(), "sk-…9f3a");
        assert_eq!(Secret::new("abcdefghijklmnop").fingerprint(), "…mnop");
        assert_eq!(Secret::new("sk-short").fingerprint(), "…");
        assert_eq!(Secret::new("").fingerprint(), "…");
        assert_eq!(Secret::new("ключключключключ").fingerprint(), "…ключ");
    }

    #[test]
    fn secrets_compare_by_value() {
        assert_eq!(Secret::new("sk-a"), Secret::new("sk-a"));
        assert_ne!(Secret::new("sk-a"), Secret::new("sk-b"));
        assert_ne!(Secret::new("sk-a"), Secret::new("sk-ab"));
    }

    #[test]
    fn hash_token_is_lowercase_sha256_hex() {
        assert_eq!(
            hash_token("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn config_error_displays_one_problem_per_line() {
        let error = ConfigError {
            problems: vec![Problem::new("a.b", "x"), Problem::new("", "syntax")],
        };
        assert_eq!(error.to_string(), "a.b: x\nsyntax");
    }
}
