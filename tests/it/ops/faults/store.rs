//! Redis behind the fault proxy: latency above the store timeout, a black hole, resets.

use super::*;

/// Redis behind the fault proxy; `fault` for a while, then back to `Pass`.
async fn redis_fault(fault: Fault, name: &str) {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr().parse().unwrap()).await;
    let mock = MockUpstream::start().await;
    let timeout_ms = 100u64;
    let toml = config_toml(Some(&proxy.redis_url()), &mock.base_url(), &K3, "")
        .replace("timeout_ms = 200", &format!("timeout_ms = {timeout_ms}"));
    let gw = TestGateway::start(&toml).await;
    let c = http();
    let mut ok_before = 0u64;
    for _ in 0..10 {
        let r = post_chat(&c, &gw, &chat("m", false), &[]).await;
        assert_eq!(r.status(), 200);
        ok_before += 1;
    }
    wait_until(
        Duration::from_secs(5),
        "warm-up reports applied",
        || async { keys(&gw).await.values().map(|r| r.successes).sum::<u64>() == ok_before },
    )
    .await;
    proxy.set(fault);
    let (mut ok, mut refused, mut lat) = (0u64, 0u64, Vec::new());
    for _ in 0..30 {
        let started = Instant::now();
        let r = post_chat(&c, &gw, &chat("m", false), &[]).await;
        lat.push(started.elapsed());
        match r.status().as_u16() {
            200 => ok += 1,
            503 => {
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
                refused += 1;
            }
            s => panic!("{name}: unexpected status {s}"),
        }
    }
    // The failover store serves every request from its in-process copy; none waited for the
    // store longer than its timeout (the first calls that find Redis gone), whatever the fault.
    assert_eq!(refused, 0, "{name}: requests failed because of the store");
    assert!(
        gw.state.store.degraded(),
        "{name}: the replica did not switch to degraded mode"
    );
    let worst = p(lat.clone(), 1.0);
    assert!(
        worst < Duration::from_millis(2 * timeout_ms + 250),
        "{name}: a request waited {worst:?} with store timeout {timeout_ms} ms"
    );
    proxy.set(Fault::Pass);
    let healed = Instant::now();
    let served_after = std::sync::atomic::AtomicU64::new(0);
    wait_until(Duration::from_secs(10), "store answers again", || async {
        let ok = post_chat(&c, &gw, &chat("m", false), &[]).await.status() == 200;
        served_after.fetch_add(u64::from(ok), std::sync::atomic::Ordering::Relaxed);
        ok
    })
    .await;
    wait_until(
        Duration::from_secs(5),
        "the replica leaves degraded mode",
        || async { !gw.state.store.degraded() },
    )
    .await;
    let recovered = healed.elapsed();
    // Nothing corrupted: every key still active and clean of failures (the upstream never
    // failed); successes are at least those reported before the fault, and at most every 200.
    let k = keys(&gw).await;
    let successes: u64 = k.values().map(|r| r.successes).sum();
    for r in k.values() {
        assert_eq!(r.status.as_str(), "active", "{name}: {r:?}");
        assert_eq!((r.failures, r.errors), (0, 0), "{name}: {r:?}");
    }
    assert!(
        successes >= ok_before,
        "{name}: lost reports from before the fault"
    );
    let answered = ok_before + ok + served_after.into_inner();
    assert!(
        successes <= answered,
        "{name}: {successes} successes for {answered} answers"
    );
    println!(
        "FIGURES redis-{name}: during fault {} requests, {ok} ok, {refused} 503 store_unavailable, \
         first three {:?}, p50 {:?} p99 {:?} max {worst:?}; back on Redis {recovered:?} after \
         the fault ended",
        lat.len(),
        lat[..3].to_vec(),
        p(lat.clone(), 0.5),
        p(lat.clone(), 0.99),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_latency_above_the_store_timeout_never_holds_a_request_past_it() {
    redis_fault(Fault::Latency(Duration::from_millis(500)), "latency").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_redis_never_holds_a_request_past_the_store_timeout() {
    redis_fault(Fault::Hang, "hang").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connection_resets_are_survived_and_the_store_reconnects() {
    redis_fault(Fault::Reset, "reset").await;
}
