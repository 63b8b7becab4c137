//! The upstream connections a pool holds, counted at a TCP proxy in front of the mock provider:
//! the idle cap and idle timeout of `[pools.timeouts]`, and HTTP/2 (`upstream_http2`) carrying
//! many streams on one connection.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use keygate::mock::{Behavior, MockUpstream};

use crate::harness::fault_proxy::FaultProxy;
use crate::harness::gateway::{chat, config_toml, http, key, post_chat, TestGateway, TestKey};
use crate::harness::wait_until_or_explain;

const SECRET: &str = "sk-conns-one-1111";
const K1: [TestKey; 1] = [key("k1", SECRET)];

/// A gateway on the embedded store whose pool reaches the mock through `proxy`.
async fn gateway(proxy: &FaultProxy, pool_extra: &str) -> TestGateway {
    TestGateway::start(&config_toml(None, &proxy.http_base_url(), &K1, pool_extra)).await
}

/// Starts `n` streaming requests at once and waits until the mock has all `n` streams open
/// at the same time; returns their bodies, still unread past the response head.
async fn open_streams(gw: &TestGateway, mock: &MockUpstream, n: usize) -> Vec<reqwest::Response> {
    let (c, body) = (http(), chat("m", true));
    let requests = (0..n).map(|_| post_chat(&c, gw, &body, &[]));
    let responses = futures::future::join_all(requests).await;
    for r in &responses {
        assert_eq!(r.status(), 200);
    }
    wait_until_or_explain(
        Duration::from_secs(20),
        &format!("{n} streams open at the mock at once"),
        || async { mock.open_streams() == n as u64 },
        || format!("open: {}", mock.open_streams()),
    )
    .await;
    responses
}

/// Reads every stream to its end; each must be a whole answer (usage chunk and `[DONE]`).
async fn finish(responses: Vec<reqwest::Response>) {
    let reads = responses.into_iter().map(|r| async move {
        let mut body = Vec::new();
        let mut stream = r.bytes_stream();
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk.expect("stream readable to its end"));
        }
        String::from_utf8(body).expect("utf-8")
    });
    for text in futures::future::join_all(reads).await {
        assert!(text.contains("\"usage\""), "{text}");
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    }
}

/// Waits until `conns` upstream connections are open while the mock still has all `streams`
/// open: the streams are carried by those connections. hyper_util's pool may open one HTTP/2
/// connection more than it uses: a request that found no connection in the pool can still start
/// connecting once the first connection is in, and that spare one is closed as soon as it is
/// up. So the test counts connections open while the streams run, not connections accepted.
async fn wait_streams_carried_by(
    proxy: &FaultProxy,
    mock: &MockUpstream,
    streams: u64,
    conns: u64,
) {
    wait_open(
        proxy,
        &format!("{streams} streams carried by {conns} HTTP/2 connections"),
        conns,
    )
    .await;
    assert_eq!(
        mock.open_streams(),
        streams,
        "every stream was still open when {conns} connections were"
    );
}

async fn wait_open(proxy: &FaultProxy, what: &str, want: u64) {
    wait_until_or_explain(
        Duration::from_secs(20),
        what,
        || async { proxy.stats.open.load(Ordering::Relaxed) == want },
        || format!("open: {}", proxy.stats.open.load(Ordering::Relaxed)),
    )
    .await;
}

/// One request after another, JSON answers (framed by `Content-Length`) and streams (chunked)
/// alike, all ride the first upstream connection: each answer gives it back when its last byte
/// is read, before the client's next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_one_after_another_reuse_one_http1_upstream_connection() {
    let mock = MockUpstream::start().await;
    let proxy = FaultProxy::start(mock.addr).await;
    let gw = gateway(&proxy, "").await;
    let c = http();
    for i in 0..10 {
        let r = post_chat(&c, &gw, &chat("m", i % 2 == 1), &[]).await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.contains("\"usage\""), "{text}");
    }
    assert_eq!(mock.total_requests(), 10);
    assert_eq!(
        proxy.stats.accepted.load(Ordering::Relaxed),
        1,
        "one upstream connection for ten requests in a row"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_upstream_connections_above_the_pools_cap_are_closed() {
    let mock = MockUpstream::start().await;
    mock.set_steady(SECRET, Behavior::SlowStream { interval_ms: 250 });
    let proxy = FaultProxy::start(mock.addr).await;
    let gw = gateway(
        &proxy,
        "[pools.timeouts]\nidle_connections = 2\nidle_timeout_ms = 600000",
    )
    .await;
    let streams = open_streams(&gw, &mock, 6).await;
    assert_eq!(
        proxy.stats.accepted.load(Ordering::Relaxed),
        6,
        "HTTP/1.1: one upstream connection per open stream"
    );
    finish(streams).await;
    wait_open(&proxy, "the idle connections down to the cap of 2", 2).await;
    // The two kept are reused: a request opens no new connection.
    mock.set_steady(SECRET, Behavior::Ok);
    let r = post_chat(&http(), &gw, &chat("m", false), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(proxy.stats.accepted.load(Ordering::Relaxed), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_closed_after_the_pools_idle_timeout() {
    let mock = MockUpstream::start().await;
    mock.set_steady(SECRET, Behavior::SlowStream { interval_ms: 250 });
    let (short, long) = (
        FaultProxy::start(mock.addr).await,
        FaultProxy::start(mock.addr).await,
    );
    let quick = gateway(&short, "[pools.timeouts]\nidle_timeout_ms = 300").await;
    let patient = gateway(&long, "[pools.timeouts]\nidle_timeout_ms = 600000").await;
    let streams = open_streams(&quick, &mock, 3).await;
    finish(streams).await;
    let streams = open_streams(&patient, &mock, 3).await;
    finish(streams).await;
    wait_open(&short, "every idle connection closed after 300 ms", 0).await;
    assert_eq!(
        long.stats.open.load(Ordering::Relaxed),
        3,
        "the same connections under a 10-minute idle timeout are all still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_to_an_http2_upstream_share_one_connection() {
    let mock = MockUpstream::start().await;
    mock.set_steady(SECRET, Behavior::SlowStream { interval_ms: 250 });
    let proxy = FaultProxy::start(mock.addr).await;
    let gw = gateway(&proxy, "upstream_http2 = \"prior_knowledge\"").await;
    let streams = open_streams(&gw, &mock, 20).await;
    wait_streams_carried_by(&proxy, &mock, 20, 1).await;
    let accepted = proxy.stats.accepted.load(Ordering::Relaxed);
    finish(streams).await;
    // Non-streamed answers use the same connection.
    mock.set_steady(SECRET, Behavior::Ok);
    let r = post_chat(&http(), &gw, &chat("m", false), &[]).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(
        proxy.stats.accepted.load(Ordering::Relaxed),
        accepted,
        "no new connection"
    );
    assert_eq!(proxy.stats.open.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_one_http2_connections_share_open_another_connection() {
    let per_connection = keygate::state::upstream_client::H2_STREAMS_PER_CONNECTION;
    let mock = MockUpstream::start().await;
    mock.set_steady(SECRET, Behavior::SlowStream { interval_ms: 500 });
    let proxy = FaultProxy::start(mock.addr).await;
    let gw = gateway(&proxy, "upstream_http2 = \"prior_knowledge\"").await;
    let count = per_connection + per_connection / 2;
    let streams = open_streams(&gw, &mock, count).await;
    // At most `per_connection` streams on each HTTP/2 connection.
    wait_streams_carried_by(&proxy, &mock, count as u64, 2).await;
    finish(streams).await;
}
