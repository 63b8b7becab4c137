//! The admin API (README.md, "Operate"): token check, listings, changes through one replica seen by the
//! others at once, id validation. Real redis-server, real gateways, the mock upstream.

pub mod cli;
mod cli_usability;
mod ids;
mod replicas;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use keygate::admin::{KeyView, PoolList, PoolView};
use keygate::config::Config;
use keygate::mock::MockUpstream;
use redis::Commands;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::gateway::{chat, config_toml, http, key, post_chat, TestGateway, TestKey};
use crate::harness::{wait_until, RedisServer};

pub const ADMIN_TOKEN: &str = "test-admin-token-5e1d0c9a8b7f6e5d4c3b";

pub const K3: [TestKey; 3] = [
    key("k1", "sk-test-one-1111"),
    key("k2", "sk-test-two-2222"),
    key("k3", "sk-test-three-3333"),
];

/// `toml` parsed with `KEYGATE_ADMIN_TOKEN` set (the only variable the test configs read).
pub fn admin_config(toml: &str) -> Config {
    let env = |name: &str| (name == "KEYGATE_ADMIN_TOKEN").then(|| ADMIN_TOKEN.to_string());
    Config::from_toml_str(toml, &env, Path::new("."))
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{toml}"))
}

pub async fn start_admin(toml: &str) -> TestGateway {
    TestGateway::start_config(admin_config(toml)).await
}

/// One admin call with the right token: status and JSON body.
pub async fn admin(
    c: &reqwest::Client,
    gw: &TestGateway,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut rb = c
        .request(method, gw.url(&format!("/admin{path}")))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("admin request");
    let status = r.status();
    (status, r.json().await.expect("admin answers JSON"))
}

pub async fn pool_view(c: &reqwest::Client, gw: &TestGateway) -> PoolView {
    let (status, body) = admin(c, gw, Method::GET, "/pools/p/keys", None).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).expect("a PoolView")
}

pub fn key_of<'a>(view: &'a PoolView, id: &str) -> &'a KeyView {
    view.keys
        .iter()
        .find(|k| k.id == id)
        .unwrap_or_else(|| panic!("{id} not listed: {view:?}"))
}

pub fn assert_openai_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["param"].is_null(), "{body}");
}

/// Sends one request exactly as written (no client-side normalisation of `..` or `%2E%2E`).
pub async fn raw(addr: SocketAddr, method: &str, target: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok());
    (
        status.unwrap_or_else(|| panic!("no status in {text:?}")),
        text,
    )
}

/// The key id each of `n` chat requests through `gw` was served by.
pub async fn served_by(
    c: &reqwest::Client,
    gw: &TestGateway,
    n: usize,
    hdr: &[(&str, &str)],
) -> Vec<String> {
    let mut keys = Vec::new();
    for _ in 0..n {
        let r = post_chat(c, gw, &chat("m", false), hdr).await;
        assert_eq!(r.status(), 200);
        keys.push(r.headers()["x-keygate-key"].to_str().unwrap().to_string());
    }
    keys
}

#[tokio::test]
async fn without_a_configured_token_every_admin_path_answers_404_admin_disabled() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&config_toml(None, &mock.base_url(), &K3, "")).await;
    let c = http();
    let calls = [
        (Method::GET, "/admin/pools"),
        (Method::GET, "/admin/pools/p/keys"),
        (Method::POST, "/admin/pools/p/keys/k1/drain"),
        (Method::PUT, "/admin/pools/p/keys/k1/weight"),
        (Method::PUT, "/admin/pools/p/canary"),
        (Method::POST, "/admin/reload"),
        (Method::GET, "/admin/reload"),
    ];
    for (method, path) in calls {
        for token in [None, Some(ADMIN_TOKEN)] {
            let mut rb = c
                .request(method.clone(), gw.url(path))
                .json(&json!({"weight": 0}));
            if let Some(t) = token {
                rb = rb.bearer_auth(t);
            }
            let r = rb.send().await.unwrap();
            assert_eq!(r.status(), 404, "{method} {path}");
            let body = r.json().await.unwrap();
            assert_openai_error(&body, "admin_disabled");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("KEYGATE_ADMIN_TOKEN") && message.contains("keygate serve"),
                "{message}"
            );
        }
    }
    assert_eq!(
        served_by(&c, &gw, 6, &[]).await.len(),
        6,
        "the proxy is unaffected"
    );
}

