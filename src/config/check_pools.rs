//! Checks of the `[[pools]]` sections: each pool, its models and fallbacks, policy, timeouts,
//! canary settings and keys, whose secrets are read here from the environment or from files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::check::{required_id, FirstSeen, ID_RULE};
use super::decode::{Ctx, RawCanary, RawKey, RawPool};
use super::limits::{check_pool_limits, check_token_room, RawKeyLimits};
use super::wire::{check_account_id, check_header_lists, check_paths, HeaderLists, DEFAULT_PATHS};
use super::{
    CanaryConfig, KeyConfig, Limits, Policy, PoolConfig, PoolLimits, RotationConfig, Secret,
    StickyBy, Timeouts, UpstreamHttp2, STABLE_GROUP,
};
use crate::pool::is_valid_id;

pub(super) const BASE_URL_RULE: &str =
    "must be an http:// or https:// URL without query or fragment";

pub(super) fn check_pools(
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
    let upstream_http2 = match raw.upstream_http2.as_deref() {
        None => Some(UpstreamHttp2::default()),
        Some(text) => UpstreamHttp2::parse(text).or_else(|| {
            let message = format!("must be one of {}", UpstreamHttp2::NAMES.join(", "));
            ctx.problem(format!("{path}.upstream_http2"), message);
            None
        }),
    };
    let canary_path = format!("{path}.canary");
    let canary = (ctx.decode::<RawCanary>(toml::Value::Table(raw.canary), &canary_path))
        .and_then(|raw| check_canary(raw, &canary_path, ctx));
    let canary_group = canary.as_ref().map(|c| c.group.as_str());
    let limits_path = format!("{path}.limits");
    let limits = check_pool_limits(raw.limits, &limits_path, ctx);
    check_token_room(&limits.keys, &limits, &limits_path, ctx);
    let keys = check_keys(raw.keys, path, canary_group, &limits, env, base_dir, ctx);
    let paths =
        (raw.paths).unwrap_or_else(|| DEFAULT_PATHS.iter().map(|p| p.to_string()).collect());
    check_paths(&paths, path, ctx);
    let headers =
        ctx.decode::<HeaderLists>(toml::Value::Table(raw.headers), &format!("{path}.headers"));
    if let Some(headers) = &headers {
        check_header_lists(headers, path, ctx);
    }
    check_account_id(&raw.organization, format!("{path}.organization"), ctx);
    check_account_id(&raw.project, format!("{path}.project"), ctx);
    let rotation_path = format!("{path}.rotation");
    let rotation = ctx.decode::<RotationConfig>(toml::Value::Table(raw.rotation), &rotation_path);
    if let Some(rotation) = &rotation {
        super::check_rotation::check_rotation(rotation, &rotation_path, ctx);
    }
    super::check_rotation::check_successors(&keys, path, canary_group, ctx);
    Some(PoolConfig {
        name: name?,
        base_url: base_url?,
        max_attempts: max_attempts?,
        models: raw.models,
        fallbacks: raw.fallbacks,
        policy: policy?,
        timeouts: timeouts?,
        upstream_http2: upstream_http2?,
        canary: canary?,
        rotation: rotation?,
        keys,
        paths,
        headers: headers?,
        organization: raw.organization,
        project: raw.project,
        limits,
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
    let normalized = url.trim_end_matches('/').to_string();
    // The proxy builds every upstream URL from it: it must parse (a stray `[`, a host that IDNA
    // refuses) and keep a host.
    let parsed = url::Url::parse(&normalized).ok()?;
    parsed.host_str().filter(|h| !h.is_empty())?;
    Some(normalized)
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
        ("auth_bench_s", policy.auth_bench_s),
        ("client_circuit_window_s", policy.client_circuit_window_s),
        ("client_circuit_open_s", policy.client_circuit_open_s),
    ];
    for (field, value) in at_least_one {
        if value == 0 {
            ctx.problem(format!("{pool_path}.policy.{field}"), "must be at least 1");
        }
    }
    if !is_probe_path(&policy.auth_probe_path) {
        ctx.problem(
            format!("{pool_path}.policy.auth_probe_path"),
            "must be a relative path such as \"models\" ([A-Za-z0-9._~/-], no leading '/', no '..' or '//')",
        );
    }
    if policy.cooldown_default_s > policy.cooldown_max_s {
        let message = format!("must not exceed cooldown_max_s ({})", policy.cooldown_max_s);
        ctx.problem(format!("{pool_path}.policy.cooldown_default_s"), message);
    }
}

/// A path under the pool's base URL that stays there: no query, no `..`, no empty segment.
fn is_probe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~/-".contains(&b))
}

