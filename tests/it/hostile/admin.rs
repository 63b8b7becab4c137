//! The admin API under attack: odd ids in paths, bad bodies, nothing changes.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_with_odd_ids_or_bodies_are_refused_and_change_nothing() {
    let env = Isolated::start(strict_limits).await;
    let c = http();
    let admin =
        |m: reqwest::Method, path: &str| c.request(m, env.gw().url(path)).bearer_auth(ADMIN_TOKEN);
    // The token works: a real change and its undo.
    let r = admin(reqwest::Method::POST, "/admin/pools/p/keys/h1/disable")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = admin(reqwest::Method::POST, "/admin/pools/p/keys/h1/enable")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = env.keys().await;
    let canary_before = env
        .gw()
        .state
        .store
        .snapshot("p", None)
        .await
        .unwrap()
        .canary_percent;
    let long = "k".repeat(1000);
    let odd_ids = [
        "..%2F..%2Fx",
        "%2e%2e",
        "..",
        ".h1",
        "h1%00",
        "h1%0d%0aX-Injected:%201",
        "*",
        "h1*",
        "%7Bp%7D",
        "h1:x",
        "h1%20",
        "%E2%80%AEh1",
        "%ff",
        long.as_str(),
    ];
    let mut refused = Vec::new();
    for id in odd_ids {
        for (m, tail) in [
            (reqwest::Method::POST, "disable"),
            (reqwest::Method::POST, "drain"),
            (reqwest::Method::POST, "reset"),
        ] {
            for path in [
                format!("/admin/pools/p/keys/{id}/{tail}"),
                format!("/admin/pools/{id}/keys/h1/{tail}"),
            ] {
                let r = admin(m.clone(), &path).send().await.unwrap();
                let s = r.status().as_u16();
                assert!(r.headers().get("x-injected").is_none());
                assert!([400, 404].contains(&s), "{path}: {s}");
                refused.push(s);
            }
        }
        let r = admin(reqwest::Method::GET, &format!("/admin/pools/{id}/keys"))
            .send()
            .await
            .unwrap();
        assert!(
            [400, 404].contains(&r.status().as_u16()),
            "{id}: {}",
            r.status()
        );
    }
    // Paths that only look like a key route, sent as is (a client library would resolve the
    // dot segments itself).
    for path in [
        "/admin/pools/p/keys/h1/../h2/disable",
        "/admin/pools/p/keys/h1/%2e%2e/h2/disable",
        "/admin/pools/p/keys/h1/disable/extra",
        "/admin//pools/p/keys/h1/disable",
        "/admin/pools/p/keys//disable",
        "/admin/pools/p/keys/h1\\..\\h2/disable",
    ] {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let r = raw(env.addr(), req.as_bytes(), WAIT).await;
        assert!(r.refused(), "{path}: {r:?}");
    }
    // Bodies out of range, of the wrong type, or not JSON.
    let bodies: [(&str, &str); 14] = [
        ("/admin/pools/p/keys/h1/weight", r#"{"weight": -1}"#),
        ("/admin/pools/p/keys/h1/weight", r#"{"weight": 1001}"#),
        ("/admin/pools/p/keys/h1/weight", r#"{"weight": 1e99}"#),
        ("/admin/pools/p/keys/h1/weight", r#"{"weight": "3"}"#),
        (
            "/admin/pools/p/keys/h1/weight",
            r#"{"weight": 3, "extra": 1}"#,
        ),
        ("/admin/pools/p/keys/h1/weight", r#"{"weight": "#),
        ("/admin/pools/p/keys/h1/weight", "[]"),
        ("/admin/pools/p/keys/h1/group", r#"{"group": "../stable"}"#),
        (
            "/admin/pools/p/keys/h1/group",
            r#"{"group": "stable\r\nx"}"#,
        ),
        ("/admin/pools/p/keys/h1/group", r#"{"group": "{p}"}"#),
        ("/admin/pools/p/keys/h1/group", r#"{"group": ""}"#),
        ("/admin/pools/p/canary", r#"{"percent": 101}"#),
        ("/admin/pools/p/canary", r#"{"percent": -1}"#),
        (
            "/admin/pools/p/canary",
            r#"{"percent": 18446744073709551616}"#,
        ),
    ];
    for (path, body) in bodies {
        let r = admin(reqwest::Method::PUT, path)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        assert!((400..500).contains(&s), "{path} {body}: {s}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"]["message"].is_string(), "{path} {body}: {v}");
    }
    assert_eq!(states(&env.keys().await), states(&before));
    let canary_after = env
        .gw()
        .state
        .store
        .snapshot("p", None)
        .await
        .unwrap()
        .canary_percent;
    assert_eq!(canary_after, canary_before);
    // Nothing was created in Redis under an odd name: every key belongs to pool `p`.
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut env._redis.conn())
        .unwrap();
    for n in &names {
        assert!(
            n.starts_with("kg:{p}:"),
            "an odd key name reached Redis: {n:?}"
        );
    }
    println!(
        "FIGURES admin-odd-ids: {} odd-id calls refused ({} x 400, {} x 404)",
        refused.len(),
        refused.iter().filter(|s| **s == 400).count(),
        refused.iter().filter(|s| **s == 404).count()
    );
    env.assert_still_serving().await;
}
