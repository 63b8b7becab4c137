//! keygate's own error answers: an outage is not a rate limit, `Retry-After` is capped with
//! `x-should-retry: false` beyond the cap, and a hung upstream fails once, not per attempt.

use std::time::Duration;

use keygate::mock::{Behavior, MockUpstream};

use super::{ask_chat, every_key};
use crate::admin::K3;
use crate::harness::gateway::{config_toml, http, TestGateway};
use crate::harness::redis_server::free_port;
use crate::harness::RedisServer;

const SECRETS: [&str; 3] = ["sk-test-one-1111", "sk-test-two-2222", "sk-test-three-3333"];

/// A gateway on Redis whose three keys' upstream answers `b` to every request.
struct Setup {
    _redis: RedisServer,
    _mock: MockUpstream,
    gw: TestGateway,
}

async fn every_key_answering(b: Behavior, pool_extra: &str) -> Setup {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    every_key(&mock, &SECRETS, b);
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &K3, pool_extra);
    let gw = TestGateway::start(&toml).await;
    Setup {
        _redis: redis,
        _mock: mock,
        gw,
    }
}

/// The answer to one request when every key hangs.
async fn hung_upstream(timeouts: &str) -> super::Answer {
    let s = every_key_answering(Behavior::Hang, timeouts).await;
    ask_chat(&http(), &s.gw).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_refusing_connections_is_answered_503_upstream_unavailable_not_429() {
    let redis = RedisServer::start();
    // Nothing listens on this port: every attempt is a connect error.
    let upstream = format!("http://127.0.0.1:{}/v1", free_port());
    let policy = "[pools.policy]\nbreaker_errors = 1\nbreaker_open_s = 30\n";
    let gw = &TestGateway::start(&config_toml(Some(&redis.url()), &upstream, &K3, policy)).await;
    let c = http();
    let first = ask_chat(&c, gw).await;
    assert_eq!(first.status, 502, "{}", first.body);
    assert_eq!(first.body["error"]["code"], "upstream_failed");
    // Every breaker is open now: the next request finds no key.
    let next = ask_chat(&c, gw).await;
    assert_eq!(next.status, 503, "{}", next.body);
    assert_eq!(next.body["error"]["code"], "upstream_unavailable");
    let message = next.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("circuit breaker"), "{message}");
    let retry_after = next.retry_after.expect("Retry-After");
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(
        next.should_retry, None,
        "a wait under the cap may be retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cooling_longer_than_the_cap_announce_the_cap_and_x_should_retry_false() {
    let retry = Some("300".to_string());
    let s = every_key_answering(Behavior::RateLimited { retry_after: retry }, "").await;
    let gw = &s.gw;
    let c = http();
    // The first request is refused by every key it tries; the next finds every key cooling.
    for round in 0..2 {
        let a = ask_chat(&c, gw).await;
        assert_eq!(a.status, 429, "round {round}: {}", a.body);
        assert_eq!(a.body["error"]["code"], "all_keys_cooling");
        assert_eq!(a.retry_after, Some(60), "round {round}: the default cap");
        assert_eq!(a.should_retry.as_deref(), Some("false"), "round {round}");
        let message = a.body["error"]["message"].as_str().unwrap_or_default();
        let true_wait = message.contains("retry in 300 s") || message.contains("retry in 299 s");
        assert!(true_wait, "the message keeps the true wait: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cooling_within_the_cap_announce_their_true_wait() {
    let retry = Some("20".to_string());
    let s = every_key_answering(Behavior::RateLimited { retry_after: retry }, "").await;
    let gw = &s.gw;
    let a = ask_chat(&http(), gw).await;
    assert_eq!(a.status, 429, "{}", a.body);
    let retry_after = a.retry_after.expect("Retry-After");
    assert!((19..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(a.should_retry, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_that_can_recover_answers_503_with_x_should_retry_false() {
    let s = every_key_answering(Behavior::Unauthorized, "").await;
    let gw = &s.gw;
    let c = http();
    // A 401 first benches a key while keygate's own probe confirms it (README.md, "Who is
    // blamed"); once every probe has answered 401 too, no key can recover by itself.
    crate::harness::wait_until(
        Duration::from_secs(15),
        "every key confirmed revoked",
        || {
            let (c, gw) = (c.clone(), gw);
            async move { ask_chat(&c, gw).await.status == 503 }
        },
    )
    .await;
    for round in 0..2 {
        let a = ask_chat(&c, gw).await;
        assert_eq!(a.status, 503, "round {round}: {}", a.body);
        assert_eq!(a.body["error"]["code"], "no_key_available");
        assert_eq!(a.retry_after, None);
        assert_eq!(a.should_retry.as_deref(), Some("false"), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_fails_after_one_first_byte_timeout_not_one_per_attempt() {
    let a = hung_upstream("[pools.timeouts]\nfirst_byte_ms = 300\n").await;
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "upstream_timeout");
    let why = "the first-byte budget covers every attempt";
    assert_eq!(a.attempts, Some(1), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_total_ms_gives_each_attempt_its_own_timeout_when_configured() {
    let timeouts = "[pools.timeouts]\nfirst_byte_ms = 200\nfirst_byte_total_ms = 5000\n";
    let a = hung_upstream(timeouts).await;
    assert_eq!(a.status, 504, "{}", a.body);
    let why = "max_attempts = 3, each timed out on its own";
    assert_eq!(a.attempts, Some(3), "{why}");
}
