//! Ids in admin paths are validated before anything else sees them: path tricks and Redis
//! metacharacters get 400, unknown pools and keys 404, and nothing is written.

use keygate::mock::MockUpstream;
use redis::Commands;
use reqwest::Method;
use serde_json::json;

use super::{admin, assert_openai_error, pool_view, raw, start_admin, K3};
use crate::harness::gateway::{config_toml, http};
use crate::harness::RedisServer;

#[tokio::test]
async fn path_tricks_and_bad_values_get_400_and_unknown_pools_or_keys_404() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gw = start_admin(&config_toml(Some(&redis.url()), &mock.base_url(), &K3, "")).await;
    let keys_before: Vec<String> = redis.conn().keys("*").unwrap();
    let bad_paths = [
        ("GET", "/admin/pools/../keys"),
        ("GET", "/admin/pools/p%2F..%2Fq/keys"),
        ("GET", "/admin/pools/%7Bp%7D/keys"),
        ("POST", "/admin/pools/p/keys/../drain"),
        ("POST", "/admin/pools/p/keys/%2E%2E/drain"),
        ("POST", "/admin/pools/p/keys/.hidden/drain"),
        ("POST", "/admin/pools/p/keys/k1%2F..%2Fk2/disable"),
        ("POST", "/admin/pools/p/keys/%7Bp%7D/drain"),
        ("POST", "/admin/pools/p/keys/*/enable"),
        ("POST", "/admin/pools/p/keys/k1:x/reset"),
        ("POST", "/admin/pools/p/keys/%FF/drain"),
        ("POST", "/admin/pools/p/keys/a%20b/drain"),
        ("PUT", "/admin/pools/p*/canary"),
    ];
    for (method, target) in bad_paths {
        let (status, text) = raw(gw.addr, method, target, r#"{"percent": 1}"#).await;
        assert_eq!(status, 400, "{method} {target}: {text}");
        assert!(text.contains(r#""code":"invalid_id""#), "{text}");
    }
    let long = format!("/pools/p/keys/{}/drain", "x".repeat(65));
    let bad_values = [
        (Method::POST, long.as_str(), None),
        (
            Method::PUT,
            "/pools/p/keys/k1/weight",
            Some(json!({"weight": 1001})),
        ),
        (
            Method::PUT,
            "/pools/p/keys/k1/weight",
            Some(json!({"weight": -1})),
        ),
        (
            Method::PUT,
            "/pools/p/keys/k1/weight",
            Some(json!({"weight": "3"})),
        ),
        (
            Method::PUT,
            "/pools/p/keys/k1/weight",
            Some(json!({"weight": 3, "extra": 1})),
        ),
        (
            Method::PUT,
            "/pools/p/keys/k1/group",
            Some(json!({"group": "blue"})),
        ),
        (
            Method::PUT,
            "/pools/p/canary",
            Some(json!({"percent": 101})),
        ),
        (Method::PUT, "/pools/p/canary", Some(json!({}))),
    ];
    let c = http();
    for (method, path, body) in bad_values {
        let (status, body) = admin(&c, &gw, method.clone(), path, body).await;
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert!(body["error"]["message"].is_string());
    }
    let (status, text) = raw(gw.addr, "PUT", "/admin/pools/p/keys/k1/weight", "{not json").await;
    assert_eq!(status, 400, "{text}");
    let unknown = [
        (Method::GET, "/pools/nope/keys", None),
        (Method::POST, "/pools/nope/keys/k1/drain", None),
        (Method::POST, "/pools/p/keys/k9/drain", None),
        (Method::POST, "/pools/p/keys/k9/reset", None),
        (
            Method::PUT,
            "/pools/p/keys/k9/weight",
            Some(json!({"weight": 2})),
        ),
        (
            Method::PUT,
            "/pools/nope/canary",
            Some(json!({"percent": 2})),
        ),
    ];
    for (method, path, body) in unknown {
        let (status, body) = admin(&c, &gw, method.clone(), path, body).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_openai_error(&body, "not_found");
    }
    let mut keys_after: Vec<String> = redis.conn().keys("*").unwrap();
    let mut keys_before = keys_before;
    keys_before.sort();
    keys_after.sort();
    assert_eq!(keys_before, keys_after, "a rejected call wrote to Redis");
    let view = pool_view(&c, &gw).await;
    assert!(view
        .keys
        .iter()
        .all(|k| k.state == "active" && k.weight == 1 && k.group == "stable"));
}
