//! What crosses the proxy: the upstream URL (always the pool's configured scheme, host and port,
//! and only the paths the pool serves) and the headers each way, from allowlists (no client
//! credential up, no hop-by-hop either way, no provider account header down). Secrets in what
//! comes down are masked by `scrub.rs`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{name_matches, path_matches, HeaderLists};
use crate::config::{DEFAULT_EXPOSED, DEFAULT_FORWARDED, NEVER_EXPOSED, NEVER_FORWARDED};
use crate::error::ApiError;
use crate::state::{KeyAuth, UpstreamBase};

/// Headers named in `Connection:` are hop-by-hop too.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The headers sent upstream: the client's that the pool's allowlist names (never a credential,
/// a hop-by-hop or routing header, whatever the list says), then the key's credential and
/// account headers, and a request for an unencoded answer (keygate must read it to scrub it).
pub fn upstream_headers(client: &HeaderMap, lists: &HeaderLists, key: &KeyAuth) -> HeaderMap {
    let listed = connection_listed(client);
    let mut out = HeaderMap::with_capacity(DEFAULT_FORWARDED.len() + 5);
    for (name, value) in client {
        let n = name.as_str();
        if allowed(n, DEFAULT_FORWARDED, &lists.forward, NEVER_FORWARDED)
            && !listed.iter().any(|l| l == n)
        {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(http::header::AUTHORIZATION, key.header.clone());
    out.insert(
        http::header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if let Some(org) = key.organization() {
        out.insert(HeaderName::from_static("openai-organization"), org.clone());
    }
    if let Some(project) = key.project() {
        out.insert(HeaderName::from_static("openai-project"), project.clone());
    }
    out
}

/// The upstream's headers the pool's allowlist names, as sent to the client (before keygate's
/// own `x-keygate-*` headers are added, and before scrubbing).
pub fn downstream_headers(upstream: &HeaderMap, lists: &HeaderLists) -> HeaderMap {
    let listed = connection_listed(upstream);
    let mut out = HeaderMap::with_capacity(DEFAULT_EXPOSED.len() + 6);
    for (name, value) in upstream {
        let n = name.as_str();
        if allowed(n, DEFAULT_EXPOSED, &lists.expose, NEVER_EXPOSED)
            && !listed.iter().any(|l| l == n)
        {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// In the defaults or the pool's additions, and never in the list of what is never let through.
fn allowed(name: &str, defaults: &[&str], added: &[String], never: &[&str]) -> bool {
    let listed = defaults.contains(&name) || added.iter().any(|p| name_matches(p, name));
    listed && !never.contains(&name)
}

/// An upstream answer keygate cannot read: encoded although keygate asked for `identity`.
/// keygate does not decode; it refuses to pass on what it could not scrub.
pub fn is_encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// Whether the pool serves `path` (after `/v1/`, without the query): a 404 before any key is
/// chosen when it does not.
pub fn check_path(paths: &[String], path: &str) -> Result<(), ApiError> {
    if paths.iter().any(|p| path_matches(p, path)) {
        return Ok(());
    }
    Err(ApiError::not_found(
        "Unknown path: this keygate pool does not serve it.",
    ))
}

fn invalid_path() -> ApiError {
    ApiError::bad_request("invalid_path", "The request path is not allowed.")
}

/// [`upstream_url`] as the URI the upstream client sends to, converted once per request. In
/// the common case (see [`plain_path_and_query`]) the base's scheme and authority, parsed once
/// per pool, are put before the request's path and query, which alone are parsed.
pub fn upstream_uri(
    base: &UpstreamBase,
    path: &str,
    query: Option<&str>,
) -> Result<http::Uri, ApiError> {
    let query = query.filter(|q| !q.is_empty());
    if let Some((scheme, authority)) = &base.origin {
        if let Some(plain) = plain_path_and_query(&base.url, path, query) {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(scheme.clone());
            parts.authority = Some(authority.clone());
            parts.path_and_query =
                Some(http::uri::PathAndQuery::try_from(plain).map_err(|_| invalid_path())?);
            return http::Uri::from_parts(parts).map_err(|_| invalid_path());
        }
    }
    let url = upstream_url(&base.url, path, query)?;
    http::Uri::try_from(url.as_str()).map_err(|_| invalid_path())
}

/// Bytes `url` copies unchanged into a path (no percent-encoding, no `\` or dot-segment
/// handling applies to them): unreserved, sub-delimiters, `:`, `@`, `/` and `%`.
fn plain_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'%'
        )
}

/// The path and query [`upstream_url`] builds, in the common case, without re-parsing the URL:
/// a path (already past the same checks) and a query made only of bytes `url` would copy
/// unchanged give exactly the base's path, `/`, the path and the query. `None` for anything
/// else (and for a path the checks refuse), which takes the full parse.
fn plain_path_and_query(base: &url::Url, path: &str, query: Option<&str>) -> Option<String> {
    // `'` is not a plain byte: `url` encodes it in the query of http(s) URLs.
    let plain_query = |q: &str| q.bytes().all(|b| plain_path_byte(b) || b == b'?');
    if !path.bytes().all(plain_path_byte)
        || !query.is_none_or(plain_query)
        || base.query().is_some()
        || base.fragment().is_some()
        || upstream_path_refused(path)
    {
        return None;
    }
    let base_path = base.path().trim_end_matches('/');
    let mut out =
        String::with_capacity(base_path.len() + 2 + path.len() + query.map_or(0, str::len));
    out.push_str(base_path);
    out.push('/');
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// A path that could leave the base: absolute, `//host`, dot segments (also encoded), encoded
/// slashes and backslashes, or a scheme (`://`, which holds `//`). One pass over the bytes: a
/// search per rule cost about 1,400 instructions on every request (BENCHMARKS.md, "Where a
/// request's CPU goes").
fn upstream_path_refused(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() == Some(&b'/') {
        return true;
    }
    // Where the current segment began.
    let mut segment = 0;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\\' => return true,
            b'%' if b.len() > i + 2 => {
                let code = [b[i + 1].to_ascii_lowercase(), b[i + 2].to_ascii_lowercase()];
                if matches!(&code, b"2f" | b"5c" | b"2e") {
                    return true;
                }
            }
            b'/' => {
                if i == segment || is_dot_segment(&b[segment..i]) {
                    return true; // `//`, or a dot segment
                }
                segment = i + 1;
            }
            _ => {}
        }
    }
    is_dot_segment(&b[segment..])
}

fn is_dot_segment(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

/// `base_url` + `/` + the path after `/v1/` + the query. The result must keep the base's
/// scheme, host and port and stay under its path: a request can never steer a pool key to
/// another host (absolute URLs, `//host`, `..`, encoded slashes and backslashes are refused).
pub fn upstream_url(
    base: &url::Url,
    path: &str,
    query: Option<&str>,
) -> Result<url::Url, ApiError> {
    if upstream_path_refused(path) {
        return Err(invalid_path());
    }
    let base_path = base.path().trim_end_matches('/');
    let mut url = base.clone();
    url.set_path(&format!("{base_path}/{path}"));
    url.set_query(query.filter(|q| !q.is_empty()));
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.path().starts_with(base_path);
    if !same_origin {
        return Err(invalid_path());
    }
    Ok(url)
}

/// The response headers keygate sets itself, built once at compile time: a name made from a
/// string at request time is parsed and checked on every call.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_KEYGATE_MODEL: HeaderName = HeaderName::from_static("x-keygate-model");
pub const X_KEYGATE_KEY: HeaderName = HeaderName::from_static("x-keygate-key");
pub const X_KEYGATE_GROUP: HeaderName = HeaderName::from_static("x-keygate-group");
pub const X_KEYGATE_ATTEMPTS: HeaderName = HeaderName::from_static("x-keygate-attempts");

/// Sets a response header from a string, skipping values that are not valid header text.
pub fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Account;

    fn base() -> url::Url {
        url::Url::parse("https://api.example.com/v1").unwrap()
    }

    #[test]
    fn paths_stay_under_the_configured_base() {
        let u = upstream_url(&base(), "chat/completions", Some("a=1")).unwrap();
        assert_eq!(
            u.as_str(),
            "https://api.example.com/v1/chat/completions?a=1"
        );
        for evil in [
            "/etc/passwd",
            "//evil.com/x",
            "../x",
            "a/../../x",
            "http://evil.com/x",
            "a%2f..%2fx",
            "a\\..\\x",
            "%2e%2e/x",
            "./x",
        ] {
            assert!(
                upstream_url(&base(), evil, None).is_err(),
                "{evil} accepted"
            );
        }
    }

    proptest::proptest! {
        /// The URI of the common case, built from the base's parsed origin and the path and
        /// query, is exactly the one the full URL parse gives, and a path the parse refuses
        /// never takes the short cut.
        #[test]
        fn the_plain_uri_is_the_parsed_one(
            path in "[a-zA-Z0-9/._%~:@!$&'()*+,;= #?<>\\\\{}\"-]{0,24}",
            query in proptest::option::of("[a-zA-Z0-9/._%~:@!$&'()*+,;= #?<>\"=-]{0,16}"),
            base in proptest::sample::select(vec![
                "https://api.example.com/v1", "http://127.0.0.1:8080/v1/", "https://h.example/",
                "https://h.example", "https://h.example:8443/a/b", "https://API.Example.com:443/v1",
                "http://[::1]:9000/v1",
            ]),
        ) {
            let base = UpstreamBase::new(url::Url::parse(base).unwrap());
            proptest::prop_assert!(base.origin.is_some());
            let query = query.as_deref().filter(|q| !q.is_empty());
            let parsed = upstream_url(&base.url, &path, query)
                .map(|u| http::Uri::try_from(u.as_str()).unwrap());
            if plain_path_and_query(&base.url, &path, query).is_some() {
                let parsed = parsed.expect("the parse accepts what the short cut builds");
                let built = upstream_uri(&base, &path, query).expect("built");
                proptest::prop_assert_eq!(built.to_string(), parsed.to_string());
                proptest::prop_assert_eq!(built, parsed);
            }
        }
    }

    proptest::proptest! {
        /// The one pass refuses exactly the paths the rules, each searched for apart, refuse.
        #[test]
        fn the_refused_paths_are_those_the_rules_name(
            path in "([a-z]{0,3}|[./\\\\%:]|%2[eEfF]|%5[cC]|\\.\\.){0,8}",
        ) {
            let encoded_separator = path.as_bytes().windows(3).any(|w| {
                w[0] == b'%'
                    && [b"2f", b"5c", b"2e"]
                        .iter()
                        .any(|code| w[1..].eq_ignore_ascii_case(&code[..]))
            });
            let by_rules = path.starts_with('/')
                || path.contains("//")
                || path.contains('\\')
                || encoded_separator
                || path.split('/').any(|seg| seg == ".." || seg == ".")
                || path.contains("://");
            proptest::prop_assert_eq!(upstream_path_refused(&path), by_rules, "{}", path);
        }
    }

    #[test]
    fn common_paths_take_the_plain_uri() {
        let base = base();
        let plain = plain_path_and_query(&base, "chat/completions", Some("a=1&b=%20"));
        assert_eq!(plain.as_deref(), Some("/v1/chat/completions?a=1&b=%20"));
        let uri = upstream_uri(
            &UpstreamBase::new(base.clone()),
            "chat/completions",
            Some("a=1"),
        );
        assert_eq!(
            uri.unwrap().to_string(),
            "https://api.example.com/v1/chat/completions?a=1"
        );
        assert_eq!(plain_path_and_query(&base, "a b", None), None);
        assert_eq!(plain_path_and_query(&base, "../x", None), None);
        assert_eq!(plain_path_and_query(&base, "x", Some("q='1'")), None);
    }

    fn key(org: Option<&'static str>) -> KeyAuth {
        KeyAuth::new(
            HeaderValue::from_static("Bearer sk-pool"),
            Account {
                organization: org.map(HeaderValue::from_static),
                project: None,
            },
        )
    }

    #[test]
    fn a_key_without_an_account_holds_none_and_sends_no_account_headers() {
        assert!(key(None).account.is_none());
        assert!(key(Some("org-1")).account.is_some());
        let up = upstream_headers(&HeaderMap::new(), &HeaderLists::default(), &key(None));
        assert!(up.get("openai-organization").is_none());
        assert!(up.get("openai-project").is_none());
    }

    #[test]
    fn only_allowlisted_request_headers_go_up_with_the_configured_account() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer client-token"),
            ("x-api-key", "client-token"),
            ("api-key", "client-token"),
            ("connection", "keep-alive, idempotency-key"),
            ("idempotency-key", "hop"),
            ("host", "evil.com"),
            ("x-keygate-pool", "prod"),
            ("true-client-ip", "10.0.0.1"),
            ("openai-organization", "org-someone-else"),
            ("accept-encoding", "gzip"),
            ("x-stainless-lang", "python"),
            ("x-custom", "1"),
            ("content-type", "application/json"),
            ("openai-beta", "assistants=v2"),
        ] {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let lists = HeaderLists {
            forward: vec!["x-stainless-*".into()],
            expose: Vec::new(),
        };
        let up = upstream_headers(&h, &lists, &key(Some("org-pool")));
        assert_eq!(up["authorization"], "Bearer sk-pool");
        assert_eq!(up.get_all("authorization").iter().count(), 1);
        assert_eq!(up["openai-organization"], "org-pool");
        assert_eq!(up["accept-encoding"], "identity");
        let names: Vec<&str> = up.keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-stainless-lang",
                "content-type",
                "openai-beta",
                "authorization",
                "accept-encoding",
                "openai-organization"
            ]
        );
        let up = upstream_headers(&h, &HeaderLists::default(), &key(None));
        assert!(up.get("openai-organization").is_none());
        assert!(up.get("x-stainless-lang").is_none());
    }

    #[test]
    fn only_allowlisted_response_headers_come_down() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json"),
            ("openai-organization", "org-provider"),
            ("openai-project", "proj-provider"),
            ("set-cookie", "a=b"),
            ("x-ratelimit-remaining-requests", "9"),
            ("x-keygate-key", "spoofed"),
            ("retry-after", "3"),
            ("x-request-id", "req-upstream"),
        ] {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let down = downstream_headers(&h, &HeaderLists::default());
        let names: Vec<&str> = down.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "retry-after"]);
        let lists = HeaderLists {
            forward: Vec::new(),
            expose: vec!["x-ratelimit-*".into()],
        };
        assert!(downstream_headers(&h, &lists).contains_key("x-ratelimit-remaining-requests"));
    }

    #[test]
    fn an_encoded_answer_is_recognised() {
        let mut h = HeaderMap::new();
        assert!(!is_encoded(&h));
        h.insert("content-encoding", HeaderValue::from_static("identity"));
        assert!(!is_encoded(&h));
        h.append("content-encoding", HeaderValue::from_static("gzip"));
        assert!(is_encoded(&h));
    }
}
