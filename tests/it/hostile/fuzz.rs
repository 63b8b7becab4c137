//! Property tests over what hostile input reaches: config parsing, the
//! upstream URL built from a request path, and the header filters each way. The parsers of
//! upstream answers (rate-limit headers, classification, SSE usage) have theirs next to their
//! code in `src/upstream/headers.rs`, `src/upstream/classify.rs` and `src/usage.rs`.
//!
//! Case counts are kept small enough for CI (each block runs in about a second).

use std::path::Path;
use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use keygate::config::{name_matches, Config, HeaderLists, DEFAULT_EXPOSED, DEFAULT_FORWARDED};
use keygate::proxy::forward::{downstream_headers, upstream_headers, upstream_uri, upstream_url};
use keygate::proxy::request::inspect;
use keygate::proxy::route::request_id;
use keygate::state::{Account, KeyAuth};
use proptest::prelude::*;

/// A config using every section, each field set: the configuration example (the config
/// unit tests' fixture) plus the server's read limits and an inline secret.
static FULL: LazyLock<String> =
    LazyLock::new(|| {
        let design = include_str!("../../fixtures/design-example.toml");
        let edits = [
        (
            "shutdown_grace_s = 30\n",
            "shutdown_grace_s = 30\nheader_read_timeout_ms = 10000\nbody_read_timeout_ms = 30000\n\
             max_header_bytes = 65536\n",
        ),
        ("secret_env = \"HS_KEY_004\"", "secret = \"sk-inline-secret-0004\""),
    ];
        let mut full = format!("\n{design}");
        for (from, to) in edits {
            assert!(full.contains(from), "the fixture no longer holds {from:?}");
            full = full.replacen(from, to, 1);
        }
        full
    });

fn env(name: &str) -> Option<String> {
    match name {
        "HS_KEY_001" => Some("sk-from-env-0001".into()),
        "KEYGATE_ADMIN_TOKEN" => Some("fuzz-admin-token-0123456789abcdef".into()),
        _ => None,
    }
}

fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
    Config::from_toml_str(text, env, Path::new("/nonexistent")).map_err(|e| e.to_string())
}

/// Whatever parses is usable: the proxy can build its URLs and the store its ids from it.
fn check_invariants(c: &Config) {
    for p in &c.pools {
        let base = url::Url::parse(&p.base_url).expect("validated base_url parses");
        assert!(matches!(base.scheme(), "http" | "https"), "{}", p.base_url);
        assert!(keygate::pool::is_valid_id(&p.name), "{}", p.name);
        assert!(p.max_attempts >= 1);
        for k in &p.keys {
            assert!(keygate::pool::is_valid_id(&k.id), "{}", k.id);
            assert!(
                HeaderValue::from_str(&format!("Bearer {}", k.secret.expose())).is_ok(),
                "a secret that cannot be sent was accepted"
            );
        }
    }
}

