//! Memory and concurrency budgets: one client sending many large bodies at once stays within
//! the configured buffer budget (measured on a gateway process's RSS), the requests over it get
//! 429 `client_busy` / 503 `server_busy`, and a client's concurrency limit holds.

use std::sync::Arc;

use axum::routing::post;
use bytes::Bytes;

use super::*;
use crate::harness::processes::KeygateProcess;

const MB: usize = 1 << 20;
const BODY_BYTES: usize = 15 * MB;
const CONCURRENT_BODIES: usize = 40;
const CLIENT_BUDGET: usize = 64 * MB;
const PROCESS_BUDGET: usize = 128 * MB;
/// What the gateway may hold besides the reserved bodies: hyper's read and write buffers of 40
/// connections, allocator slack, the upstream connections.
const MARGIN: usize = 64 * MB;

/// A small real upstream: reads each body to its end without keeping it, waits `delay`, then
/// answers a chat completion.
async fn slow_upstream(delay: Duration) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |body: axum::body::Body| async move {
            use futures::StreamExt;
            let mut stream = body.into_data_stream();
            while stream.next().await.is_some() {}
            tokio::time::sleep(delay).await;
            axum::Json(serde_json::json!({
                "id": "chatcmpl-budget", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

/// A chat body of about `bytes` bytes.
fn large_chat(bytes: usize) -> Bytes {
    let filler = "x".repeat(bytes - 64);
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": filler}]});
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

/// `VmRSS` and `VmHWM` (peak) of a process, in bytes.
fn rss_of(pid: u32) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The first (server) section with `lines` added.
fn server_lines(toml: String, lines: &str) -> String {
    toml.replace(
        "shutdown_grace_s = 5\n",
        &format!("shutdown_grace_s = 5\n{lines}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_15_mb_bodies_from_one_client_stay_within_the_buffer_budget() {
    let (upstream, _task) = slow_upstream(Duration::from_millis(300)).await;
    let toml = config_toml(None, &format!("http://{upstream}/v1"), &KEYS, "").replace(
        "max_body_bytes = 65536\n",
        &format!("max_body_bytes = {}\n", 16 * MB),
    );
    let toml = server_lines(
        toml,
        &format!(
            "body_read_timeout_ms = 60000\nmax_buffered_bytes = {PROCESS_BUDGET}\n\
             client_max_buffered_bytes = {CLIENT_BUDGET}\n"
        ),
    );
    let gw = KeygateProcess::start(&toml, &[]).await;
    let c = http();
    let warm = c
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_TOKEN)
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    let (baseline, _) = rss_of(gw.proc.pid());
    let body = large_chat(BODY_BYTES);
    let sends = (0..CONCURRENT_BODIES).map(|_| {
        let (c, body, url) = (c.clone(), body.clone(), gw.url("/v1/chat/completions"));
        async move {
            let r = c
                .post(url)
                .bearer_auth(CLIENT_TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("every request gets an answer");
            let status = r.status().as_u16();
            let json: serde_json::Value = r.json().await.unwrap();
            (status, json)
        }
    });
    let answers = futures::future::join_all(sends).await;
    let (rss, peak) = rss_of(gw.proc.pid());
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for (status, json) in &answers {
        *by_status.entry(*status).or_default() += 1;
        match status {
            200 => assert_eq!(json["object"], "chat.completion", "{json}"),
            429 => assert_eq!(json["error"]["code"], "client_busy", "{json}"),
            503 => assert_eq!(json["error"]["code"], "server_busy", "{json}"),
            other => panic!("unexpected {other}: {json}"),
        }
    }
    println!(
        "FIGURES budget: {CONCURRENT_BODIES} x 15 MB from one client, client budget {} MB: \
         answers {by_status:?}; gateway RSS {} MB before, {} MB after, peak (VmHWM) {} MB",
        CLIENT_BUDGET / MB,
        baseline / MB,
        rss / MB,
        peak / MB
    );
    assert!(
        by_status.get(&200).copied().unwrap_or(0) >= 1,
        "{by_status:?}"
    );
    assert!(
        by_status.get(&429).copied().unwrap_or(0) >= 1,
        "{by_status:?}"
    );
    assert!(
        peak <= baseline + CLIENT_BUDGET + MARGIN,
        "peak RSS {} MB over baseline {} MB + budget {} MB + margin {} MB",
        peak / MB,
        baseline / MB,
        CLIENT_BUDGET / MB,
        MARGIN / MB
    );
    let metrics = scrape(&c, &gw.url("/metrics")).await;
    assert!(
        metrics.contains("keygate_budget_refusals_total{reason=\"client_busy\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keygate_buffered_request_bytes 0"),
        "all released: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_concurrency_limit_gets_429_while_others_are_served() {
    let (upstream, _task) = slow_upstream(Duration::from_secs(2)).await;
    let toml = config_toml(None, &format!("http://{upstream}/v1"), &KEYS, "").replacen(
        "pools = [\"p\"]\n",
        "pools = [\"p\"]\nmax_concurrent = 2\n",
        1,
    );
    let gw = Arc::new(TestGateway::start(&toml).await);
    let c = http();
    let sends = (0..6).map(|_| {
        let (c, gw) = (c.clone(), gw.clone());
        async move {
            let r = post_chat(&c, &gw, &chat("m", false), &[]).await;
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    });
    let answers = futures::future::join_all(sends).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    for (status, json) in answers.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 429, "{json}");
        assert_eq!(
            json["error"]["code"], "client_concurrency_exceeded",
            "{json}"
        );
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 requests in flight"));
    }
    assert_eq!(ok, 2, "{answers:?}");
    // Places are given back when the answers end.
    let r = post_chat(&c, &gw, &chat("m", false), &[]).await;
    assert_eq!(r.status(), 200);
}
