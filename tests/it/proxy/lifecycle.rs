//! A request's life beyond the happy path: the client leaving mid-stream, a graceful shutdown
//! with streams in flight, and model fallback chains.

use std::time::Duration;

use futures::StreamExt;
use keygate::mock::{Behavior, MockUpstream};

use crate::harness::gateway::{chat, config_toml, http, key, post_chat, TestGateway, TestKey};
use crate::harness::{wait_until, RedisServer};

const K2: [TestKey; 2] = [key("k1", "sk-life-one-1111"), key("k2", "sk-life-two-2222")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_cancels_the_upstream_request() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    mock.set_steady(
        "sk-life-one-1111",
        Behavior::SlowStream { interval_ms: 400 },
    );
    let gw = TestGateway::start(&config_toml(
        Some(&redis.url()),
        &mock.base_url(),
        &K2[..1],
        "",
    ))
    .await;
    let r = post_chat(&http(), &gw, &chat("m", true), &[]).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    body.next().await.expect("a first event").expect("readable");
    assert_eq!(
        mock.open_streams(),
        1,
        "the upstream stream is open while the client reads"
    );
    drop(body);
    // The whole stream would take ~2.8 s; the upstream body must be dropped well before.
    wait_until(
        Duration::from_millis(1500),
        "upstream stream cancelled",
        || async { mock.open_streams() == 0 },
    )
    .await;
    // The key is free and healthy: the next request uses it.
    mock.set_steady("sk-life-one-1111", Behavior::Ok);
    let r = post_chat(&http(), &gw, &chat("m", false), &[]).await;
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-keygate-key"].to_str().unwrap()
        ),
        (200, "k1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_streams_and_refuses_new_connections() {
    let mock = MockUpstream::start().await;
    mock.set_steady(
        "sk-life-one-1111",
        Behavior::SlowStream { interval_ms: 200 },
    );
    let gw = TestGateway::start(&config_toml(None, &mock.base_url(), &K2[..1], "")).await;
    let addr = gw.addr;
    let r = post_chat(&http(), &gw, &chat("m", true), &[]).await;
    let mut body = r.bytes_stream();
    let mut text = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
    let shutdown = tokio::spawn(gw.shutdown());
    wait_until(Duration::from_secs(2), "listener closed", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    while let Some(chunk) = body.next().await {
        text.push_str(
            std::str::from_utf8(&chunk.expect("stream not cut by the shutdown")).unwrap(),
        );
    }
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "stream cut short: {text}"
    );
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown finished within the grace period")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_the_upstream_does_not_have_falls_back_to_the_next_in_its_chain() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    mock.set_missing_models(&["gpt-4.1"]);
    let extra = "models = [\"gpt-4.1\", \"deepseek-v3.2\"]\nfallbacks = { \"gpt-4.1\" = [\"deepseek-v3.2\"] }\n";
    let gw = TestGateway::start(&config_toml(
        Some(&redis.url()),
        &mock.base_url(),
        &K2,
        extra,
    ))
    .await;
    let r = post_chat(&http(), &gw, &chat("gpt-4.1", false), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-keygate-model"], "deepseek-v3.2");
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["model"], "deepseek-v3.2");
    let sent: serde_json::Value =
        serde_json::from_slice(&mock.last_request_body().unwrap()).unwrap();
    assert_eq!(sent["model"], "deepseek-v3.2");
    assert_eq!(
        sent["messages"][0]["content"], "say hello to the test",
        "the rest of the body is kept"
    );
    // "Model not found" is the caller's problem, not the key's: no key was penalised.
    let snap = gw.state.store.snapshot("p", None).await.unwrap();
    assert!(
        snap.keys
            .iter()
            .all(|k| k.status == keygate::pool::KeyState::Active && k.failures == 0),
        "{snap:?}"
    );
    // Without a fallback the upstream's own 404 reaches the client.
    mock.set_missing_models(&["deepseek-v3.2"]);
    let r = post_chat(&http(), &gw, &chat("deepseek-v3.2", false), &[]).await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
}