#[tokio::test]
async fn a_missing_wrong_or_empty_admin_token_gets_401_and_changes_nothing() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gw = start_admin(&config_toml(Some(&redis.url()), &mock.base_url(), &K3, "")).await;
    let c = http();
    let authorizations: [Option<String>; 6] = [
        None,
        Some("Bearer ".into()),
        Some("Bearer".into()),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some(format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1])),
    ];
    let changes = [
        (Method::POST, "/admin/pools/p/keys/k1/drain", json!({})),
        (Method::POST, "/admin/pools/p/keys/k1/disable", json!({})),
        (
            Method::PUT,
            "/admin/pools/p/keys/k1/weight",
            json!({"weight": 0}),
        ),
        (
            Method::PUT,
            "/admin/pools/p/keys/k1/group",
            json!({"group": "canary"}),
        ),
        (
            Method::PUT,
            "/admin/pools/p/canary",
            json!({"percent": 100}),
        ),
        (Method::GET, "/admin/pools", json!({})),
        (Method::POST, "/admin/reload", json!({})),
    ];
    // Ten refusals from one address within a minute: that address then gets 429 for a while.
    let mut refused = 0;
    for auth in &authorizations {
        for (method, path, body) in &changes {
            let mut rb = c.request(method.clone(), gw.url(path)).json(body);
            if let Some(a) = auth {
                rb = rb.header("authorization", a);
            }
            let r = rb.send().await.unwrap();
            let (status, code) = match refused {
                0..10 => (401, "invalid_admin_token"),
                _ => (429, "admin_auth_throttled"),
            };
            refused += 1;
            assert_eq!(r.status(), status, "{method} {path} with {auth:?}");
            assert_openai_error(&r.json().await.unwrap(), code);
        }
    }
    let k1: std::collections::HashMap<String, String> =
        redis.conn().hgetall("kg:{p}:key:k1").unwrap();
    assert_eq!(
        (
            k1["status"].as_str(),
            k1["weight"].as_str(),
            k1["group"].as_str()
        ),
        ("active", "1", "stable")
    );
    // This address is throttled now, even with the right token; another one is not.
    let r = c
        .get(gw.url("/admin/pools"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let elsewhere = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let view = pool_view(&elsewhere, &gw).await;
    assert_eq!(view.canary_percent, 0);
    assert_eq!(view.counts.active, 3);
    // Counted: the ten refused tokens; the throttled requests were not checked at all.
    assert_eq!(gw.state.metrics.limits.admin_auth_failures.get(), 10);
}
#[tokio::test]
async fn listings_show_masked_fingerprints_and_never_a_secret() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gw = start_admin(&config_toml(Some(&redis.url()), &mock.base_url(), &K3, "")).await;
    let c = http();
    served_by(&c, &gw, 10, &[]).await;
    // Successes reach Redis in batches (store.report_flush_ms): wait for the ten of them.
    let in_redis = || async {
        let mut conn = redis.conn();
        ["k1", "k2", "k3"]
            .iter()
            .map(|k| {
                let n: Option<u64> = conn.hget(format!("kg:{{p}}:key:{k}"), "successes").unwrap();
                n.unwrap_or(0)
            })
            .sum::<u64>()
            == 10
    };
    wait_until(Duration::from_secs(5), "ten successes in Redis", in_redis).await;
    // A replica whose config no longer has k3: the store keeps k3, draining (removed).
    let older = start_admin(&config_toml(
        Some(&redis.url()),
        &mock.base_url(),
        &K3[..2],
        "",
    ))
    .await;
    for (gw, path) in [
        (&gw, "/admin/pools"),
        (&gw, "/admin/pools/p/keys"),
        (&older, "/admin/pools/p/keys"),
    ] {
        let text = c
            .get(gw.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for k in &K3 {
            assert!(
                !text.contains(k.secret),
                "{path} shows the secret of {}: {text}",
                k.id
            );
        }
    }
    let (status, body) = admin(&c, &gw, Method::GET, "/pools", None).await;
    assert_eq!(status, 200);
    let list: PoolList = serde_json::from_value(body).unwrap();
    assert_eq!(list.pools.len(), 1);
    let pool = &list.pools[0];
    assert_eq!(
        (pool.name.as_str(), pool.counts.active, pool.counts.draining),
        ("p", 2, 1)
    );
    let fp = |v: &PoolView, id| key_of(v, id).fingerprint.clone();
    assert_eq!(fp(pool, "k1").as_deref(), Some("sk-…1111"));
    assert_eq!(fp(pool, "k2").as_deref(), Some("sk-…2222"));
    assert_eq!(fp(pool, "k3").as_deref(), Some("sk-…3333"));
    let served: u64 = pool.keys.iter().map(|k| k.successes).sum();
    assert_eq!(served, 10);
    assert!(pool
        .keys
        .iter()
        .filter(|k| k.successes > 0)
        .all(|k| k.last_status == 200 && k.last_used_ms > 0));
    let view = pool_view(&c, &older).await;
    let k3 = key_of(&view, "k3");
    assert_eq!(
        (
            k3.state.as_str(),
            k3.reason.as_str(),
            k3.fingerprint.as_deref()
        ),
        ("draining", "removed", None)
    );
    assert_eq!(fp(&view, "k1").as_deref(), Some("sk-…1111"));
}
