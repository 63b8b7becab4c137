//! The OpenAI Responses API shapes the mock answers `POST /v1/responses` with: a `response`
//! object (one assistant `message` whose one `output_text` part is the fixed answer, `usage` in
//! the Responses spelling), and with `"stream": true` its named SSE events.
//!
//! The stream is the minimal sequence the SDKs accept, each event `event: <type>` plus
//! `data: {"type": <type>, "sequence_number": n, ...}`: `response.created` (status
//! `in_progress`, no output), `response.output_item.added`, `response.content_part.added`, one
//! `response.output_text.delta` per answer word, `response.output_text.done`,
//! `response.content_part.done`, `response.output_item.done`, then `response.completed` with the
//! whole response and its `usage`. Unlike chat streams there is no `data: [DONE]`.

use bytes::Bytes;
use serde_json::{json, Value};

use super::openai::ANSWER_WORDS;

/// A fixed `created_at` timestamp: answers stay deterministic.
const CREATED_AT: u64 = 1_700_000_000;

/// Words in `instructions` and in every `input` text (a string, or items whose `content` is a
/// string or `input_text` parts), at least 1: the mock's `input_tokens`.
pub(super) fn input_tokens(request: &Value) -> u64 {
    fn words(value: &Value) -> usize {
        match value {
            Value::String(text) => text.split_whitespace().count(),
            Value::Array(items) => items.iter().map(words).sum(),
            Value::Object(item) => ["content", "text"]
                .iter()
                .filter_map(|field| item.get(*field))
                .map(words)
                .sum(),
            _ => 0,
        }
    }
    let instructions = request.get("instructions").map_or(0, words);
    let input = request.get("input").map_or(0, words);
    (instructions + input).max(1) as u64
}

/// The assistant message of the answer, `status` `completed` (or `in_progress` with no text).
fn message(item_id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message", "id": item_id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

/// A `response` object: `completed` with the answer and usage, or `in_progress` and empty.
fn response_object(id: &str, model: &str, input_tokens: u64, completed: bool) -> Value {
    let output_tokens = ANSWER_WORDS.len() as u64;
    let (status, output, usage) = if completed {
        let usage = json!({
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        });
        let text = ANSWER_WORDS.concat();
        let item = message(&item_id(id), &text, "completed");
        ("completed", json!([item]), usage)
    } else {
        ("in_progress", json!([]), Value::Null)
    };
    json!({
        "id": id, "object": "response", "created_at": CREATED_AT, "status": status,
        "error": null, "incomplete_details": null, "model": model, "output": output,
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "usage": usage,
    })
}

/// The id of the answer's one output item, derived from the response id.
fn item_id(response_id: &str) -> String {
    format!("msg_{}", response_id.trim_start_matches("resp_"))
}

/// A non-streaming `POST /v1/responses` answer.
pub(super) fn response(id: &str, model: &str, input_tokens: u64) -> String {
    response_object(id, model, input_tokens, true).to_string()
}

/// The SSE events of a streamed `POST /v1/responses` answer (see the module documentation).
pub(super) fn response_events(id: &str, model: &str, input_tokens: u64) -> Vec<Bytes> {
    let item_id = item_id(id);
    let text = ANSWER_WORDS.concat();
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": []});
    let at = json!({"item_id": item_id, "output_index": 0, "content_index": 0});
    let with = |mut event: Value, fields: &Value| {
        if let (Some(event), Some(fields)) = (event.as_object_mut(), fields.as_object()) {
            event.extend(fields.clone());
        }
        event
    };
    let mut events = vec![
        json!({"type": "response.created",
               "response": response_object(id, model, input_tokens, false)}),
        json!({"type": "response.output_item.added", "output_index": 0,
               "item": message(&item_id, "", "in_progress")}),
        with(
            json!({"type": "response.content_part.added", "part": part("")}),
            &at,
        ),
    ];
    events.extend(ANSWER_WORDS.iter().map(|word| {
        with(
            json!({"type": "response.output_text.delta", "delta": word}),
            &at,
        )
    }));
    events.extend([
        with(
            json!({"type": "response.output_text.done", "text": text}),
            &at,
        ),
        with(
            json!({"type": "response.content_part.done", "part": part(&text)}),
            &at,
        ),
        json!({"type": "response.output_item.done", "output_index": 0,
               "item": message(&item_id, &text, "completed")}),
        json!({"type": "response.completed",
               "response": response_object(id, model, input_tokens, true)}),
    ]);
    events
        .into_iter()
        .enumerate()
        .map(|(sequence, mut event)| {
            event["sequence_number"] = json!(sequence);
            let kind = event["type"].as_str().unwrap_or_default().to_owned();
            Bytes::from(format!("event: {kind}\ndata: {event}\n\n"))
        })
        .collect()
}
