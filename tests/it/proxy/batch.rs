//! Successful reports in batches (`store.report_flush_ms`), through whole gateways on a real
//! Redis: far fewer report scripts than requests, every success counted once the gateway shut
//! down, and a stream that breaks off still has its failure applied after its success.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use keygate::config::Config;
use keygate::mock::{Behavior, MockUpstream};
use redis::Commands;

use crate::harness::gateway::{chat, config_toml, http, key, parse_config, post_chat};
use crate::harness::gateway::{TestGateway, TestKey};
use crate::harness::{read_budget, wait_until, RedisServer};

const K2: [TestKey; 2] = [
    key("k1", "sk-batch-one-1111"),
    key("k2", "sk-batch-two-2222"),
];

fn config(redis: &RedisServer, mock: &MockUpstream, keys: &[TestKey], flush_ms: u64) -> Config {
    let mut c = parse_config(&config_toml(
        Some(&redis.url()),
        &mock.base_url(),
        keys,
        "[pools.policy]\nbreaker_errors = 2\n",
    ));
    c.store.report_flush_ms = flush_ms;
    c
}

fn key_hash(redis: &RedisServer, id: &str) -> HashMap<String, String> {
    redis.conn().hgetall(format!("kg:{{p}}:key:{id}")).unwrap()
}

fn field(redis: &RedisServer, id: &str, name: &str) -> u64 {
    key_hash(redis, id)
        .get(name)
        .map_or(0, |v| v.parse().unwrap())
}

fn successes(redis: &RedisServer) -> u64 {
    K2.iter().map(|k| field(redis, k.id, "successes")).sum()
}

/// Store calls the gateway made for `op` (`keygate_store_duration_seconds_count{op}`).
fn store_calls(gw: &TestGateway, op: &str) -> u64 {
    gw.state
        .metrics
        .store_duration
        .with_label_values(&[op])
        .get_sample_count()
}

