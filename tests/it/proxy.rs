//! The gateway end to end: real redis-server, real HTTP mock upstream,
//! gateways in process.

mod batch;
mod budgets;
mod learned;
mod lifecycle;
mod upstream_conns;

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;
use keygate::mock::{Behavior, MockUpstream};
use redis::Commands;

use crate::harness::gateway::{
    chat, config_toml, http, key, post_chat, TestGateway, TestKey, CLIENT_TOKEN,
};
use crate::harness::RedisServer;

const K3: [TestKey; 3] = [
    key("k1", "sk-test-one-1111"),
    key("k2", "sk-test-two-2222"),
    key("k3", "sk-test-three-3333"),
];

fn redis_time_ms(server: &RedisServer) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(&mut server.conn()).unwrap();
    s * 1000 + us / 1000
}

fn key_hash(server: &RedisServer, id: &str) -> HashMap<String, String> {
    server.conn().hgetall(format!("kg:{{p}}:key:{id}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_replica_stops_every_replica_using_that_key_until_retry_after() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    mock.script(
        "sk-test-two-2222",
        vec![Behavior::RateLimited {
            retry_after: Some("2".into()),
        }],
    );
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &K3, "");
    let gws = [
        TestGateway::start(&toml).await,
        TestGateway::start(&toml).await,
        TestGateway::start(&toml).await,
    ];
    let c = http();
    // Drive traffic through all three until k2 has answered its 429.
    let mut i = 0;
    while mock.requests("sk-test-two-2222") == 0 {
        let r = post_chat(&c, &gws[i % 3], &chat("m", false), &[]).await;
        assert_eq!(r.status(), 200, "retried onto another key");
        i += 1;
        assert!(i < 500, "k2 never chosen");
    }
    let deadline: u64 = key_hash(&redis, "k2")["cooldown_until_ms"].parse().unwrap();
    let now = redis_time_ms(&redis);
    assert!(
        deadline >= now + 1_000 && deadline <= now + 2_100,
        "deadline {deadline} now {now}"
    );
    // Until the deadline: every replica keeps succeeding, none touches k2.
    let mut served = 0;
    while redis_time_ms(&redis) + 50 < deadline {
        let r = post_chat(&c, &gws[served % 3], &chat("m", false), &[]).await;
        assert_eq!(r.status(), 200);
        assert_ne!(r.headers()["x-keygate-key"], "k2");
        served += 1;
    }
    assert!(
        served > 20,
        "too few requests during the cooldown: {served}"
    );
    assert_eq!(
        mock.requests("sk-test-two-2222"),
        1,
        "a replica used k2 while it was cooling"
    );
    // After it: k2 is used again.
    while redis_time_ms(&redis) < deadline {
        tokio::task::yield_now().await;
    }
    let mut n = 0;
    while mock.requests("sk-test-two-2222") < 2 {
        assert_eq!(
            post_chat(&c, &gws[n % 3], &chat("m", false), &[])
                .await
                .status(),
            200
        );
        n += 1;
        assert!(n < 300, "k2 not used again after its cooldown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_disabled_cluster_wide_once_keygate_s_probe_confirms_its_401() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    mock.set_steady("sk-test-one-1111", Behavior::Unauthorized);
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &K3, "");
    let (a, b) = (
        TestGateway::start(&toml).await,
        TestGateway::start(&toml).await,
    );
    let c = http();
    for i in 0..60 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = post_chat(&c, gw, &chat("m", false), &[]).await;
        assert_eq!(r.status(), 200, "the client must not see the revoked key");
    }
    // The 401 that benched it, and keygate's own probe that confirmed it; never traffic again.
    assert_eq!(
        mock.requests("sk-test-one-1111"),
        2,
        "the revoked key was tried again"
    );
    let h = key_hash(&redis, "k1");
    assert_eq!(
        (h["status"].as_str(), h["reason"].as_str()),
        ("disabled", "unauthorized")
    );
    // Every key revoked: a clear error at once, not a hang. While the probes run the keys are
    // benched (429, retry later); once they confirm, no key will recover by itself (503).
    mock.set_steady("sk-test-two-2222", Behavior::Unauthorized);
    mock.set_steady("sk-test-three-3333", Behavior::Unauthorized);
    let started = Instant::now();
    loop {
        let r = post_chat(&c, &a, &chat("m", false), &[]).await;
        let status = r.status().as_u16();
        let body = r.json::<serde_json::Value>().await.unwrap();
        if status == 503 {
            assert_eq!(body["error"]["code"], "no_key_available");
            break;
        }
        assert_eq!(
            (status, &body["error"]["code"]),
            (429, &"all_keys_cooling".into())
        );
        assert!(
            started.elapsed().as_secs() < 5,
            "the probes never confirmed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_arrives_event_by_event_and_its_usage_is_counted() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    mock.set_steady(
        "sk-test-one-1111",
        Behavior::SlowStream { interval_ms: 250 },
    );
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &K3[..1], "");
    let gw = TestGateway::start(&toml).await;
    let r = post_chat(&http(), &gw, &chat("gpt-test", true), &[]).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = r.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    let started = Instant::now();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        arrivals.push((started.elapsed(), text.matches("\n\n").count()));
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let events = text.matches("\n\n").count();
    assert!(events >= 4, "{text}");
    // The first event reached the client while the upstream was still sending the rest: the
    // upstream spaced its events 250 ms apart, so the last came >= 750 ms after the first.
    let first = arrivals.iter().find(|(_, n)| *n >= 1).unwrap().0;
    let last = arrivals.last().unwrap().0;
    assert!(
        last - first >= std::time::Duration::from_millis(700),
        "buffered: first {first:?} last {last:?}"
    );
    // Usage of the final chunk is counted.
    let metrics = http()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let completion = metrics
        .lines()
        .find(|l| {
            l.starts_with("keygate_tokens_total")
                && l.contains("key=\"k1\"")
                && l.contains("kind=\"completion\"")
        })
        .unwrap_or_else(|| panic!("no token metric:\n{metrics}"));
    let n: f64 = completion.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{completion}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_share_follows_the_percent_and_each_user_stays_in_one_group_on_every_replica() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let keys = [
        key("s1", "sk-stable-aaaa1111"),
        TestKey {
            group: "canary",
            ..key("c1", "sk-canary-bbbb2222")
        },
    ];
    let toml = config_toml(
        Some(&redis.url()),
        &mock.base_url(),
        &keys,
        "[pools.canary]\ngroup = \"canary\"\npercent = 10\n",
    );
    let (a, b) = (
        TestGateway::start(&toml).await,
        TestGateway::start(&toml).await,
    );
    let c = http();
    let users = 10_000usize;
    let groups: Vec<(String, bool)> = futures::stream::iter(0..users)
        .map(|u| {
            let (c, a, b) = (c.clone(), &a, &b);
            async move {
                let user = format!("user-{u}");
                let ra = post_chat(&c, a, &chat("m", false), &[("x-user-id", &user)]).await;
                let ga = ra.headers()["x-keygate-group"]
                    .to_str()
                    .unwrap()
                    .to_string();
                let same = if u % 10 == 0 {
                    let rb = post_chat(&c, b, &chat("m", false), &[("x-user-id", &user)]).await;
                    rb.headers()["x-keygate-group"].to_str().unwrap() == ga
                } else {
                    true
                };
                (ga, same)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let canary = groups.iter().filter(|(g, _)| g == "canary").count() as f64 / users as f64;
    assert!((0.085..=0.115).contains(&canary), "canary share {canary}");
    assert!(
        groups.iter().all(|(_, same)| *same),
        "a user changed group between replicas"
    );
    // Forcing overrides the hash.
    let r = post_chat(&c, &a, &chat("m", false), &[("x-gray-group", "treatment")]).await;
    assert_eq!(r.headers()["x-keygate-key"], "c1");
    let r = post_chat(&c, &a, &chat("m", false), &[("x-gray-group", "control")]).await;
    assert_eq!(r.headers()["x-keygate-key"], "s1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_input_gets_the_documented_4xx_and_changes_no_key() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let toml = config_toml(
        Some(&redis.url()),
        &mock.base_url(),
        &K3,
        "models = [\"gpt-4.1\", \"deepseek-v3.2\"]\n",
    );
    let gw = TestGateway::start(&toml).await;
    let before = gw.state.store.snapshot("p", None).await.unwrap().keys;
    let c = http();
    let url = gw.url("/v1/chat/completions");
    let send = |rb: reqwest::RequestBuilder| async move {
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        (status, body)
    };
    let (s, b) = send(
        c.post(&url)
            .bearer_auth(CLIENT_TOKEN)
            .header("content-type", "application/json")
            .body("{\"model\": "),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    let (s, b) = send(
        c.post(&url)
            .bearer_auth(CLIENT_TOKEN)
            .json(&chat("gpt-9", false)),
    )
    .await;
    assert_eq!(s, 400);
    let msg = b["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("gpt-4.1") && msg.contains("deepseek-v3.2"),
        "{msg}"
    );
    let big = "x".repeat(70_000);
    let (s, b) = send(
        c.post(&url)
            .bearer_auth(CLIENT_TOKEN)
            .json(&serde_json::json!({"model": "gpt-4.1", "pad": big})),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("request_too_large"))
    );
    let (s, b) = send(c.post(&url).json(&chat("gpt-4.1", false))).await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (401, Some("invalid_request_error"))
    );
    let (s, _) = send(
        c.post(&url)
            .bearer_auth("wrong-token")
            .json(&chat("gpt-4.1", false)),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(mock.total_requests(), 0, "bad input reached the upstream");
    let after = gw.state.store.snapshot("p", None).await.unwrap().keys;
    assert_eq!(before, after);
}

/// The first bytes the gateway sends to an `https` base URL (a listener that reads them and
/// closes: the handshake fails, and the attempt is an upstream failure, 502), with `pool_extra`
/// in the pool's config: a TLS ClientHello, and nothing of the request (path, key) in clear.
async fn first_bytes_to_an_https_upstream(pool_extra: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let _ = tx.send(buf[..n].to_vec());
        }
    });
    let keys = [key("k1", "sk-test-tls-secret-9999")];
    let upstream = format!("https://127.0.0.1:{port}/v1");
    let gw = TestGateway::start(&config_toml(None, &upstream, &keys, pool_extra)).await;
    let r = post_chat(&http(), &gw, &chat("m", false), &[]).await;
    assert_eq!(
        r.status(),
        502,
        "the failed handshake is an upstream failure"
    );
    let hello = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .ok()
        .flatten()
        .expect("the gateway connected to the listener");
    assert!(hello.len() > 43, "a whole ClientHello record: {hello:?}");
    assert_eq!(hello[0], 0x16, "a TLS handshake record, not plaintext HTTP");
    assert_eq!(hello[5], 0x01, "a ClientHello");
    assert!(!holds(&hello, b"sk-test-tls-secret-9999") && !holds(&hello, b"/v1/chat"));
    hello
}

fn holds(hello: &[u8], needle: &[u8]) -> bool {
    hello.windows(needle.len()).any(|w| w == needle)
}

/// An `https` base URL is spoken to in TLS: the ClientHello offers HTTP/2 and HTTP/1.1 by ALPN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_gets_a_tls_client_hello_offering_h2_and_no_plaintext() {
    let hello = first_bytes_to_an_https_upstream("").await;
    assert!(holds(&hello, b"\x02h2"), "ALPN offers h2");
    assert!(holds(&hello, b"\x08http/1.1"), "ALPN offers http/1.1");
}

/// A pool kept on HTTP/1.1 (`upstream_http2 = "never"`: keygate's own connection pool,
/// `state/upstream_client/h1.rs`) speaks TLS to an `https` base URL too, and offers no HTTP/2
/// (no ALPN at all: a server then speaks HTTP/1.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_of_a_pool_kept_on_http1_gets_tls_offering_no_http2() {
    let hello = first_bytes_to_an_https_upstream("upstream_http2 = \"never\"").await;
    assert!(!holds(&hello, b"\x02h2"), "no h2 offered");
}