fn check_timeouts(timeouts: &Timeouts, path: &str, ctx: &mut Ctx) {
    let fields = [
        ("connect_ms", timeouts.connect_ms),
        ("first_byte_ms", timeouts.first_byte_ms),
        ("total_ms", timeouts.total_ms),
    ];
    let total_first_byte = timeouts
        .first_byte_total_ms
        .map(|v| ("first_byte_total_ms", v));
    for (field, value) in fields.into_iter().chain(total_first_byte) {
        if value == 0 {
            ctx.problem(format!("{path}.{field}"), "must be at least 1");
        } else if value > timeouts.total_ms && timeouts.total_ms > 0 {
            let message = format!("must not exceed total_ms ({})", timeouts.total_ms);
            ctx.problem(format!("{path}.{field}"), message);
        }
    }
    if timeouts.idle_connections > MAX_IDLE_CONNECTIONS {
        let message = format!("must be at most {MAX_IDLE_CONNECTIONS}");
        ctx.problem(format!("{path}.idle_connections"), message);
    }
    if !(1..=MAX_IDLE_TIMEOUT_MS).contains(&timeouts.idle_timeout_ms) {
        let message = format!("must be 1..={MAX_IDLE_TIMEOUT_MS}");
        ctx.problem(format!("{path}.idle_timeout_ms"), message);
    }
}

/// Idle upstream connections a pool may keep per host (each holds a file descriptor).
const MAX_IDLE_CONNECTIONS: usize = 100_000;
/// An hour: longer than any upstream keeps an idle connection open.
const MAX_IDLE_TIMEOUT_MS: u64 = 3_600_000;

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
    let sticky_by = StickyBy::parse(&raw.sticky_by);
    if sticky_by.is_none() {
        let message = format!("must be one of {}", StickyBy::NAMES.join(", "));
        ctx.problem(format!("{path}.sticky_by"), message);
    }
    let (percent, sticky_by) = (percent?, sticky_by?);
    group_ok.then_some(CanaryConfig {
        group: raw.group,
        percent,
        fallback: raw.fallback,
        sticky_by,
    })
}

fn check_keys(
    tables: Vec<toml::Table>,
    pool_path: &str,
    canary_group: Option<&str>,
    pool_limits: &PoolLimits,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: &Path,
    ctx: &mut Ctx,
) -> Vec<KeyConfig> {
    let mut ids = FirstSeen::new();
    // Sized once: a pool may hold 10,000 keys, and a doubled Vec would keep up to half again
    // as much memory for as long as the config lives.
    let mut keys = Vec::with_capacity(tables.len());
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
        check_account_id(&raw.organization, format!("{path}.organization"), ctx);
        check_account_id(&raw.project, format!("{path}.project"), ctx);
        let expires_ms = raw.expires.as_deref().and_then(|text| {
            let parsed = super::check_rotation::parse_expiry(text);
            if parsed.is_none() {
                let message = "must be a date such as \"2027-03-01\" or \"2027-03-01T12:00:00Z\"";
                ctx.problem(format!("{path}.expires"), message);
            }
            parsed
        });
        let secret = resolve_secret(&raw, &path, env, base_dir, ctx);
        let limits = check_key_limits(raw.limits.clone(), &path, pool_limits, ctx);
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
                organization: raw.organization,
                project: raw.project,
                limits,
                expires_ms,
                successor: raw.successor,
            });
        }
    }
    keys
}

/// The key's own `limits = {...}`; the budgets it ends up with must hold one reservation.
fn check_key_limits(
    table: Option<toml::Table>,
    key_path: &str,
    pool: &PoolLimits,
    ctx: &mut Ctx,
) -> Limits {
    let Some(table) = table else {
        return Limits::default();
    };
    let path = format!("{key_path}.limits");
    let Some(raw) = ctx.decode::<RawKeyLimits>(toml::Value::Table(table), &path) else {
        return Limits::default();
    };
    let limits = raw.check(&path, ctx);
    check_token_room(&limits, pool, &path, ctx);
    limits
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
