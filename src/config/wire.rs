//! What a pool lets cross the proxy: the paths it serves, the request headers it forwards and the
//! response headers it returns (defaults plus `[pools.headers]`), and the `OpenAI-Organization` /
//! `OpenAI-Project` it sends. The lists are here, with their checks, so that the proxy and
//! `check-config` agree on them; README.md ("Header and path allowlists") explains each choice.

use serde::Deserialize;

use super::decode::Ctx;

/// Paths after `/v1/` a pool serves unless it sets `paths`: the inference endpoints.
pub const DEFAULT_PATHS: &[&str] = &[
    "chat/completions",
    "completions",
    "embeddings",
    "responses",
    "responses/*",
    "models",
    "models/*",
    "audio/*",
    "images/*",
    "moderations",
];

/// Request headers forwarded upstream besides those a pool adds. `Content-Length`, `Host`,
/// `Authorization`, `Accept-Encoding` and the organization/project are set by keygate.
pub const DEFAULT_FORWARDED: &[&str] = &[
    "content-type",
    "accept",
    "user-agent",
    "openai-beta",
    "idempotency-key",
];

/// Request headers no pool may forward: credentials (the client's token may come in any of
/// them), hop-by-hop headers, what keygate sets itself, routing and client-address headers an
/// upstream or a proxy in front of it might trust, and keygate's own headers.
pub const NEVER_FORWARDED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "accept-encoding",
    "openai-organization",
    "openai-project",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "true-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-keygate-pool",
    "x-gray-group",
    "x-user-id",
];

/// Response headers returned to the client besides those a pool adds (keygate then sets its
/// own `x-keygate-*` and `x-request-id`).
pub const DEFAULT_EXPOSED: &[&str] = &[
    "content-type",
    "content-length",
    "content-disposition",
    "openai-processing-ms",
    "openai-version",
    "retry-after",
    "retry-after-ms",
];

/// Response headers no pool may return: what identifies the provider account, cookies,
/// hop-by-hop headers, and a `Content-Encoding` (keygate never passes an encoded body).
pub const NEVER_EXPOSED: &[&str] = &[
    "openai-organization",
    "openai-project",
    "set-cookie",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-encoding",
    "x-keygate-key",
];

/// `[pools.headers]`: names (lower case) or prefixes ending in `*`, added to the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderLists {
    /// Request headers forwarded upstream.
    pub forward: Vec<String>,
    /// Response headers returned to the client.
    pub expose: Vec<String>,
}

/// Whether `name` matches a list entry: the same name, or a prefix ending in `*`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Whether `path` (after `/v1/`, without the query) matches a `paths` entry: the same path, or
/// any path under `prefix/` for `prefix/*`; `*` alone matches every path.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix("/*") {
        Some(prefix) => path
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty()),
        None => pattern == path,
    }
}

pub(super) fn check_header_lists(lists: &HeaderLists, path: &str, ctx: &mut Ctx) {
    let checks = [
        ("forward", &lists.forward, NEVER_FORWARDED),
        ("expose", &lists.expose, NEVER_EXPOSED),
    ];
    for (field, list, never) in checks {
        for (i, pattern) in list.iter().enumerate() {
            let at = format!("{path}.headers.{field}[{i}]");
            let name = pattern.strip_suffix('*').unwrap_or(pattern);
            let token = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
            if name.is_empty() || !name.bytes().all(token) {
                let message = "must be a lower-case header name (letters, digits, `-`), \
                               optionally ending in `*`";
                ctx.problem(at, message);
            } else if let Some(bad) = never.iter().find(|n| name_matches(pattern, n)) {
                ctx.problem(
                    at,
                    format!("would let through `{bad}`, which keygate never does"),
                );
            }
        }
    }
}

pub(super) fn check_paths(paths: &[String], path: &str, ctx: &mut Ctx) {
    if paths.is_empty() {
        ctx.problem(
            format!("{path}.paths"),
            "needs at least one path (`*` allows every path)",
        );
    }
    for (i, pattern) in paths.iter().enumerate() {
        let body = pattern.strip_suffix("/*").unwrap_or(pattern);
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if pattern != "*" && !body.split('/').all(segment_ok) {
            let message = "must be a path after /v1/ (like `chat/completions`), `prefix/*` or `*`";
            ctx.problem(format!("{path}.paths[{i}]"), message);
        }
    }
}

/// An `organization`/`project` value: sent as a header, so printable ASCII without spaces.
pub(super) fn check_account_id(value: &Option<String>, at: String, ctx: &mut Ctx) {
    if let Some(v) = value {
        if v.is_empty() || v.len() > 256 || !v.bytes().all(|b| b.is_ascii_graphic()) {
            ctx.problem(
                at,
                "must be 1 to 256 printable ASCII characters without spaces",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_exactly_or_under_a_prefix() {
        assert!(path_matches("chat/completions", "chat/completions"));
        assert!(!path_matches("chat/completions", "chat/completions/x"));
        assert!(path_matches("models/*", "models/gpt-4o"));
        assert!(path_matches("responses/*", "responses/resp_1/input_items"));
        assert!(!path_matches("models/*", "models"));
        assert!(!path_matches("models/*", "models/"));
        assert!(!path_matches("models/*", "modelsx/y"));
        assert!(path_matches("*", "organization/users"));
    }

    #[test]
    fn header_patterns_match_names_or_prefixes() {
        assert!(name_matches("x-stainless-*", "x-stainless-lang"));
        assert!(!name_matches("x-stainless-*", "x-stainless"));
        assert!(name_matches("openai-beta", "openai-beta"));
        assert!(!name_matches("openai-beta", "openai-beta-2"));
    }
}
