//! Fault injection: a TCP fault proxy between keygate and its upstream, and
//! between keygate and Redis, plus upstream behaviour storms from the scripted mock. Each test
//! asserts what the client sees and that the key state in Redis is exactly what the attempts
//! explain: a success per request a key served, a failure per failed attempt, no stray state.
//!
//! Figures are printed as `FIGURES <test>: ...` lines (run with `--nocapture`) and recorded in
//! RELIABILITY.md.

mod network;
mod store;
mod storms;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use keygate::mock::{Behavior, MockUpstream};
use keygate::store::KeyRecord;
use redis::Commands;

use crate::harness::fault_proxy::{Fault, FaultProxy};
use crate::harness::gateway::{chat, config_toml, http, key, post_chat, TestGateway, TestKey};
use crate::harness::{wait_until, RedisServer};

const K3: [TestKey; 3] = [
    key("k1", "sk-fault-one-1111"),
    key("k2", "sk-fault-two-2222"),
    key("k3", "sk-fault-three-3333"),
];

fn secret_of(id: &str) -> &'static str {
    K3.iter().find(|k| k.id == id).map(|k| k.secret).unwrap()
}

/// Every key of pool `p`, by id.
async fn keys(gw: &TestGateway) -> BTreeMap<String, KeyRecord> {
    let snap = gw.state.store.snapshot("p", None).await.unwrap();
    snap.keys.into_iter().map(|k| (k.id.clone(), k)).collect()
}

fn key_hash(redis: &RedisServer, id: &str) -> HashMap<String, String> {
    redis.conn().hgetall(format!("kg:{{p}}:key:{id}")).unwrap()
}

fn redis_time_ms(redis: &RedisServer) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(&mut redis.conn()).unwrap();
    s * 1000 + us / 1000
}

/// Attempts the gateway counted for `key` with `outcome`.
fn attempts(gw: &TestGateway, key: &str, outcome: &str) -> u64 {
    let outcome = keygate::pool::Outcome::parse(outcome).expect("a known outcome");
    gw.state.metrics.requests("p", key, "stable", outcome)
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Waits until the background success reports have landed: each key's `successes` equals the
/// requests the client saw it serve.
async fn wait_for_successes(gw: &TestGateway, served: &HashMap<String, u64>) {
    wait_until(
        Duration::from_secs(5),
        "success reports applied",
        || async {
            let k = keys(gw).await;
            k.values()
                .all(|r| r.successes == served.get(&r.id).copied().unwrap_or(0))
        },
    )
    .await;
}

/// The key state a healthy key must show after serving `served` requests and failing none.
fn assert_clean(r: &KeyRecord, served: u64) {
    assert_eq!(r.status.as_str(), "active", "{r:?}");
    assert_eq!((r.errors, r.failures, r.strikes), (0, 0, 0), "{r:?}");
    assert_eq!(r.successes, served, "{r:?}");
    assert_eq!(r.cooldown_until_ms, 0, "{r:?}");
}

/// Timeouts per attempt (`first_byte_total_ms = total_ms`: every attempt may wait its own
/// `first_byte_ms`, so a slow key fails over to the next) and the breaker threshold.
fn pool_extra(first_byte_ms: u64, total_ms: u64, breaker_errors: u32) -> String {
    let connect_ms = first_byte_ms.min(total_ms);
    format!(
        "[pools.timeouts]\nconnect_ms = {connect_ms}\nfirst_byte_ms = {first_byte_ms}\ntotal_ms = {total_ms}\n\
         first_byte_total_ms = {total_ms}\n\
         [pools.policy]\nbreaker_errors = {breaker_errors}\n"
    )
}

/// What [`one_key_faulted`] leaves for the test to check.
struct Faulted {
    gw: TestGateway,
    redis: RedisServer,
    _mock: MockUpstream,
    _proxy: FaultProxy,
    /// Requests served, by key id.
    served: HashMap<String, u64>,
    /// Latency of the requests that needed a second attempt.
    retried: Vec<Duration>,
}

/// One key's upstream traffic goes through a targeted fault; requests are sent until that key
/// failed `want` times. Every request must succeed on another key, in two attempts.
async fn one_key_faulted(fault: Fault, first_byte_ms: u64, outcome: &str, want: u64) -> Faulted {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let proxy = FaultProxy::start(mock.addr).await;
    proxy.target(secret_of("k1"), fault);
    let mut keys3 = K3;
    keys3[0].weight = 4; // k1 first in most requests
    let toml = config_toml(
        Some(&redis.url()),
        &proxy.http_base_url(),
        &keys3,
        &pool_extra(first_byte_ms, 10_000, 1000),
    );
    let gw = TestGateway::start(&toml).await;
    let c = http();
    let mut served: HashMap<String, u64> = HashMap::new();
    let mut retried = Vec::new();
    let mut sent = 0;
    while attempts(&gw, "k1", outcome) < want {
        let started = Instant::now();
        let r = post_chat(&c, &gw, &chat("m", false), &[]).await;
        let took = started.elapsed();
        assert_eq!(r.status(), 200, "the client must not see the fault");
        let by = header(&r, "x-keygate-key");
        assert_ne!(by, "k1", "k1's traffic is faulted");
        if header(&r, "x-keygate-attempts") == "2" {
            retried.push(took);
        }
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
        *served.entry(by).or_default() += 1;
        sent += 1;
        assert!(sent < 200, "k1 was not faulted {want} times");
    }
    Faulted {
        gw,
        redis,
        _mock: mock,
        _proxy: proxy,
        served,
        retried,
    }
}

fn p(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// Reads a streamed answer to its end; `true` when it ended with a transport error.
async fn read_stream(r: reqwest::Response) -> (String, bool) {
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => text.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => return (text, true),
        }
    }
    (text, false)
}
