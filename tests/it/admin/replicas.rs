//! Changes made through one replica, seen by the others at their next selection (one store
//! script each), and in the per-key Redis hash operators read.

use std::time::Duration;

use keygate::mock::MockUpstream;
use redis::Commands;
use reqwest::Method;
use serde_json::json;

use super::{admin, assert_openai_error, key_of, pool_view, served_by, start_admin, K3};
use crate::harness::gateway::{chat, config_toml, http, post_chat};
use crate::harness::{wait_until, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_through_replica_a_stops_selection_on_replicas_b_and_c_immediately() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &K3, "");
    let (a, b, cc) = (
        start_admin(&toml).await,
        start_admin(&toml).await,
        start_admin(&toml).await,
    );
    let c = http();
    // Before: B and C both use k2.
    for gw in [&b, &cc] {
        let mut n = 0;
        while !served_by(&c, gw, 1, &[]).await.contains(&"k2".to_string()) {
            n += 1;
            assert!(n < 200, "k2 never chosen");
        }
    }
    let (status, body) = admin(&c, &a, Method::POST, "/pools/p/keys/k2/drain", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "draining");
    let k2_requests = mock.requests("sk-test-two-2222");
    // The very next requests on B and C: never k2.
    for gw in [&b, &cc, &b, &cc] {
        let keys = served_by(&c, gw, 15, &[]).await;
        assert!(
            !keys.contains(&"k2".to_string()),
            "drained k2 still served: {keys:?}"
        );
    }
    assert_eq!(mock.requests("sk-test-two-2222"), k2_requests);
    assert_eq!(key_of(&pool_view(&c, &cc).await, "k2").reason, "admin");
    // Enabled through C: B uses it again.
    let (status, body) = admin(&c, &cc, Method::POST, "/pools/p/keys/k2/enable", None).await;
    assert_eq!(
        (status.as_u16(), body["state"].as_str()),
        (200, Some("active"))
    );
    let keys = served_by(&c, &b, 60, &[]).await;
    assert!(keys.contains(&"k2".to_string()), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_group_and_canary_changes_through_one_replica_apply_on_the_others() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let mut keys = K3;
    keys[2].group = "canary";
    let canary = "[pools.canary]\ngroup = \"canary\"\npercent = 0\n";
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &keys, canary);
    let (a, b, cc) = (
        start_admin(&toml).await,
        start_admin(&toml).await,
        start_admin(&toml).await,
    );
    let c = http();
    let only = |keys: Vec<String>, want: &[&str]| {
        assert!(
            keys.iter().all(|k| want.contains(&k.as_str())),
            "{keys:?} not all in {want:?}"
        );
        for w in want {
            assert!(keys.iter().any(|k| k == w), "{w} never served: {keys:?}");
        }
    };
    // Weight 0: k1 is never selected by B or C.
    let (status, body) = admin(
        &c,
        &a,
        Method::PUT,
        "/pools/p/keys/k1/weight",
        Some(json!({"weight": 0})),
    )
    .await;
    assert_eq!((status.as_u16(), &body["weight"]), (200, &json!(0)));
    only(served_by(&c, &b, 30, &[]).await, &["k2"]);
    only(served_by(&c, &cc, 30, &[]).await, &["k2"]);
    // Group: k3 joins stable, so B and C share stable traffic between k2 and k3.
    let body = json!({"group": "stable"});
    let (status, _) = admin(&c, &a, Method::PUT, "/pools/p/keys/k3/group", Some(body)).await;
    assert_eq!(status, 200);
    only(served_by(&c, &b, 40, &[]).await, &["k2", "k3"]);
    only(served_by(&c, &cc, 40, &[]).await, &["k2", "k3"]);
    // Canary: k2 moves to the canary group and the pool sends it 100% of the traffic.
    let body = json!({"group": "canary"});
    assert_eq!(
        admin(&c, &a, Method::PUT, "/pools/p/keys/k2/group", Some(body))
            .await
            .0,
        200
    );
    let (status, body) = admin(
        &c,
        &a,
        Method::PUT,
        "/pools/p/canary",
        Some(json!({"percent": 100})),
    )
    .await;
    assert_eq!(
        (status.as_u16(), &body["canary_percent"]),
        (200, &json!(100))
    );
    for gw in [&b, &cc] {
        let r = post_chat(&c, gw, &chat("m", false), &[]).await;
        assert_eq!(r.headers()["x-keygate-group"], "canary");
        only(served_by(&c, gw, 20, &[]).await, &["k2"]);
        only(
            served_by(&c, gw, 30, &[("x-gray-group", "control")]).await,
            &["k3"],
        );
    }
    let view = pool_view(&c, &b).await;
    assert_eq!(
        (view.canary_group.as_str(), view.canary_percent),
        ("canary", 100)
    );
    let k = |id| key_of(&view, id).clone();
    assert_eq!(
        (k("k1").weight, k("k2").group, k("k3").group),
        (0, "canary".into(), "stable".into())
    );
}

#[tokio::test]
async fn disable_reset_and_enable_show_in_the_operators_redis_hash() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gw = start_admin(&config_toml(Some(&redis.url()), &mock.base_url(), &K3, "")).await;
    let c = http();
    served_by(&c, &gw, 12, &[]).await;
    let hash = |id: &str| -> std::collections::HashMap<String, String> {
        redis.conn().hgetall(format!("kg:{{p}}:key:{id}")).unwrap()
    };
    let (status, body) = admin(&c, &gw, Method::POST, "/pools/p/keys/k1/disable", None).await;
    assert_eq!((status.as_u16(), &body["state"]), (200, &json!("disabled")));
    assert_eq!(
        (hash("k1")["status"].as_str(), hash("k1")["reason"].as_str()),
        ("disabled", "admin")
    );
    let keys = served_by(&c, &gw, 20, &[]).await;
    assert!(!keys.contains(&"k1".to_string()));
    // Successes reach Redis in batches: wait for all 32 before resetting counters (a batch
    // landing after the reset would count again).
    let successes = |ids: &[&str]| -> u64 {
        ids.iter()
            .map(|k| hash(k)["successes"].parse::<u64>().unwrap())
            .sum()
    };
    wait_until(Duration::from_secs(5), "32 successes in Redis", || async {
        successes(&["k1", "k2", "k3"]) == 32
    })
    .await;
    assert!(successes(&["k2", "k3"]) >= 20);
    for k in ["k2", "k3"] {
        let (status, body) = admin(
            &c,
            &gw,
            Method::POST,
            &format!("/pools/p/keys/{k}/reset"),
            None,
        )
        .await;
        assert_eq!((status.as_u16(), &body["action"]), (200, &json!("reset")));
        assert_eq!(hash(k)["successes"], "0");
    }
    let (status, body) = admin(&c, &gw, Method::POST, "/pools/p/keys/k1/enable", None).await;
    assert_eq!((status.as_u16(), &body["state"]), (200, &json!("active")));
    assert_eq!(
        (hash("k1")["status"].as_str(), hash("k1")["reason"].as_str()),
        ("active", "")
    );
    // This in-process gateway has no config file: reload refuses, in the error shape.
    let (status, body) = admin(&c, &gw, Method::POST, "/reload", None).await;
    assert_eq!(status, 400);
    assert_openai_error(&body, "invalid_config");
}
