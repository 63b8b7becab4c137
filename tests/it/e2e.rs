//! The deploy topology as processes, without Docker: redis-server, `keygate
//! mock-upstream`, three `keygate serve` replicas on one Redis and nginx in front of them,
//! configured from `deploy/nginx.local.conf.template`. Through nginx, a 429 on one key is
//! honoured by every replica for its whole Retry-After, and every replica's `/metrics` reports
//! the key as cooling.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keygate::config::hash_token;

use crate::harness::exposition::Exposition;
use crate::harness::gateway::{chat, CLIENT_TOKEN};
use crate::harness::processes::{KeygateProcess, MockProcess, NginxProcess};
use crate::harness::RedisServer;

const SECRETS: [(&str, &str, &str); 3] = [
    ("k1", "E2E_KEY_1", "sk-e2e-one-aaaa1111"),
    ("k2", "E2E_KEY_2", "sk-e2e-two-bbbb2222"),
    ("k3", "E2E_KEY_3", "sk-e2e-three-cccc3333"),
];
/// k2's secret: its first request is answered 429 `Retry-After: 5`, every later one ok.
const LIMITED: &str = "sk-e2e-two-bbbb2222";
const RETRY_AFTER_MS: u64 = 5_000;

/// One config file for every replica, as in the compose demo: secrets from the environment.
fn replica_config(redis_url: &str, upstream: &str) -> String {
    let mut t = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n\
         [store]\nredis_url = \"{redis_url}\"\nprefix = \"kg\"\ntimeout_ms = 200\n\
         snapshot_cache_ms = 250\n\n\
         [[clients]]\nname = \"e2e\"\ntoken_sha256 = \"{}\"\npools = [\"p\"]\n\n\
         [[pools]]\nname = \"p\"\nbase_url = \"{upstream}\"\nmax_attempts = 3\n\n",
        hash_token(CLIENT_TOKEN)
    );
    for (id, var, _) in SECRETS {
        t.push_str(&format!(
            "[[pools.keys]]\nid = \"{id}\"\nsecret_env = \"{var}\"\n\n"
        ));
    }
    t
}

fn redis_time_ms(redis: &RedisServer) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME")
        .query(&mut redis.conn())
        .expect("redis TIME");
    s * 1000 + us / 1000
}

fn cooldown_until_ms(redis: &RedisServer, key: &str) -> u64 {
    let v: Option<String> = redis::cmd("HGET")
        .arg(format!("kg:{{p}}:key:{key}"))
        .arg("cooldown_until_ms")
        .query(&mut redis.conn())
        .expect("redis HGET");
    v.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// A chat completion through nginx; returns the key that served it.
async fn chat_through(c: &reqwest::Client, nginx: &NginxProcess) -> String {
    let r = c
        .post(nginx.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_TOKEN)
        .json(&chat("gpt-e2e", false))
        .send()
        .await
        .expect("request through nginx");
    let status = r.status();
    let key = r
        .headers()
        .get("x-keygate-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "through nginx: {body}\n{}", nginx.error_log());
    key
}

/// Upstream attempts each replica has made so far (its own counter).
async fn attempts_per_replica(c: &reqwest::Client, replicas: &[KeygateProcess]) -> Vec<f64> {
    let mut out = Vec::new();
    for r in replicas {
        let e = Exposition::scrape(c, &r.url("/metrics")).await;
        out.push(e.sum("keygate_requests_total", &[]));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_a_429_is_honoured_by_all_three_replica_processes_and_shown_cooling_by_each()
{
    let started = Instant::now();
    let redis = RedisServer::start();
    let flags: Vec<String> = SECRETS
        .iter()
        .map(|(_, _, secret)| match *secret {
            LIMITED => format!("{secret}=429:{},ok", RETRY_AFTER_MS / 1000),
            _ => format!("{secret}=ok"),
        })
        .collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mock = MockProcess::start(&flags).await;
    let config = replica_config(&redis.url(), &mock.base_url());
    let env: Vec<(&str, &str)> = SECRETS.iter().map(|(_, var, s)| (*var, *s)).collect();
    let replicas = [
        KeygateProcess::start(&config, &env).await,
        KeygateProcess::start(&config, &env).await,
        KeygateProcess::start(&config, &env).await,
    ];
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    let nginx = NginxProcess::start(&addrs).await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");

    // Through nginx until k2 has answered its 429; every request still succeeds (retried).
    let mut sent = 0;
    while mock.stats(&c).await.requests(LIMITED) == 0 {
        chat_through(&c, &nginx).await;
        sent += 1;
        assert!(sent < 300, "k2 never chosen in {sent} requests");
    }
    let deadline = cooldown_until_ms(&redis, "k2");
    let now = redis_time_ms(&redis);
    assert!(
        deadline > now + RETRY_AFTER_MS - 2_000 && deadline <= now + RETRY_AFTER_MS + 100,
        "k2's cooldown deadline {deadline} is not Retry-After from now {now}"
    );

    // Every replica, asked directly, reports k2 cooling (from the store, whoever saw the 429).
    for (i, r) in replicas.iter().enumerate() {
        let cooling = [("pool", "p"), ("key", "k2"), ("state", "cooling")];
        loop {
            let e = Exposition::scrape(&c, &r.url("/metrics")).await;
            if e.value("keygate_key_state", &cooling) == Some(1.0) {
                assert!(
                    !e.text.contains("sk-e2e"),
                    "replica {i}'s /metrics shows a secret"
                );
                break;
            }
            assert!(
                redis_time_ms(&redis) < deadline,
                "replica {i} never reported k2 cooling before its deadline:\n{}",
                e.text
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Until the deadline: requests through nginx keep succeeding on every replica, none on k2.
    let before = attempts_per_replica(&c, &replicas).await;
    let mut served = 0;
    let mut keys: HashMap<String, u32> = HashMap::new();
    while redis_time_ms(&redis) + 100 < deadline {
        *keys.entry(chat_through(&c, &nginx).await).or_default() += 1;
        served += 1;
    }
    assert!(
        served >= 20,
        "too few requests during the cooldown: {served}"
    );
    assert!(
        !keys.contains_key("k2"),
        "k2 served while cooling: {keys:?}"
    );
    assert_eq!(
        mock.stats(&c).await.requests(LIMITED),
        1,
        "the mock saw k2 again while it was cooling"
    );
    let after = attempts_per_replica(&c, &replicas).await;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a > b,
            "replica {i} served nothing during the cooldown, so it proved nothing"
        );
    }

    // After it: k2 is back in rotation.
    let mut sent = 0;
    while mock.stats(&c).await.requests(LIMITED) < 2 {
        chat_through(&c, &nginx).await;
        sent += 1;
        assert!(sent < 300, "k2 never chosen again after its cooldown");
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the end-to-end test took {:?}",
        started.elapsed()
    );
}
