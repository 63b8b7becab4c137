//! Answers that tell the truth: keygate's own errors name their cause and say when (and
//! whether) to retry, canary groups split single-token traffic, `/v1/models` lists the pool's
//! allowlist, every metric family exists from start, misconfiguration is loud, and a reload
//! reaches every replica.

mod canary;
mod cluster_reload;
mod errors;
mod metrics;
mod misconfiguration;
mod models;
mod sdks;

use keygate::mock::{Behavior, MockUpstream};

use crate::harness::gateway::{chat, post_chat, TestGateway};

/// One chat request: status, the headers the tests read, and the JSON body.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub should_retry: Option<String>,
    pub attempts: Option<u32>,
    pub group: Option<String>,
    pub body: serde_json::Value,
}

pub async fn ask(
    c: &reqwest::Client,
    gw: &TestGateway,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> Answer {
    let r = post_chat(c, gw, body, headers).await;
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Answer {
        status: r.status().as_u16(),
        retry_after: header("retry-after").and_then(|v| v.parse().ok()),
        should_retry: header("x-should-retry"),
        attempts: header("x-keygate-attempts").and_then(|v| v.parse().ok()),
        group: header("x-keygate-group"),
        body: r.json().await.unwrap_or_default(),
    }
}

pub async fn ask_chat(c: &reqwest::Client, gw: &TestGateway) -> Answer {
    ask(c, gw, &chat("m", false), &[]).await
}

/// Every key of `secrets` answers `b` from now on.
pub fn every_key(mock: &MockUpstream, secrets: &[&str], b: Behavior) {
    for s in secrets {
        mock.set_steady(s, b.clone());
    }
}
