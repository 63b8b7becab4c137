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

/// The hint groups of every `report_batch` call Redis's slowlog holds (it logs every command
/// at threshold 0): per call, (key id, remaining requests) of each hint it carried. The batch's
/// ARGV: now, k, k groups of 4, h, h groups of 8 (`lua/report_batch.lua`).
fn batch_hints(conn: &mut redis::Connection) -> Vec<Vec<(String, String)>> {
    let log: redis::Value = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query(conn)
        .unwrap();
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let redis::Value::Array(entries) = log else {
        panic!("SLOWLOG GET: {log:?}")
    };
    let mut calls = Vec::new();
    for e in entries {
        let redis::Value::Array(fields) = e else {
            continue;
        };
        let Some(redis::Value::Array(args)) = fields.get(3) else {
            continue;
        };
        let args: Vec<String> = args.iter().map(text).collect();
        let batch = args.len() > 5
            && args[0].eq_ignore_ascii_case("fcall")
            && args[1].ends_with("report_batch");
        if !batch {
            continue;
        }
        // args: FCALL, function, 1, pool base, then the ARGV.
        let argv = &args[4..];
        let k: usize = argv[1].parse().unwrap();
        let h_at = 2 + 4 * k;
        let h: usize = argv[h_at].parse().unwrap();
        let hints = (0..h)
            .map(|i| {
                let g = &argv[h_at + 1 + 8 * i..];
                (g[0].clone(), g[2].clone())
            })
            .collect();
        calls.push(hints);
    }
    calls
}

/// [`batch_hints`] once at least one success batch has reached Redis (within `limit`).
async fn batches(redis: &RedisServer, limit: Duration) -> Vec<Vec<(String, String)>> {
    wait_until(limit, "a success batch reached Redis", || {
        let n = batch_hints(&mut redis.conn()).len();
        async move { n > 0 }
    })
    .await;
    batch_hints(&mut redis.conn())
}

/// What providers say on nearly every answer: 59,999 of 60,000 left, reset in 100 ms.
const PLENTY: [(&str, &str); 3] = [
    ("x-ratelimit-limit-requests", "60000"),
    ("x-ratelimit-remaining-requests", "59999"),
    ("x-ratelimit-reset-requests", "100ms"),
];
/// One request left until the reset in 3 s: fewer than keygate's pace would start.
const LOW: [(&str, &str); 3] = [
    ("x-ratelimit-limit-requests", "60000"),
    ("x-ratelimit-remaining-requests", "1"),
    ("x-ratelimit-reset-requests", "3s"),
];

/// A Redis that logs every command to its slowlog, and a gateway on it whose k1 has
/// `rpm = 60000`, its successes batched every `flush_ms`.
async fn slowlogged(
    mock: &MockUpstream,
    flush_ms: u64,
) -> (RedisServer, crate::harness::gateway::TestGateway) {
    let redis = RedisServer::start();
    let _: () = redis::cmd("CONFIG")
        .arg(&[
            "SET",
            "slowlog-log-slower-than",
            "0",
            "slowlog-max-len",
            "100000",
        ])
        .query(&mut redis.conn())
        .unwrap();
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &K2[..1], "")
        .replace("id = \"k1\"\n", "id = \"k1\"\nlimits = { rpm = 60000 }\n")
        .replace(
            "timeout_ms = 200\n",
            &format!("timeout_ms = 200\nreport_flush_ms = {flush_ms}\n"),
        )
        + "[pools.limits]\nmax_wait_ms = 1000\n";
    let gw = crate::harness::gateway::TestGateway::start(&toml).await;
    (redis, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_announcing_plenty_of_headroom_reach_the_store_without_their_hints() {
    let mock = MockUpstream::start().await;
    mock.set_steady(K2[0].secret, answering(&PLENTY));
    let (redis, gw) = slowlogged(&mock, 50).await;
    let c = http();
    let body = chat("m", false);
    for _ in 0..5 {
        assert_eq!(post_chat(&c, &gw, &body, &[]).await.status(), 200);
    }
    let calls = batches(&redis, Duration::from_secs(5)).await;
    assert!(
        calls.iter().all(|hints| hints.is_empty()),
        "a batch carried hints that bind nothing: {calls:?}"
    );
    // Fewer left than keygate's pace would start: that binds, and rides the next batch.
    mock.set_steady(K2[0].secret, answering(&LOW));
    assert_eq!(post_chat(&c, &gw, &body, &[]).await.status(), 200);
    wait_until(Duration::from_secs(5), "a batch carried k1's hint", || {
        let calls = batch_hints(&mut redis.conn());
        async move { calls.iter().flatten().any(|(k, r)| k == "k1" && r == "1") }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_answer_with_plenty_of_headroom_takes_an_older_hints_place_in_the_batch() {
    let mock = MockUpstream::start().await;
    // Batches every 2 s: both answers below land in one.
    let (redis, gw) = slowlogged(&mock, 2_000).await;
    let c = http();
    let body = chat("m", false);
    mock.set_steady(K2[0].secret, answering(&LOW));
    assert_eq!(post_chat(&c, &gw, &body, &[]).await.status(), 200);
    mock.set_steady(K2[0].secret, answering(&PLENTY));
    assert_eq!(post_chat(&c, &gw, &body, &[]).await.status(), 200);
    let calls = batches(&redis, Duration::from_secs(10)).await;
    assert_eq!(
        calls,
        vec![vec![]],
        "one batch, without the older answer's hint: the newest answer stands for the key"
    );
}