/// Small edits that break TOML or its values in the ways people and attackers do.
fn mutation() -> impl Strategy<Value = (usize, usize, String)> {
    let snippet = prop_oneof![
        Just(String::new()),
        Just("=".to_string()),
        Just("[".to_string()),
        Just("]]".to_string()),
        Just("\"".to_string()),
        Just("\n".to_string()),
        Just("'''".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        Just("9223372036854775807".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("1e308".to_string()),
        Just("0".to_string()),
        Just("\"\"".to_string()),
        Just("\"../../etc/passwd\"".to_string()),
        Just("\"http://evil.example/v1\"".to_string()),
        Just("\"{p}:*\"".to_string()),
        Just("[[pools]]\nname = \"prod\"\n".to_string()),
        Just("[[pools.keys]]\nid = \"prod-001\"\n".to_string()),
        Just("{ a = { b = { c = [[[[1]]]] } } }".to_string()),
        Just("\u{0}\u{feff}\u{202e}".to_string()),
        "[ -~]{0,12}",
        any::<String>(),
    ];
    (any::<usize>(), 0usize..40, snippet)
}

fn apply(text: &str, (at, cut, insert): &(usize, usize, String)) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = at % (chars.len() + 1);
    let end = (at + cut).min(chars.len());
    chars.splice(at..end, insert.chars());
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn config_parsing_never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = parse(&text, &env);
    }

    #[test]
    fn config_parsing_never_panics_on_mutated_configs(
        edits in proptest::collection::vec(mutation(), 1..5),
    ) {
        let mut text = FULL.clone();
        for e in &edits {
            text = apply(&text, e);
        }
        if let Ok(c) = parse(&text, &env) {
            check_invariants(&c);
        }
    }

    #[test]
    fn config_parsing_never_panics_on_hostile_environment_values(
        value in any::<String>(),
        which in 0usize..8,
    ) {
        let names = [
            "KEYGATE_SERVER__LISTEN", "KEYGATE_SERVER__MAX_BODY_BYTES",
            "KEYGATE_STORE__REDIS_URL", "KEYGATE_STORE__TIMEOUT_MS", "KEYGATE_STORE__SENTINELS",
            "KEYGATE_ADMIN__TOKEN_ENV", "HS_KEY_001", "KEYGATE_ADMIN_TOKEN",
        ];
        let hostile = |name: &str| if name == names[which] { Some(value.clone()) } else { env(name) };
        if let Ok(c) = parse(&FULL, &hostile) {
            check_invariants(&c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream URL: a request path can never leave the configured origin and base path.

const BASES: [&str; 5] = [
    "https://api.example.com/v1",
    "http://127.0.0.1:8080/v1/",
    "https://api.example.com/openai/deployments/v1",
    "http://upstream:9000",
    "https://user:pw@api.example.com:8443/v1",
];

/// Path text built from the pieces of known tricks, plus anything at all.
fn hostile_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/"),
        Just("//"),
        Just("."),
        Just(".."),
        Just("%2e"),
        Just("%2E%2e"),
        Just("%2f"),
        Just("%2F"),
        Just("%5c"),
        Just("\\"),
        Just("@"),
        Just(":"),
        Just("http:"),
        Just("https://"),
        Just("evil.example"),
        Just("127.0.0.1:1"),
        Just("?"),
        Just("#"),
        Just("%00"),
        Just("%"),
        Just("%%32%65"),
        Just("%252e"),
        Just("chat"),
        Just("completions"),
        Just("\u{ff0e}\u{ff0e}"),
        Just("\u{2215}"),
        Just(";"),
        Just(" "),
        Just("\t"),
        Just("\r\n"),
    ];
    prop_oneof![
        proptest::collection::vec(piece, 0..10).prop_map(|v| v.concat()),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn upstream_urls_keep_the_configured_origin_and_base_path(
        base in 0usize..BASES.len(),
        path in hostile_path(),
        query in proptest::option::of("[ -~]{0,16}"),
    ) {
        let base = url::Url::parse(BASES[base]).unwrap();
        let Ok(url) = upstream_url(&base, &path, query.as_deref()) else {
            return Ok(());
        };
        prop_assert_eq!(url.scheme(), base.scheme());
        prop_assert_eq!(url.host_str(), base.host_str());
        prop_assert_eq!(url.port_or_known_default(), base.port_or_known_default());
        prop_assert_eq!(url.username(), base.username());
        prop_assert_eq!(url.password(), base.password());
        prop_assert_eq!(url.fragment(), None);
        let base_path = base.path().trim_end_matches('/');
        let under = format!("{base_path}/");
        prop_assert!(url.path().starts_with(&under), "{} escaped {}", url, base);
        for seg in url.path()[under.len()..].split('/') {
            let lower = seg.to_ascii_lowercase();
            prop_assert!(seg != ".." && seg != "." && lower != "%2e%2e" && lower != "%2e", "{}", url);
        }
        // Parsing the URL again gives the same origin: nothing in it re-reads as a host.
        let again = url::Url::parse(url.as_str()).unwrap();
        prop_assert_eq!(again.host_str(), base.host_str());
        prop_assert_eq!(again.port_or_known_default(), base.port_or_known_default());
        prop_assert_eq!(again.path(), url.path());
        // What the upstream client is given is that same URL: no accepted path is refused or
        // changed on the way to an `http::Uri`.
        let base = keygate::state::UpstreamBase::new(base);
        let uri = upstream_uri(&base, &path, query.as_deref()).ok().map(|u| u.to_string());
        prop_assert_eq!(uri.as_deref(), Some(url.as_str()));
    }
}

// ---------------------------------------------------------------------------------------------
// Header filters: only allowlisted headers either way; the pool key is the only credential going
// up; no hop-by-hop header, nothing keygate owns, no cookie, no provider account header.

const UP_NEVER: &[&str] = &[
    "proxy-authorization",
    "proxy-authenticate",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "cookie",
    "x-api-key",
    "api-key",
    "true-client-ip",
    "x-original-url",
];

const DOWN_NEVER: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "set-cookie",
    "openai-organization",
    "openai-project",
    "content-encoding",
];

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("authorization".to_string()),
        Just("Authorization".to_string()),
        Just("connection".to_string()),
        Just("host".to_string()),
        Just("cookie".to_string()),
        Just("set-cookie".to_string()),
        Just("transfer-encoding".to_string()),
        Just("x-keygate-pool".to_string()),
        Just("X-Keygate-Key".to_string()),
        Just("x-forwarded-host".to_string()),
        Just("content-type".to_string()),
        Just("x-custom".to_string()),
        Just("keep-alive".to_string()),
        Just("upgrade".to_string()),
        Just("x-api-key".to_string()),
        Just("True-Client-IP".to_string()),
        Just("OpenAI-Organization".to_string()),
        Just("openai-beta".to_string()),
        Just("x-stainless-os".to_string()),
        Just("accept-encoding".to_string()),
        Just("content-encoding".to_string()),
        "[a-zA-Z0-9-]{1,12}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"Bearer client-token".to_vec()),
        Just(b"keep-alive, x-custom, X-Secret-Hop".to_vec()),
        Just(b"close".to_vec()),
        Just(b", ,,authorization".to_vec()),
        "[ -~]{0,24}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..24),
    ]
}

