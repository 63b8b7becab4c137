//! Decoding the TOML text: [`Ctx`] collects problems, each decode error gets its config path
//! and the line of the offending value (from a span-keeping parse of the text), the top-level
//! sections are split apart, and the `Raw*` structs give the shapes of the sections that differ
//! from their public types.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use serde::de::{DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{CanaryConfig, ConfigError, Problem, DEFAULT_ADMIN_TOKEN_ENV};

/// The problems found so far, and what is needed to describe them.
pub(super) struct Ctx<'a> {
    text: &'a str,
    pub(super) problems: Vec<Problem>,
    /// Config paths set by an env override, and the variable that set them.
    pub(super) overridden: HashMap<String, String>,
    /// Config path → byte offset of its value in `text`; built on the first decode error.
    offsets: OnceCell<HashMap<String, usize>>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(text: &'a str) -> Ctx<'a> {
        Ctx {
            text,
            problems: Vec::new(),
            overridden: HashMap::new(),
            offsets: OnceCell::new(),
        }
    }

    pub(super) fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    /// Decodes `value` (found at `path`) into `T`, or records why it cannot be.
    pub(super) fn decode<T: DeserializeOwned>(
        &mut self,
        value: toml::Value,
        path: &str,
    ) -> Option<T> {
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

    pub(super) fn into_error(self) -> ConfigError {
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

/// For a message like ``unknown field `x`, expected ...``, the name and the rest.
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

pub(super) fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
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
pub(super) struct Sections {
    pub(super) server: toml::Value,
    pub(super) store: toml::Value,
    pub(super) admin: toml::Value,
    pub(super) clients: Vec<toml::Table>,
    /// `None` when `pools` is present but not an array of tables (already reported).
    pub(super) pools: Option<Vec<toml::Table>>,
}

pub(super) fn split_sections(root: toml::Table, ctx: &mut Ctx) -> Sections {
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
pub(super) struct RawAdmin {
    pub(super) token_env: String,
    pub(super) listen: Option<std::net::SocketAddr>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            token_env: DEFAULT_ADMIN_TOKEN_ENV.to_string(),
            listen: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) name: Option<String>,
    pub(super) token_sha256: Option<String>,
    #[serde(default)]
    pub(super) pools: Vec<String>,
    pub(super) max_buffered_bytes: Option<usize>,
    pub(super) max_concurrent: Option<usize>,
}

/// Sub-tables and keys stay TOML values so each decodes, and reports, on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) name: Option<String>,
    pub(super) base_url: Option<String>,
    #[serde(default = "default_max_attempts")]
    pub(super) max_attempts: i64,
    #[serde(default)]
    pub(super) models: Vec<String>,
    #[serde(default)]
    pub(super) fallbacks: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(super) policy: toml::Table,
    #[serde(default)]
    pub(super) timeouts: toml::Table,
    pub(super) upstream_http2: Option<String>,
    #[serde(default)]
    pub(super) canary: toml::Table,
    #[serde(default)]
    pub(super) limits: toml::Table,
    #[serde(default)]
    pub(super) rotation: toml::Table,
    #[serde(default)]
    pub(super) keys: Vec<toml::Table>,
    pub(super) paths: Option<Vec<String>>,
    #[serde(default)]
    pub(super) headers: toml::Table,
    pub(super) organization: Option<String>,
    pub(super) project: Option<String>,
}

fn default_max_attempts() -> i64 {
    3
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawCanary {
    pub(super) group: String,
    pub(super) percent: i64,
    pub(super) fallback: bool,
    pub(super) sticky_by: String,
}

impl Default for RawCanary {
    fn default() -> Self {
        let canary = CanaryConfig::default();
        RawCanary {
            group: canary.group,
            percent: i64::from(canary.percent),
            fallback: canary.fallback,
            sticky_by: "user".to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub(super) id: Option<String>,
    /// Inline secret: for tests only, a real config should not hold secrets.
    pub(super) secret: Option<String>,
    pub(super) secret_env: Option<String>,
    pub(super) secret_file: Option<PathBuf>,
    #[serde(default = "default_weight")]
    pub(super) weight: i64,
    pub(super) group: Option<String>,
    pub(super) organization: Option<String>,
    pub(super) project: Option<String>,
    pub(super) limits: Option<toml::Table>,
    /// `"2027-03-01"` or `"2027-03-01T12:00:00Z"`.
    pub(super) expires: Option<String>,
    pub(super) successor: Option<String>,
}

fn default_weight() -> i64 {
    1
}
