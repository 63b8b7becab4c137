//! Budgets at the proxy (README "Budgets"), on an in-process gateway with the embedded store:
//! a request waits for a reserved slot, past `max_wait_ms` the client gets 429 with
//! `Retry-After`, a request too large for any token budget is refused, and the budget shows in
//! `/metrics`; on Redis, a pool whose keys have spent their budgets answers 429
//! `pool_exhausted` with the pool's `x-ratelimit-*` headers.

use std::time::Duration;

use keygate::mock::{Behavior, MockUpstream};

use crate::harness::exposition::Exposition;
use crate::harness::gateway::{chat, config_toml, http, key, post_chat, TestGateway};
use crate::harness::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_the_next_slot_up_to_max_wait_then_get_429_with_retry_after() {
    let mock = MockUpstream::start().await;
    let limits = "[pools.limits]\nrpm = 60\nmax_wait_ms = 1500\n";
    let toml = config_toml(
        None,
        &mock.base_url(),
        &[key("k1", "sk-budget-1111")],
        limits,
    );
    let gw = TestGateway::start(&toml).await;
    let c = http();
    // Three at once on a key allowed one request per 1010 ms: the first goes now, the second
    // waits ~1 s for its reserved slot, the third would wait ~2 s > max_wait_ms.
    let body = chat("m", false);
    let (a, b, d) = tokio::join!(
        post_chat(&c, &gw, &body, &[]),
        post_chat(&c, &gw, &body, &[]),
        post_chat(&c, &gw, &body, &[]),
    );
    let mut statuses = [
        a.status().as_u16(),
        b.status().as_u16(),
        d.status().as_u16(),
    ];
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429]);
    let refused = [a, b, d].into_iter().find(|r| r.status() == 429).unwrap();
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
    let err: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(err["error"]["code"], "pool_exhausted", "{err}");
    assert_eq!(mock.requests("sk-budget-1111"), 2);
    let e = Exposition::scrape(&c, &gw.url("/metrics")).await;
    let waited = e.value("keygate_budget_wait_seconds_count", &[("pool", "p")]);
    assert_eq!(waited, Some(1.0), "{}", e.text);
    let kind = [("pool", "p"), ("key", "k1"), ("kind", "requests")];
    let left = e
        .value("keygate_key_budget_remaining", &kind)
        .expect("remaining gauge");
    assert!((0.0..=60.0).contains(&left), "remaining {left}");
}

#[tokio::test]
async fn a_request_too_large_for_the_token_budget_is_refused_before_any_key_is_spent() {
    let mock = MockUpstream::start().await;
    let limits =
        "[pools.limits]\ntpm = 10000\nmax_request_tokens = 1000\ndefault_completion_tokens = 100\n";
    let toml = config_toml(
        None,
        &mock.base_url(),
        &[key("k1", "sk-budget-2222")],
        limits,
    );
    let gw = TestGateway::start(&toml).await;
    let c = http();
    let mut body = chat("m", false);
    body["max_tokens"] = 5000.into();
    let r = post_chat(&c, &gw, &body, &[]).await;
    assert_eq!(r.status(), 400);
    let err: serde_json::Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "request_too_large");
    assert_eq!(mock.requests("sk-budget-2222"), 0);
    body["max_tokens"] = 100.into();
    assert_eq!(post_chat(&c, &gw, &body, &[]).await.status(), 200);
}

/// A 429 answer's `Retry-After`, error code and `x-ratelimit-*` headers.
struct Refusal {
    code: String,
    retry_after: u64,
    headers: reqwest::header::HeaderMap,
}

async fn refusal(r: reqwest::Response) -> Refusal {
    assert_eq!(r.status(), 429);
    let headers = r.headers().clone();
    let retry_after = headers["retry-after"].to_str().unwrap().parse().unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    let code = body["error"]["code"].as_str().unwrap().to_string();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    Refusal {
        code,
        retry_after,
        headers,
    }
}

