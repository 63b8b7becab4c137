//! OpenAI wire shapes the mock answers with: error bodies, chat completions (JSON and SSE
//! chunks), embeddings and the model list, plus the deterministic token counts.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

/// The words of every answer; one SSE content chunk each, so `completion_tokens` is 5 both ways.
pub(super) const ANSWER_WORDS: [&str; 5] = ["Hello", " from", " the", " mock", " upstream."];

/// Models `GET /v1/models` lists (minus the "missing" ones).
pub(super) const LISTED_MODELS: [&str; 4] = [
    "gpt-4.1",
    "gpt-4o-mini",
    "deepseek-v3.2",
    "text-embedding-3-small",
];

/// A fixed `created` timestamp: answers stay deterministic.
const CREATED: u64 = 1_700_000_000;

/// `{"error":{"message","type","param":null,"code"}}` as a string.
pub(super) fn error_body(message: &str, kind: &str, code: Option<&str>) -> String {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}}).to_string()
}

/// A response carrying the OpenAI error shape.
pub(super) fn error_response(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
) -> Response {
    json_response(status, error_body(message, kind, code))
}

pub(super) fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn not_found(method: &str, path: &str) -> Response {
    let message = format!("Invalid URL ({method} {path})");
    error_response(
        StatusCode::NOT_FOUND,
        &message,
        "invalid_request_error",
        Some("not_found"),
    )
}

pub(super) fn model_not_found(model: &str) -> Response {
    let message = format!("The model `{model}` does not exist or you do not have access to it.");
    error_response(
        StatusCode::NOT_FOUND,
        &message,
        "invalid_request_error",
        Some("model_not_found"),
    )
}

pub(super) fn bad_request(message: &str, param: Option<&str>) -> Response {
    let body = json!({"error": {
        "message": message, "type": "invalid_request_error", "param": param, "code": null
    }});
    json_response(StatusCode::BAD_REQUEST, body.to_string())
}

/// Words in every message's `content` (a string, or text parts), at least 1.
pub(super) fn chat_prompt_tokens(request: &Value) -> u64 {
    let messages = request.get("messages").and_then(Value::as_array);
    let words: usize = messages
        .into_iter()
        .flatten()
        .filter_map(|message| message.get("content"))
        .map(|content| match content {
            Value::String(text) => text.split_whitespace().count(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .map(|text| text.split_whitespace().count())
                .sum(),
            _ => 0,
        })
        .sum();
    words.max(1) as u64
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion})
}

/// A non-streaming chat completion.
pub(super) fn chat_completion(id: &str, model: &str, prompt_tokens: u64) -> String {
    let content: String = ANSWER_WORDS.concat();
    json!({
        "id": id, "object": "chat.completion", "created": CREATED, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": usage(prompt_tokens, ANSWER_WORDS.len() as u64),
    })
    .to_string()
}

/// The SSE events of a streamed chat completion: a role chunk, one chunk per answer word, a
/// finish chunk, with `include_usage` a usage chunk (`choices: []`), then `[DONE]`.
pub(super) fn chat_events(
    id: &str,
    model: &str,
    prompt_tokens: u64,
    include_usage: bool,
) -> Vec<Bytes> {
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            // OpenAI sends `usage: null` on every chunk but the last when usage is requested.
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    chunks.extend(
        ANSWER_WORDS
            .iter()
            .map(|word| chunk(json!({"content": word}), None)),
    );
    chunks.push(chunk(json!({}), Some("stop")));
    if include_usage {
        chunks.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model,
            "choices": [], "usage": usage(prompt_tokens, ANSWER_WORDS.len() as u64),
        }));
    }
    let mut events: Vec<Bytes> = chunks
        .iter()
        .map(|chunk| Bytes::from(format!("data: {chunk}\n\n")))
        .collect();
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// The texts of an embeddings `input` (a string, strings, token ids, or lists of token ids) and
/// its token count: words of each string, or the number of token ids.
fn embedding_inputs(input: &Value) -> Vec<(String, u64)> {
    let one = |item: &Value| match item {
        Value::String(text) => (text.clone(), text.split_whitespace().count() as u64),
        Value::Array(ids) => (item.to_string(), ids.len() as u64),
        other => (other.to_string(), 1),
    };
    match input {
        Value::Array(items) if items.iter().all(|item| !item.is_number()) => {
            items.iter().map(one).collect()
        }
        other => vec![one(other)],
    }
}

/// A vector as OpenAI sends it for `encoding_format: "base64"`: the base64 of its `f32`s'
/// little-endian bytes (the SDKs decode it into a `Float32Array` / `numpy.float32`).
pub(super) fn embedding_base64(vector: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = vector
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An embeddings answer: one 8-float vector per input, derived from the input's bytes; floats
/// in JSON, or with `"encoding_format": "base64"` each vector as [`embedding_base64`].
pub(super) fn embeddings(model: &str, request: &Value) -> String {
    let inputs = embedding_inputs(request.get("input").unwrap_or(&Value::Null));
    let prompt_tokens = inputs.iter().map(|(_, tokens)| tokens).sum::<u64>().max(1);
    let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, (text, _))| {
            let seed = text.bytes().map(u64::from).sum::<u64>();
            let vector: Vec<f32> = (0..8u64)
                .map(|i| ((seed + i * 131) % 1000) as f32 / 1000.0)
                .collect();
            let embedding = if base64 {
                json!(embedding_base64(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
    .to_string()
}

pub(super) fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": CREATED, "owned_by": "keygate-mock"})
}

pub(super) fn model_list<'a>(models: impl Iterator<Item = &'a str>) -> String {
    let data: Vec<Value> = models.map(model_object).collect();
    json!({"object": "list", "data": data}).to_string()
}

/// `sk-…9f3a`: what a 401 body may say about the key it refused.
pub(super) fn masked(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("sk-…{tail}")
}
