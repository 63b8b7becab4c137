//! `KEYGATE_<SECTION>__<FIELD>` environment overrides (see the `config` module docs): applied
//! to the parsed TOML tree before decoding, and the check that rejects misspelt variables.

use std::collections::HashSet;

use super::decode::Ctx;
use super::Problem;

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
    /// `true` or `false`.
    Bool,
}

/// Every `(section, field)` that `KEYGATE_<SECTION>__<FIELD>` may override.
const ENV_OVERRIDES: [(&str, &str, Kind); 28] = [
    ("server", "listen", Kind::Text),
    ("server", "metrics_listen", Kind::OptionalText),
    ("server", "max_body_bytes", Kind::Integer),
    ("server", "shutdown_grace_s", Kind::Integer),
    ("server", "header_read_timeout_ms", Kind::Integer),
    ("server", "body_read_timeout_ms", Kind::Integer),
    ("server", "max_header_bytes", Kind::Integer),
    ("server", "idle_timeout_ms", Kind::Integer),
    ("server", "http2", Kind::Bool),
    ("server", "max_connections", Kind::Integer),
    ("server", "max_buffered_bytes", Kind::Integer),
    ("server", "client_max_buffered_bytes", Kind::Integer),
    ("server", "max_retry_after_s", Kind::Integer),
    ("server", "config_watch_ms", Kind::Integer),
    ("store", "redis_url", Kind::OptionalText),
    ("store", "sentinels", Kind::List),
    ("store", "sentinel_master", Kind::OptionalText),
    ("store", "cluster_nodes", Kind::List),
    ("store", "prefix", Kind::Text),
    ("store", "timeout_ms", Kind::Integer),
    ("store", "connect_timeout_ms", Kind::Integer),
    ("store", "degraded_after_failures", Kind::Integer),
    ("store", "degraded_after_ms", Kind::Integer),
    ("store", "probe_interval_ms", Kind::Integer),
    ("store", "snapshot_cache_ms", Kind::Integer),
    ("store", "report_flush_ms", Kind::Integer),
    ("admin", "token_env", Kind::Text),
    ("admin", "listen", Kind::OptionalText),
];

const OVERRIDE_SECTIONS: [&str; 3] = ["KEYGATE_SERVER__", "KEYGATE_STORE__", "KEYGATE_ADMIN__"];

fn override_var(section: &str, field: &str) -> String {
    format!(
        "KEYGATE_{}__{}",
        section.to_ascii_uppercase(),
        field.to_ascii_uppercase()
    )
}

pub(super) fn apply_env_overrides(
    root: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
    ctx: &mut Ctx,
) {
    for (section, field, kind) in ENV_OVERRIDES {
        let var = override_var(section, field);
        let Some(text) = env(&var) else { continue };
        let path = format!("{section}.{field}");
        let Some(value) = parse_override(kind, &text) else {
            let expected = match kind {
                Kind::Bool => "true or false",
                _ => "a non-negative integer",
            };
            let message = format!("{var}={text:?} is not {expected}");
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
            Override::Set(value) => table.insert(field.to_string(), value),
            Override::Clear => table.remove(field),
        };
        ctx.overridden.insert(path, var);
    }
}

/// What an override does to its field.
enum Override {
    Set(toml::Value),
    /// Back to the default (`None` for the optional fields).
    Clear,
}

/// The override for `text`, or `None` if it does not parse as `kind`.
fn parse_override(kind: Kind, text: &str) -> Option<Override> {
    let value = match kind {
        Kind::Integer => {
            let n = text.trim().parse::<i64>().ok().filter(|n| *n >= 0)?;
            toml::Value::Integer(n)
        }
        Kind::Bool => toml::Value::Boolean(text.trim().parse::<bool>().ok()?),
        Kind::Text => toml::Value::String(text.to_string()),
        Kind::OptionalText if text.trim().is_empty() => return Some(Override::Clear),
        Kind::OptionalText => toml::Value::String(text.trim().to_string()),
        Kind::List => toml::Value::Array(
            (text.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
    };
    Some(Override::Set(value))
}

/// Problems for override-looking variables that match no field (typos).
pub(super) fn stray_overrides(names: impl Iterator<Item = String>) -> Vec<Problem> {
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