/// `n` successful requests, `concurrency` at a time.
async fn serve_ok(gw: &TestGateway, n: usize, concurrency: usize) {
    let c = http();
    let body = chat("m", false);
    let statuses: Vec<u16> = futures::stream::iter(0..n)
        .map(|_| async {
            let r = post_chat(&c, gw, &body, &[]).await;
            let status = r.status().as_u16();
            let _ = r.bytes().await;
            status
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_requests_cost_far_fewer_report_scripts_than_requests() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start_config(config(&redis, &mock, &K2, 50)).await;
    serve_ok(&gw, 1, 1).await; // scripts loaded, connection up
    wait_until(Duration::from_secs(5), "the warm-up success", || async {
        successes(&redis) == 1
    })
    .await;
    redis.log_all_commands();
    let n = 200;
    serve_ok(&gw, n, 8).await;
    gw.shutdown().await;
    // Every success is in Redis once the gateway is gone...
    assert_eq!(successes(&redis), n as u64 + 1);
    // ...and cost a share of a batch, not a report each.
    assert_eq!(redis.logged_script_calls("report.lua"), 0);
    let batches = redis.logged_script_calls("report_batch.lua");
    assert!(
        (1..n / 4).contains(&batches),
        "{batches} report_batch calls for {n} requests"
    );
    // Selects are coalesced too: eight requests at a time share calls.
    let selects = redis.logged_script_calls("select.lua");
    assert!(
        (1..n).contains(&selects),
        "{selects} select calls for {n} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successes_go_through_batches_and_never_one_report_each() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start_config(config(&redis, &mock, &K2, 50)).await;
    let n = 100u64;
    serve_ok(&gw, n as usize, 4).await;
    let state = gw.state.clone();
    let (selects, reports) = (store_calls(&gw, "select"), store_calls(&gw, "report"));
    gw.shutdown().await;
    let batches = state
        .metrics
        .store_duration
        .with_label_values(&["report_batch"])
        .get_sample_count();
    assert_eq!((selects, reports), (n, 0));
    assert!(
        (1..=n / 4).contains(&batches),
        "{batches} batches for {n} successes"
    );
    assert_eq!(successes(&redis), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_the_last_batch_before_the_gateway_exits() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    // A minute-long interval: nothing reaches Redis before shutdown but through the final flush.
    let gw = TestGateway::start_config(config(&redis, &mock, &K2, 60_000)).await;
    serve_ok(&gw, 20, 4).await;
    assert_eq!(successes(&redis), 0, "flushed before its interval");
    gw.shutdown().await;
    assert_eq!(successes(&redis), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_flush_interval_reports_every_success_at_once() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start_config(config(&redis, &mock, &K2, 0)).await;
    serve_ok(&gw, 10, 2).await;
    // A report's call is timed (the metric) after Redis applied it: wait for both.
    wait_until(Duration::from_secs(5), "ten reports", || async {
        successes(&redis) == 10 && store_calls(&gw, "report") >= 10
    })
    .await;
    assert_eq!(store_calls(&gw, "report"), 10);
    assert_eq!(store_calls(&gw, "report_batch"), 0);
    gw.shutdown().await;
}

/// With `breaker_errors = 2`, a key with one error that then serves a stream which breaks off
/// must stay active: its success (reset) lands before the mid-stream failure (errors 1). Were
/// the failure applied first, the breaker would open; the batch alone could not put it right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_off_reports_its_failure_after_its_batched_success() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let k1 = &K2[..1];
    mock.script(k1[0].secret, vec![Behavior::ServerError(500)]);
    mock.set_steady(k1[0].secret, Behavior::StreamThenDrop { events: 2 });
    let gw = TestGateway::start_config(config(&redis, &mock, k1, 60_000)).await;
    let c = http();
    let r = post_chat(&c, &gw, &chat("m", false), &[]).await;
    assert_eq!(r.status(), 502);
    assert_eq!(field(&redis, "k1", "errors"), 1);
    let r = post_chat(&c, &gw, &chat("m", true), &[]).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    while let Some(Ok(_)) = body.next().await {}
    wait_until(
        Duration::from_secs(5),
        "mid-stream failure reported",
        || async { field(&redis, "k1", "failures") == 2 },
    )
    .await;
    let h = key_hash(&redis, "k1");
    assert_eq!(
        (
            h["status"].as_str(),
            h["successes"].as_str(),
            h["errors"].as_str()
        ),
        ("active", "1", "1"),
        "{h:?}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budgeted_request_settles_its_real_usage_and_frees_its_slot_in_the_success_batch() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    // 10,000 tokens a minute, spaced against 9,000: a request reserves its body / 4 plus 500
    // completion tokens (about 3.5 s of schedule) and uses 7 (the mock's usage: about 50 ms).
    let limits = "[pools.limits]\ntpm = 10000\nmax_concurrent = 4\nmax_request_tokens = 1000\n\
                  default_completion_tokens = 500\nmax_wait_ms = 5000\nlease_s = 60\n";
    let mut c = parse_config(&config_toml(
        Some(&redis.url()),
        &mock.base_url(),
        &K2[..1],
        limits,
    ));
    c.store.report_flush_ms = 50;
    let gw = TestGateway::start_config(c).await;
    let now = || {
        let (s, us): (u64, u64) = redis::cmd("TIME").query(&mut redis.conn()).unwrap();
        s * 1000 + us / 1000
    };
    // Two requests one after the other: the second finds the first's reservation unsettled
    // (its settlement rides a batch that has not left yet) and waits ~3.5 s for its slot.
    let n = 2;
    let started = now();
    serve_ok(&gw, n, 1).await;
    let ended = now();
    // Unsettled, the two reservations would book the schedule ~3.5 s past the end.
    wait_until(
        Duration::from_secs(5),
        "real usage replaced the estimates",
        || async {
            let tat = read_budget(&mut redis.conn(), "kg:{p}:budget", "k1")["tat_t"] as u64;
            tat > started && tat < ended + 1_000
        },
    )
    .await;
    wait_until(Duration::from_secs(5), "every slot freed", || async {
        // A member scored +inf, when the set has one, is no lease (lua/lib.lua KEEP_SORTED).
        let held: u64 = redis
            .conn()
            .zcount("kg:{p}:inflight:k1", "-inf", "(+inf")
            .unwrap();
        held == 0
    })
    .await;
    let calls = |op| store_calls(&gw, op);
    assert_eq!(calls("select"), n as u64, "one select per request");
    assert_eq!(
        (calls("settle"), calls("report")),
        (0, 0),
        "no call of their own"
    );
    assert!(calls("report_batch") >= 1);
}
