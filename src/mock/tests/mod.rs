//! The mock against a real HTTP client: `scripts` for behaviours, counts, the text form and the
//! control API; `wire` for OpenAI shapes, streaming and what gets recorded; `responses` for the
//! Responses API and base64 embeddings.

mod responses;
mod scripts;
mod wire;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

const MODEL: &str = "gpt-4.1";

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn chat_body(stream: bool, include_usage: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": "say hello to me"}],
        "stream": stream,
        "stream_options": {"include_usage": include_usage},
    })
}

async fn post_chat(mock: &MockUpstream, key: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn chat_status(mock: &MockUpstream, key: &str) -> u16 {
    post_chat(mock, key, &chat_body(false, false))
        .await
        .status()
        .as_u16()
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(text: &str) -> Vec<String> {
    assert!(
        text.ends_with("\n\n"),
        "events end with a blank line: {text:?}"
    );
    text.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
        .collect()
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
