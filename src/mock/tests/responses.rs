//! The Responses API (`POST /v1/responses`, JSON and named SSE events) and base64 embeddings,
//! read as the OpenAI SDKs read them.

use base64::Engine;
use serde_json::{json, Value};

use super::*;

async fn post(mock: &MockUpstream, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", mock.base_url()))
        .bearer_auth("k")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Each SSE event of a Responses stream as (`event:` name, `data:` JSON).
fn named_events(text: &str) -> Vec<(String, Value)> {
    assert!(text.ends_with("\n\n"), "events end with a blank line");
    text.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let (name, data) = event.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            (name, data)
        })
        .collect()
}

const ANSWER: &str = "Hello from the mock upstream.";

#[tokio::test]
async fn a_responses_request_answers_a_completed_response_with_usage() {
    let mock = MockUpstream::start().await;
    let request = json!({"model": MODEL, "instructions": "be brief",
                         "input": [{"role": "user", "content": [
                             {"type": "input_text", "text": "say hello to me"}]}]});
    let response = post(&mock, "/responses", &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], MODEL);
    assert!(body["id"].as_str().unwrap().starts_with("resp_"), "{body}");
    let item = &body["output"][0];
    assert_eq!(
        (&item["type"], &item["role"]),
        (&json!("message"), &json!("assistant"))
    );
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(item["content"][0]["text"], ANSWER);
    // "be brief" + "say hello to me": 6 words; the answer: 5.
    assert_eq!(body["usage"]["input_tokens"], 6);
    assert_eq!(body["usage"]["output_tokens"], 5);
    assert_eq!(body["usage"]["total_tokens"], 11);

    let plain = post(
        &mock,
        "/responses",
        &json!({"model": MODEL, "input": "hi there"}),
    )
    .await;
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["usage"]["input_tokens"], 2);
}

#[tokio::test]
async fn a_streamed_responses_request_sends_named_events_from_created_to_completed() {
    let mock = MockUpstream::start().await;
    let request = json!({"model": MODEL, "input": "say hello", "stream": true});
    let response = post(&mock, "/responses", &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = named_events(&response.text().await.unwrap());
    for (sequence, (name, data)) in events.iter().enumerate() {
        assert_eq!(
            data["type"],
            name.as_str(),
            "the event name is the data's type"
        );
        assert_eq!(data["sequence_number"], sequence, "{data}");
    }
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.first(), Some(&"response.created"));
    assert_eq!(names.last(), Some(&"response.completed"));
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    let deltas: String = events
        .iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .map(|(_, data)| data["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, ANSWER);
    for name in [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ] {
        assert_eq!(
            names.iter().filter(|n| **n == name).count(),
            1,
            "{name}: {names:?}"
        );
    }
    let completed = &events[events.len() - 1].1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"][0]["content"][0]["text"], ANSWER);
    assert_eq!(
        (
            &completed["usage"]["input_tokens"],
            &completed["usage"]["output_tokens"]
        ),
        (&json!(2), &json!(5))
    );
}

#[tokio::test]
async fn a_responses_request_without_a_model_answers_400() {
    let mock = MockUpstream::start().await;
    let response = post(&mock, "/responses", &json!({"input": "hi"})).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "model");
}

/// The floats of a base64 embedding: little-endian `f32`s, as the SDKs decode them.
fn decode_f32s(encoded: &str) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    assert_eq!(bytes.len() % 4, 0);
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[tokio::test]
async fn base64_embeddings_decode_to_the_same_floats_as_the_json_ones() {
    let mock = MockUpstream::start().await;
    let input = json!(["one two", "three"]);
    let floats = post(&mock, "/embeddings", &json!({"model": "e", "input": input})).await;
    let floats: Value = floats.json().await.unwrap();
    let request = json!({"model": "e", "input": input, "encoding_format": "base64"});
    let encoded: Value = post(&mock, "/embeddings", &request)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(encoded["data"].as_array().unwrap().len(), 2);
    assert_eq!(encoded["usage"], floats["usage"]);
    for index in 0..2 {
        let expected: Vec<f32> = floats["data"][index]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let decoded = decode_f32s(encoded["data"][index]["embedding"].as_str().unwrap());
        assert_eq!(decoded.len(), 8);
        assert!(decoded.iter().any(|v| *v != 0.0), "{decoded:?}");
        assert_eq!(decoded, expected, "input {index}");
    }
}
