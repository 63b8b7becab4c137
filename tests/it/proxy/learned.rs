//! Budgets learned from the provider (README "Budgets", "Learned from the provider"), on real
//! Redis in front of a real upstream: an answer that announces less headroom than keygate's
//! view keeps keygate off the key until the announced reset, and `x-ratelimit-limit-requests`
//! gives a key without a configured `rpm` a learned one that is then enforced and listed.

use std::time::Duration;

use keygate::mock::{Behavior, MockUpstream};
use reqwest::Method;

use crate::admin::{admin, key_of, pool_view, start_admin};
use crate::harness::gateway::{chat, config_toml, http, key, post_chat, TestKey};
use crate::harness::{read_budget, wait_until, RedisServer};

const K2: [TestKey; 2] = [
    key("k1", "sk-learn-one-1111"),
    key("k2", "sk-learn-two-2222"),
];

/// A 200 chat completion carrying `headers`.
fn answering(headers: &[(&str, &str)]) -> Behavior {
    let body = serde_json::json!({
        "id": "chatcmpl-learn", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    });
    Behavior::Status {
        status: 200,
        headers: (headers.iter())
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: body.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_announcing_less_headroom_keeps_keygate_off_the_key_until_its_reset() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    // keygate allows k1 600 requests a minute (k2 has no limit); k1's provider says one is
    // left, until its reset in 3 s.
    let low = [
        ("x-ratelimit-limit-requests", "600"),
        ("x-ratelimit-remaining-requests", "1"),
        ("x-ratelimit-reset-requests", "3s"),
    ];
    mock.set_steady(K2[0].secret, answering(&low));
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &K2, "")
        .replace("id = \"k1\"\n", "id = \"k1\"\nlimits = { rpm = 600 }\n");
    let gw = crate::harness::gateway::TestGateway::start(&toml).await;
    let c = http();
    let body = chat("m", false);
    while mock.requests(K2[0].secret) == 0 {
        assert_eq!(post_chat(&c, &gw, &body, &[]).await.status(), 200);
    }
    // Once the batch carrying the hint landed, k1's schedule is ~3 s ahead.
    let tat = || {
        let mut conn = redis.conn();
        // The README's redis-cli command for reading a key's budget ("Budgets").
        let tat = read_budget(&mut conn, "kg:{p}:budget", "k1")
            .get("tat_r")
            .map_or(0, |t| *t as u64);
        let (s, us): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
        (tat, s * 1000 + us / 1000)
    };
    wait_until(
        Duration::from_secs(5),
        "k1's schedule moved to the reset",
        || async {
            let (tat, now) = tat();
            tat >= now + 2_000
        },
    )
    .await;
    let (until, _) = tat();
    let before = mock.requests(K2[0].secret);
    // Keep sending until just before k1's slot (a request checked then may reach the store
    // after it): k2 serves, k1 is left alone.
    let mut sent = 0;
    loop {
        let (_, now) = tat();
        if now + 100 >= until {
            break;
        }
        assert_eq!(post_chat(&c, &gw, &body, &[]).await.status(), 200);
        sent += 1;
    }
    let during = mock.requests(K2[0].secret) - before;
    println!("FIGURES learned: {sent} requests before k1's announced reset, {during} to k1");
    assert_eq!(during, 0, "k1 was used before its provider's reset");
    assert!(sent >= 5, "k2 served meanwhile: {sent}");
    // After the reset k1 serves again.
    let mock = &mock;
    wait_until(Duration::from_secs(10), "k1 serves after its reset", || {
        let (c, gw, body) = (c.clone(), &gw, body.clone());
        async move {
            post_chat(&c, gw, &body, &[]).await;
            mock.requests(K2[0].secret) > before
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_the_provider_announces_becomes_the_keys_learned_rpm_listed_and_enforced() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let said = [
        ("x-ratelimit-limit-requests", "30"),
        ("x-ratelimit-remaining-requests", "29"),
        ("x-ratelimit-reset-requests", "2s"),
    ];
    mock.set_steady(K2[0].secret, answering(&said));
    // No configured limit at all: the pool only learns.
    let limits = "[pools.limits]\nlearn_limits = true\n";
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &K2[..1], limits);
    let gw = start_admin(&toml).await;
    let c = http();
    let body = chat("m", false);
    assert_eq!(post_chat(&c, &gw, &body, &[]).await.status(), 200);
    wait_until(
        Duration::from_secs(5),
        "k1's learned rpm is listed",
        || async {
            let view = pool_view(&c, &gw).await;
            let b = key_of(&view, "k1").budget.clone();
            b.is_some_and(|b| b.limits.rpm == 30 && b.learned.rpm == 30)
        },
    )
    .await;
    let (_, listing) = admin(&c, &gw, Method::GET, "/pools/p/keys", None).await;
    let k1 = &listing["keys"][0]["budget"];
    assert_eq!(k1["learned"]["rpm"], 30, "{listing}");
    // 30 a minute is one every ~2 s: the next request goes, the one after it is refused.
    assert_eq!(post_chat(&c, &gw, &body, &[]).await.status(), 200);
    let r = post_chat(&c, &gw, &body, &[]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "30");
    let err: serde_json::Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "pool_exhausted", "{err}");
    assert_eq!(mock.requests(K2[0].secret), 2);
}
