//! Budgets at the proxy (README "Budgets"), on an in-process gateway with the embedded store:
//! a request waits for a reserved slot, past `max_wait_ms` the client gets 429 with
//! `Retry-After`, a request too large for any token budget is refused, and the budget shows in
//! `/metrics`.

use keygate::mock::MockUpstream;

use crate::harness::exposition::Exposition;
use crate::harness::gateway::{chat, config_toml, http, key, post_chat, TestGateway};

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
