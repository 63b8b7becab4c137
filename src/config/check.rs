//! Checks of the decoded `server`, `store`, `admin` and `clients` sections, turning them into
//! the public types, and the helpers shared with `check_pools` (ids, duplicate detection).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use super::decode::{Ctx, RawAdmin, RawClient};
use super::{AdminConfig, ClientConfig, Secret, ServerConfig, StoreConfig, MIN_ADMIN_TOKEN_CHARS};
use crate::pool::is_valid_id;

pub(super) const ID_RULE: &str =
    "must be 1..=64 characters of [A-Za-z0-9._-], not starting with '.'";
const REDIS_SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];

pub(super) fn check_server(server: &ServerConfig, ctx: &mut Ctx) {
    let at_least_one = [
        ("max_body_bytes", server.max_body_bytes as u64),
        ("header_read_timeout_ms", server.header_read_timeout_ms),
        ("body_read_timeout_ms", server.body_read_timeout_ms),
        ("max_header_bytes", server.max_header_bytes as u64),
        ("idle_timeout_ms", server.idle_timeout_ms),
        ("max_connections", server.max_connections as u64),
        ("max_retry_after_s", server.max_retry_after_s),
    ];
    for (field, value) in at_least_one {
        if value == 0 {
            ctx.problem(format!("server.{field}"), "must be at least 1");
        }
    }
    if server.metrics_listen == Some(server.listen) {
        ctx.problem("server.metrics_listen", "must differ from server.listen");
    }
    // A budget below one whole body would refuse the largest request the server accepts.
    for (field, value) in [
        ("max_buffered_bytes", server.max_buffered_bytes),
        (
            "client_max_buffered_bytes",
            server.client_max_buffered_bytes,
        ),
    ] {
        if value < server.max_body_bytes {
            let message = format!(
                "must be at least server.max_body_bytes ({})",
                server.max_body_bytes
            );
            ctx.problem(format!("server.{field}"), message);
        }
    }
}

/// The most `store.degraded_after_ms` may be: longer, a replica whose Redis answers nothing but
/// `PING` would make every request wait out the store timeout for over a minute.
const MAX_DEGRADED_AFTER_MS: u64 = 60_000;

/// Checks the store section; an empty `redis_url` or `sentinel_master` becomes `None`.
pub(super) fn check_store(mut store: StoreConfig, ctx: &mut Ctx) -> StoreConfig {
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
    check_store_backends(&store, ctx);
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
    if store.degraded_after_ms > MAX_DEGRADED_AFTER_MS {
        let message = format!(
            "must be 0..={MAX_DEGRADED_AFTER_MS} (0: degraded_after_failures alone decides)"
        );
        ctx.problem("store.degraded_after_ms", message);
    }
    if store.report_flush_ms > MAX_REPORT_FLUSH_MS {
        ctx.problem(
            "store.report_flush_ms",
            format!("must be 0 (report every success at once) to {MAX_REPORT_FLUSH_MS} ms"),
        );
    }
    store
}

/// The longest `store.report_flush_ms`: successes buffered longer would leave other replicas
/// and the admin view behind for too long.
pub(crate) const MAX_REPORT_FLUSH_MS: u64 = 60_000;

/// Node addresses, and at most one of `redis_url`, `sentinels`, `cluster_nodes`.
fn check_store_backends(store: &StoreConfig, ctx: &mut Ctx) {
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

/// The admin section with its token read from the environment; a token shorter than
/// [`MIN_ADMIN_TOKEN_CHARS`] is a problem naming the variable (never the token).
pub(super) fn resolve_admin(
    raw: RawAdmin,
    env: &dyn Fn(&str) -> Option<String>,
    ctx: &mut Ctx,
) -> AdminConfig {
    let token_env = Some(raw.token_env).filter(|name| !name.is_empty());
    let token = (token_env.as_deref())
        .and_then(env)
        .map(|token| token.trim().to_string())
        .filter(|token| !token.is_empty())
        .map(Secret::new);
    if let (Some(var), Some(token)) = (&token_env, &token) {
        let chars = token.expose().chars().count();
        if chars < MIN_ADMIN_TOKEN_CHARS {
            let message = format!(
                "the admin token in {var} is {chars} characters; at least {MIN_ADMIN_TOKEN_CHARS} \
                 are required (e.g. `openssl rand -hex 24`)"
            );
            ctx.problem("admin.token_env", message);
        }
    }
    AdminConfig {
        token_env,
        token,
        listen: raw.listen,
    }
}

/// Remembers where each name was first seen, to report a duplicate with both places.
pub(super) struct FirstSeen<K>(HashMap<K, String>);

impl<K: Hash + Eq> FirstSeen<K> {
    pub(super) fn new() -> Self {
        FirstSeen(HashMap::new())
    }

    /// Where `key` was seen before, if it was; otherwise remembers `path` for it.
    pub(super) fn earlier(&mut self, key: K, path: &str) -> Option<String> {
        if let Some(first) = self.0.get(&key) {
            return Some(first.clone());
        }
        self.0.insert(key, path.to_string());
        None
    }
}

/// A required id-like field: `None` (problem recorded) when missing or malformed.
pub(super) fn required_id(value: Option<String>, path: String, ctx: &mut Ctx) -> Option<String> {
    match value {
        None => ctx.problem(path, "is required"),
        Some(id) if !is_valid_id(&id) => ctx.problem(path, ID_RULE),
        Some(id) => return Some(id),
    }
    None
}

pub(super) fn check_clients(
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
        for (field, value) in [
            ("max_buffered_bytes", raw.max_buffered_bytes),
            ("max_concurrent", raw.max_concurrent),
        ] {
            if value == Some(0) {
                ctx.problem(format!("{path}.{field}"), "must be at least 1");
            }
        }
        if let (Some(name), Some(token_sha256)) = (name, token) {
            clients.push(ClientConfig {
                name,
                token_sha256,
                pools: raw.pools,
                max_buffered_bytes: raw.max_buffered_bytes,
                max_concurrent: raw.max_concurrent,
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
