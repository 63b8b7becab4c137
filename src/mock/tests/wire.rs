//! Wire: OpenAI shapes and errors, streaming (whole, slow, dropped) and the recorded request.

use futures::StreamExt;
use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn requests_without_a_bearer_secret_answer_401() {
    let mock = MockUpstream::start().await;
    let url = format!("{}/chat/completions", mock.base_url());
    let response = client()
        .post(url)
        .json(&chat_body(false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(mock.total_requests(), 1);
}

#[tokio::test]
async fn chat_completion_echoes_the_model_and_counts_words_as_prompt_tokens() {
    let mock = MockUpstream::start().await;
    let response = post_chat(&mock, "k", &chat_body(false, false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the mock upstream."
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11})
    );
}

#[tokio::test]
async fn streaming_with_include_usage_ends_with_a_usage_chunk_then_done() {
    let mock = MockUpstream::start().await;
    let response = post_chat(&mock, "k", &chat_body(true, true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = sse_data(&response.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == MODEL));
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello from the mock upstream.");
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 6);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], content_chunks);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 6 + content_chunks);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn streaming_without_include_usage_has_no_usage_chunk() {
    let mock = MockUpstream::start().await;
    let response = post_chat(&mock, "k", &chat_body(true, false)).await;
    let events = sse_data(&response.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(events.iter().all(|e| !e.contains("usage")), "{events:?}");
}

#[tokio::test]
async fn slow_stream_delivers_its_events_one_at_a_time_in_order() {
    let mock = MockUpstream::start().await;
    mock.set_steady("k", Behavior::SlowStream { interval_ms: 40 });
    let response = post_chat(&mock, "k", &chat_body(true, false)).await;
    assert_eq!(
        response.status(),
        200,
        "headers come before the first event"
    );
    let mut body = response.bytes_stream();
    let (mut buffer, mut events) = (String::new(), Vec::new());
    while let Some(read) = body.next().await {
        buffer.push_str(std::str::from_utf8(&read.unwrap()).unwrap());
        let mut completed = 0;
        while let Some(end) = buffer.find("\n\n") {
            events.push(buffer[..end].to_owned());
            buffer.drain(..end + 2);
            completed += 1;
        }
        assert!(completed <= 1, "one read delivered {completed} events");
    }
    assert_eq!(events.len(), 8, "role, 5 words, finish, [DONE]");
    assert!(events[0].contains("\"role\":\"assistant\""));
    assert!(events[1].contains("\"content\":\"Hello\""));
    assert!(events[5].contains("\"content\":\" upstream.\""));
    assert_eq!(events[7], "data: [DONE]");
}

#[tokio::test]
async fn stream_then_drop_fails_the_clients_body_read_after_the_sent_events() {
    let mock = MockUpstream::start().await;
    mock.set_steady("k", Behavior::StreamThenDrop { events: 2 });
    let response = post_chat(&mock, "k", &chat_body(true, true)).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = String::new();
    let error = loop {
        match body.next().await {
            Some(Ok(bytes)) => received.push_str(std::str::from_utf8(&bytes).unwrap()),
            Some(Err(error)) => break error,
            None => panic!("the body ended cleanly: {received:?}"),
        }
    };
    assert!(
        error.is_body() || error.is_decode() || error.is_request(),
        "{error:?}"
    );
    assert_eq!(sse_data(&received).len(), 2);
    assert!(!received.contains("[DONE]"));
}

#[tokio::test]
async fn stream_then_drop_on_a_json_answer_fails_the_body_read() {
    let mock = MockUpstream::start().await;
    mock.set_steady("k", Behavior::StreamThenDrop { events: 1 });
    let response = post_chat(&mock, "k", &chat_body(false, false)).await;
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err());
}

#[tokio::test]
async fn unknown_paths_missing_models_and_bad_json_answer_openai_errors() {
    let mock = MockUpstream::start().await;
    let response = client()
        .post(format!("{}/nope", mock.base_url()))
        .bearer_auth("k")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], Value::Null);

    mock.set_missing_models(&["gpt-gone"]);
    let response = post_chat(&mock, "k", &json!({"model": "gpt-gone", "messages": []})).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(
        body["error"]["message"],
        "The model `gpt-gone` does not exist or you do not have access to it."
    );

    let url = format!("{}/chat/completions", mock.base_url());
    let response = client()
        .post(url)
        .bearer_auth("k")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn embeddings_and_models_answer_openai_shapes() {
    let mock = MockUpstream::start().await;
    let request = json!({"model": "text-embedding-3-small", "input": ["one two", "three"]});
    let response = client()
        .post(format!("{}/embeddings", mock.base_url()))
        .bearer_auth("k")
        .json(&request)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "text-embedding-3-small");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );

    mock.set_missing_models(&["gpt-4o-mini"]);
    let response = client()
        .get(format!("{}/models", mock.base_url()))
        .bearer_auth("k")
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&MODEL) && !ids.contains(&"gpt-4o-mini"),
        "{ids:?}"
    );
}

#[tokio::test]
async fn the_last_request_is_recorded_as_received() {
    let mock = MockUpstream::start().await;
    assert!(mock.last_request_headers().is_none());
    let url = format!("{}/chat/completions?trace=1", mock.base_url());
    let body = chat_body(false, false);
    client()
        .post(url)
        .bearer_auth("k")
        .header("x-custom", "yes")
        .json(&body)
        .send()
        .await
        .unwrap();
    let headers = mock.last_request_headers().unwrap();
    assert_eq!(headers["authorization"], "Bearer k");
    assert_eq!(headers["x-custom"], "yes");
    assert_eq!(
        mock.last_request_uri().unwrap(),
        "/v1/chat/completions?trace=1"
    );
    assert_eq!(mock.last_request_host().unwrap(), mock.addr.to_string());
    let recorded: Value = serde_json::from_slice(&mock.last_request_body().unwrap()).unwrap();
    assert_eq!(recorded, body);
}

#[tokio::test]
async fn remaining_zero_answers_ok_with_exhausted_ratelimit_headers() {
    let mock = MockUpstream::start().await;
    mock.set_steady("k", Behavior::RemainingZero { reset: "1s".into() });
    let response = post_chat(&mock, "k", &chat_body(false, false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ratelimit-remaining-requests"], "0");
    assert_eq!(response.headers()["x-ratelimit-reset-requests"], "1s");
}