fn header_map(pairs: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            h.append(n, v);
        }
    }
    h
}

/// The pool's additions to the header allowlists in these tests.
fn lists() -> HeaderLists {
    HeaderLists {
        forward: vec!["x-stainless-*".into(), "x-custom".into()],
        expose: vec!["x-custom".into()],
    }
}

fn allowed_up(name: &str) -> bool {
    DEFAULT_FORWARDED.contains(&name) || lists().forward.iter().any(|p| name_matches(p, name))
}

/// Names listed in the `Connection` headers of `h`.
fn listed(h: &HeaderMap) -> Vec<String> {
    h.get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn only_allowlisted_headers_and_the_pool_key_go_upstream(
        pairs in proptest::collection::vec((header_name(), header_value()), 0..12),
    ) {
        let client = header_map(&pairs);
        let mut auth = HeaderValue::from_static("Bearer sk-pool-key");
        auth.set_sensitive(true);
        let key = KeyAuth::new(
            auth.clone(),
            Account {
                organization: Some(HeaderValue::from_static("org-pool")),
                project: None,
            },
        );
        let up = upstream_headers(&client, &lists(), &key);
        let auths: Vec<_> = up.get_all("authorization").iter().collect();
        prop_assert_eq!(auths, vec![&auth]);
        prop_assert!(up.get("authorization").is_some_and(HeaderValue::is_sensitive));
        let orgs: Vec<_> = up.get_all("openai-organization").iter().collect();
        prop_assert_eq!(orgs, vec!["org-pool"]);
        let encodings: Vec<_> = up.get_all("accept-encoding").iter().collect();
        prop_assert_eq!(encodings, vec!["identity"]);
        let set_by_keygate = ["authorization", "openai-organization", "accept-encoding"];
        let hop = listed(&client);
        for name in up.keys() {
            let n = name.as_str();
            if set_by_keygate.contains(&n) {
                continue;
            }
            prop_assert!(allowed_up(n), "{} is not in the allowlist", n);
            prop_assert!(!UP_NEVER.contains(&n), "{} went up", n);
            prop_assert!(!hop.iter().any(|l| l == n), "{} is hop-by-hop", n);
        }
        // Everything the list allows is forwarded whole, every value, in order.
        for name in client.keys() {
            let n = name.as_str();
            if allowed_up(n) && !set_by_keygate.contains(&n) && !hop.iter().any(|l| l == n) {
                let a: Vec<_> = client.get_all(name).iter().collect();
                let b: Vec<_> = up.get_all(name).iter().collect();
                prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn only_allowlisted_headers_come_down(
        pairs in proptest::collection::vec((header_name(), header_value()), 0..12),
    ) {
        let upstream = header_map(&pairs);
        let down = downstream_headers(&upstream, &lists());
        let hop = listed(&upstream);
        for name in down.keys() {
            let n = name.as_str();
            let allowed = DEFAULT_EXPOSED.contains(&n) || lists().expose.iter().any(|p| name_matches(p, n));
            prop_assert!(allowed, "{} is not in the allowlist", n);
            prop_assert!(!DOWN_NEVER.contains(&n), "{} came down", n);
            prop_assert!(!hop.iter().any(|l| l == n), "{} is hop-by-hop", n);
        }
    }

    #[test]
    fn request_ids_are_always_plain_header_text(
        pairs in proptest::collection::vec((Just("x-request-id".to_string()), header_value()), 0..3),
    ) {
        let id = request_id(&header_map(&pairs));
        prop_assert!(!id.is_empty() && id.len() <= 128);
        prop_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)), "{:?}", id);
    }

    #[test]
    fn body_inspection_never_panics(
        body in proptest::collection::vec(any::<u8>(), 0..256),
        ct in header_value(),
        json_like in "[{}\\[\\]\":,a-z0-9 ]{0,64}",
    ) {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&ct) {
            h.insert("content-type", v);
        }
        let _ = inspect(&Method::POST, &h, &body, |_| true);
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let _ = inspect(&Method::POST, &h, json_like.as_bytes(), |_| true);
        let _ = inspect(&Method::POST, &h, &body, |_| false);
    }
}
