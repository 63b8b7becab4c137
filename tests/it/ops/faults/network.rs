//! TCP faults between keygate and its upstream, through the fault proxy: latency past the
//! first-byte timeout, resets, a black hole, a trickling body, a connection closed mid-answer.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_latency_beyond_first_byte_is_a_timeout_and_another_key_answers() {
    let Faulted {
        gw,
        redis,
        served,
        retried,
        _mock,
        _proxy,
    } = one_key_faulted(Fault::Latency(Duration::from_secs(2)), 300, "timeout", 4).await;
    // Each retried request waited out k1's first-byte timeout once, not more.
    for took in &retried {
        assert!(
            *took >= Duration::from_millis(300) && *took < Duration::from_millis(1200),
            "{took:?}"
        );
    }
    wait_for_successes(&gw, &served).await;
    let k = keys(&gw).await;
    let k1 = &k["k1"];
    assert_eq!(k1.status.as_str(), "active", "{k1:?}");
    assert_eq!(
        (k1.successes, k1.failures, k1.last_status),
        (0, 4, 0),
        "{k1:?}"
    );
    assert_clean(&k["k2"], served.get("k2").copied().unwrap_or(0));
    assert_clean(&k["k3"], served.get("k3").copied().unwrap_or(0));
    assert_eq!(key_hash(&redis, "k1")["failures"], "4");
    println!(
        "FIGURES latency: requests {} failed 0 retried {} retried-latency p50 {:?} max {:?}",
        served.values().sum::<u64>(),
        retried.len(),
        p(retried.clone(), 0.5),
        p(retried, 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_reset_is_retried_on_another_key() {
    let Faulted {
        gw,
        served,
        retried,
        redis: _redis,
        _mock,
        _proxy,
    } = one_key_faulted(Fault::Reset, 5_000, "server_error", 4).await;
    for took in &retried {
        assert!(*took < Duration::from_millis(500), "{took:?}");
    }
    wait_for_successes(&gw, &served).await;
    let k = keys(&gw).await;
    let k1 = &k["k1"];
    assert_eq!(
        (k1.status.as_str(), k1.successes, k1.failures),
        ("active", 0, 4),
        "{k1:?}"
    );
    assert_clean(&k["k2"], served.get("k2").copied().unwrap_or(0));
    assert_clean(&k["k3"], served.get("k3").copied().unwrap_or(0));
    println!(
        "FIGURES reset: requests {} failed 0 retried {} retried-latency max {:?}",
        served.values().sum::<u64>(),
        retried.len(),
        p(retried, 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_hangs_on_every_key_gives_504_within_the_pool_timeouts() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let proxy = FaultProxy::start(mock.addr).await;
    // Three attempts of 300 ms fit in total_ms; the second gateway's total_ms cuts the second.
    let roomy = config_toml(
        Some(&redis.url()),
        &proxy.http_base_url(),
        &K3,
        &pool_extra(300, 5_000, 1000),
    );
    let tight = roomy.replace("total_ms = 5000", "total_ms = 500");
    let (gw, gw_tight) = (
        TestGateway::start(&roomy).await,
        TestGateway::start(&tight).await,
    );
    let c = http();
    // Warm: pooled connections exist, so the hang also hits open connections.
    assert_eq!(
        post_chat(&c, &gw, &chat("m", false), &[]).await.status(),
        200
    );
    assert_eq!(
        post_chat(&c, &gw_tight, &chat("m", false), &[])
            .await
            .status(),
        200
    );
    wait_until(
        Duration::from_secs(5),
        "warm-up reports applied",
        || async { keys(&gw).await.values().map(|r| r.successes).sum::<u64>() == 2 },
    )
    .await;
    let before = keys(&gw).await;
    proxy.set(Fault::Hang);
    let mut took = Vec::new();
    for (g, limit_ms, want_attempts) in [(&gw, 900, "3"), (&gw_tight, 500, "2")] {
        let started = Instant::now();
        let r = post_chat(&c, g, &chat("m", false), &[]).await;
        let t = started.elapsed();
        assert_eq!(r.status(), 504);
        assert_eq!(header(&r, "x-keygate-attempts"), want_attempts);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "upstream_timeout");
        assert!(
            t >= Duration::from_millis(limit_ms - 50) && t < Duration::from_millis(limit_ms + 400),
            "504 after {t:?}, expected about {limit_ms} ms"
        );
        took.push(t);
    }
    // Each attempt was reported as a timeout on its own key, nothing else changed.
    let after = keys(&gw).await;
    let failures: u64 = after.values().map(|r| r.failures).sum::<u64>()
        - before.values().map(|r| r.failures).sum::<u64>();
    assert_eq!(failures, 5, "3 + 2 timed-out attempts");
    for r in after.values() {
        assert_eq!(r.status.as_str(), "active", "{r:?}");
        assert!(
            r.failures <= 2,
            "a key was tried twice by one request: {r:?}"
        );
        assert_eq!(r.successes, before[&r.id].successes, "{r:?}");
    }
    // The upstream comes back: so does the service, without operator action.
    proxy.set(Fault::Pass);
    assert_eq!(
        post_chat(&c, &gw, &chat("m", false), &[]).await.status(),
        200
    );
    println!(
        "FIGURES hang: 504 after {:?} (3 x 300 ms) and {:?} (total 500 ms)",
        took[0], took[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_upstream_body_arrives_whole_and_counts_as_a_success() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let proxy = FaultProxy::start(mock.addr).await;
    let toml = config_toml(
        Some(&redis.url()),
        &proxy.http_base_url(),
        &K3[..1],
        &pool_extra(5_000, 20_000, 1000),
    );
    let gw = TestGateway::start(&toml).await;
    let c = http();
    proxy.set(Fault::SlowBody {
        bytes: 64,
        every: Duration::from_millis(10),
    });
    let started = Instant::now();
    let r = post_chat(&c, &gw, &chat("m", false), &[]).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let plain = started.elapsed();
    let r = post_chat(&c, &gw, &chat("m", true), &[]).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let streamed = started.elapsed() - plain;
    assert!(
        plain >= Duration::from_millis(50),
        "not trickled: {plain:?}"
    );
    wait_for_successes(&gw, &HashMap::from([("k1".to_string(), 2)])).await;
    assert_clean(&keys(&gw).await["k1"], 2);
    println!("FIGURES slow-body: 64 B / 10 ms; JSON answer {plain:?}, SSE answer {streamed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_mid_sse_gives_a_truncated_stream_and_one_failure() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let proxy = FaultProxy::start(mock.addr).await;
    let toml = config_toml(Some(&redis.url()), &proxy.http_base_url(), &K3, "");
    let gw = TestGateway::start(&toml).await;
    let c = http();
    // The answer's head and first events pass, then FIN: a chunked body that never ends.
    proxy.set(Fault::HalfClose { after: 500 });
    let r = post_chat(&c, &gw, &chat("m", true), &[]).await;
    assert_eq!(r.status(), 200);
    let by = header(&r, "x-keygate-key");
    let (text, broke) = read_stream(r).await;
    assert!(broke, "{text}");
    assert!(text.starts_with("data: "), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert_eq!(mock.total_requests(), 1, "retried after bytes were sent");
    wait_until(Duration::from_secs(5), "truncation reported", || async {
        keys(&gw).await[&by].failures == 1
    })
    .await;
    // The same close before any answer byte: every key is tried, then a clear 502.
    proxy.set(Fault::HalfClose { after: 0 });
    let r = post_chat(&c, &gw, &chat("m", true), &[]).await;
    assert_eq!(
        r.status(),
        502,
        "EOF instead of an answer is an upstream failure"
    );
    assert_eq!(header(&r, "x-keygate-attempts"), "3");
    proxy.set(Fault::Pass);
    let r = post_chat(&c, &gw, &chat("m", true), &[]).await;
    assert_eq!(r.status(), 200);
    let (text, broke) = read_stream(r).await;
    assert!(
        !broke && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    let k = keys(&gw).await;
    let failures: u64 = k.values().map(|r| r.failures).sum();
    assert_eq!(failures, 1 + 3, "one truncation, three empty answers");
}