fn header(h: &reqwest::header::HeaderMap, name: &str) -> String {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} in {h:?}"))
        .to_str()
        .unwrap()
        .to_string()
}

const K2: [crate::harness::gateway::TestKey; 2] = [
    key("k1", "sk-exhaust-one-1111"),
    key("k2", "sk-exhaust-two-2222"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_out_of_budget_answers_429_pool_exhausted_with_the_pools_rate_limit_headers() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    // Two keys of 2 requests per minute each: one request per key benches it for ~30 s.
    let limits = "[pools.limits]\nrpm = 2\n";
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &K2, limits);
    let gw = TestGateway::start(&toml).await;
    let c = http();
    let body = chat("m", false);
    for _ in 0..2 {
        assert_eq!(post_chat(&c, &gw, &body, &[]).await.status(), 200);
    }
    let r = refusal(post_chat(&c, &gw, &body, &[]).await).await;
    assert_eq!(r.code, "pool_exhausted");
    assert!((1..=31).contains(&r.retry_after), "{}", r.retry_after);
    assert_eq!(header(&r.headers, "x-ratelimit-limit-requests"), "4");
    let remaining: u64 = header(&r.headers, "x-ratelimit-remaining-requests")
        .parse()
        .unwrap();
    assert!(
        remaining <= 2,
        "one request left per key within the minute: {remaining}"
    );
    let reset = header(&r.headers, "x-ratelimit-reset-requests");
    let reset = keygate::upstream::headers::parse_reset_duration(&reset).unwrap();
    assert!(
        reset > Duration::ZERO && reset <= Duration::from_millis(30_300),
        "{reset:?}"
    );
    assert!(
        r.headers.get("x-ratelimit-limit-tokens").is_none(),
        "no key has a tpm"
    );
    assert!(r.headers.get("x-should-retry").is_none());
    let sent = mock.requests(K2[0].secret) + mock.requests(K2[1].secret);
    assert_eq!(sent, 2, "the refused request never reached the upstream");
}

/// k1 may send 1 request per minute, k2 60 (a slot every second); k2's upstream answers 429
/// with `retry-after` `cooldown`. Sends until both keys were tried, then answers the refusal of
/// the next request.
async fn one_key_spent_one_cooling(cooldown: &str) -> Refusal {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    mock.set_steady(
        K2[1].secret,
        Behavior::RateLimited {
            retry_after: Some(cooldown.into()),
        },
    );
    let limits = "[pools.limits]\nrpm = 60\n";
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &K2, limits)
        .replace("id = \"k1\"\n", "id = \"k1\"\nlimits = { rpm = 1 }\n");
    let gw = TestGateway::start(&toml).await;
    let c = http();
    let body = chat("m", false);
    for _ in 0..4 {
        if mock.requests(K2[0].secret) > 0 && mock.requests(K2[1].secret) > 0 {
            break;
        }
        post_chat(&c, &gw, &body, &[]).await;
    }
    assert_eq!(mock.requests(K2[0].secret), 1);
    assert_eq!(mock.requests(K2[1].secret), 1);
    refusal(post_chat(&c, &gw, &body, &[]).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_spent_and_keys_cooling_the_first_to_come_back_names_the_429() {
    // k2 cools for 600 s, k1's budget returns within a minute: the pool is exhausted.
    let r = one_key_spent_one_cooling("600").await;
    assert_eq!(r.code, "pool_exhausted");
    assert!((1..=61).contains(&r.retry_after), "{}", r.retry_after);
    assert_eq!(header(&r.headers, "x-ratelimit-limit-requests"), "61");
    // k2 comes back after 5 s, before k1's budget: the keys are cooling.
    let r = one_key_spent_one_cooling("5").await;
    assert_eq!(r.code, "all_keys_cooling");
    assert!((1..=5).contains(&r.retry_after), "{}", r.retry_after);
    assert!(r.headers.get("x-ratelimit-limit-requests").is_none());
}
