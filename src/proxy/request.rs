//! The client's request body: read whole (it is replayed on retries) within the size limit, the
//! body timeout and the buffer budgets, then inspected for `model` and `stream` when it is JSON.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::{BodyExt, Limited};

use crate::error::ApiError;
use crate::state::budget::Admission;

/// Bodies declared over the limit by at most this much are drained before the 413.
const DRAIN_MAX: u64 = 4 << 20;

/// Why a body was not read.
enum ReadError {
    TooLarge,
    Unreadable,
    /// A buffer budget is full (the answer is already worded).
    Budget(ApiError),
}

/// Reads the body: 413 past `limit` (at once when Content-Length says so), 408 when the client
/// sends too slowly, 429/503 when `admission` cannot reserve the bytes (see `budget`). Bytes
/// are reserved before they are buffered: the whole declared length up front, else each
/// growth of the buffer. A body refused while the client is still sending is read and thrown
/// away first (up to the size limit, within the timeout), so the client gets the answer
/// instead of a broken pipe.
pub async fn read_body(
    mut body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
    admission: &mut Admission,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limit as u64) {
        // A modest overshoot is read and thrown away first, so the client (still sending) gets
        // the 413 instead of a broken pipe; a huge one is refused at once.
        if n <= limit as u64 + DRAIN_MAX {
            drain(body, limit + DRAIN_MAX as usize, timeout).await;
        }
        return Err(ApiError::payload_too_large(limit));
    }
    let declared = declared.map(|n| n as usize);
    if let Some(Err(e)) = declared.map(|n| admission.reserve(n)) {
        drain(body, limit, timeout).await;
        return Err(e);
    }
    let read = collect_within(&mut body, limit, declared, admission);
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(ApiError::new(
            http::StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            "The request body did not arrive in time.",
        )),
        Ok(Err(ReadError::TooLarge)) => Err(ApiError::payload_too_large(limit)),
        Ok(Err(ReadError::Budget(e))) => {
            drain(body, limit, timeout).await;
            Err(e)
        }
        Ok(Err(ReadError::Unreadable)) => Err(ApiError::bad_request(
            "invalid_body",
            "The request body could not be read.",
        )),
        Ok(Ok(collected)) => Ok(collected),
    }
}

/// The body's bytes, at most `limit`, each growth of the buffer reserved first.
async fn collect_within(
    body: &mut Body,
    limit: usize,
    declared: Option<usize>,
    admission: &mut Admission,
) -> Result<Bytes, ReadError> {
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ReadError::Unreadable)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let needed = buf.len() + data.len();
        if needed > limit {
            return Err(ReadError::TooLarge);
        }
        if needed > buf.capacity() {
            let grown = needed.max(buf.capacity() * 2).min(limit);
            admission.reserve(grown).map_err(ReadError::Budget)?;
            buf.reserve(grown - buf.len());
            admission
                .reserve(buf.capacity())
                .map_err(ReadError::Budget)?;
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// Reads and discards up to `max` bytes of `body` within `timeout`, holding none of them.
async fn drain(body: Body, max: usize, timeout: Duration) {
    let discard = Limited::new(body, max)
        .into_data_stream()
        .for_each(|_| async {});
    let _ = tokio::time::timeout(timeout, discard).await;
}

/// What keygate needs to know of a JSON request.
#[derive(Debug, Default)]
pub struct Inspected {
    pub model: Option<String>,
    pub stream: bool,
    /// The body's `user` field, when a non-empty string.
    pub user: Option<String>,
    /// The parsed body, kept only when a fallback may rewrite its `model`.
    pub json: Option<serde_json::Map<String, serde_json::Value>>,
    /// The completion the request asks for: `max_completion_tokens`, else `max_tokens` (each
    /// only when a whole number), for its budget reservation (src/proxy/key_budget.rs).
    pub max_completion: Option<u64>,
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    )
}

/// The fields of a JSON body the gateway reads.
#[derive(serde::Deserialize)]
struct Head {
    #[serde(default, deserialize_with = "present")]
    model: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    stream: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    user: Option<serde_json::Value>,
    #[serde(default)]
    max_tokens: Option<serde_json::Value>,
    #[serde(default)]
    max_completion_tokens: Option<serde_json::Value>,
}

/// `max_completion_tokens`, else `max_tokens`, where each is a whole number.
fn max_completion(
    max_completion_tokens: Option<&serde_json::Value>,
    max_tokens: Option<&serde_json::Value>,
) -> Option<u64> {
    (max_completion_tokens.and_then(serde_json::Value::as_u64))
        .or_else(|| max_tokens.and_then(serde_json::Value::as_u64))
}

/// The body's `user` (OpenAI's end-user identifier) when it is a non-empty string: the canary
/// identity of a request without `X-User-Id` (src/proxy/route.rs).
fn end_user(user: Option<&serde_json::Value>) -> Option<String> {
    user.and_then(serde_json::Value::as_str)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
}

/// `Some` whenever the field is there, `null` included (plain `Option` maps `null` to `None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    <serde_json::Value as serde::Deserialize>::deserialize(d).map(Some)
}

/// Checks the body's media type and, for JSON, its syntax; pulls out `model`, `stream`, `user`
/// and the completion asked for, in one parse.
pub fn inspect(
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    keep_json: impl Fn(&str) -> bool,
) -> Result<Inspected, ApiError> {
    if body.is_empty() || method == Method::GET || method == Method::HEAD {
        return Ok(Inspected::default());
    }
    match media_type(headers).as_deref() {
        Some("application/json") | Some("text/json") => {}
        Some(t)
            if t.starts_with("multipart/")
                || t == "application/x-www-form-urlencoded"
                || t == "application/octet-stream" =>
        {
            return Ok(Inspected::default());
        }
        _ => {
            return Err(ApiError::new(
                http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "unsupported_media_type",
                "Send the body as application/json (or multipart/form-data for uploads).",
            ))
        }
    }
    // Fast path: read only `model` and `stream` (serde_json still checks the whole body's
    // syntax); anything unusual (not an object, a duplicate field, a non-string model) takes
    // the full parse below, which also words the error.
    let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if let (true, Ok(head)) = (object, serde_json::from_slice::<Head>(body)) {
        if let Some(serde_json::Value::String(_)) | None = head.model {
            let model = match head.model {
                Some(serde_json::Value::String(m)) => Some(m),
                _ => None,
            };
            let stream = head.stream.as_ref().and_then(serde_json::Value::as_bool) == Some(true);
            let json = match model.as_deref().filter(|m| keep_json(m)) {
                Some(_) => match serde_json::from_slice(body) {
                    Ok(serde_json::Value::Object(map)) => Some(map),
                    _ => None,
                },
                None => None,
            };
            return Ok(Inspected {
                model,
                stream,
                user: end_user(head.user.as_ref()),
                json,
                max_completion: max_completion(
                    head.max_completion_tokens.as_ref(),
                    head.max_tokens.as_ref(),
                ),
            });
        }
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("The request body is not valid JSON: {e}."),
        )
    })?;
    let serde_json::Value::Object(map) = value else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "The request body must be a JSON object.",
        ));
    };
    let model = match map.get("model") {
        None => None,
        Some(serde_json::Value::String(m)) => Some(m.clone()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_model",
                "`model` must be a string.",
            ))
        }
    };
    let stream = map
        .get("stream")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let user = end_user(map.get("user"));
    let asked = max_completion(map.get("max_completion_tokens"), map.get("max_tokens"));
    let json = model.as_deref().filter(|m| keep_json(m)).map(|_| map);
    Ok(Inspected {
        model,
        stream,
        user,
        json,
        max_completion: asked,
    })
}

/// The body with `model` replaced (for a fallback model).
pub fn with_model(json: &serde_json::Map<String, serde_json::Value>, model: &str) -> Bytes {
    let mut m = json.clone();
    m.insert("model".into(), serde_json::Value::String(model.to_string()));
    Bytes::from(serde_json::to_vec(&m).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &str) -> Result<(Option<String>, bool, bool), String> {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        inspect(&Method::POST, &h, body.as_bytes(), |m| m == "keep")
            .map(|i| (i.model, i.stream, i.json.is_some()))
            .map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn model_and_stream_are_read_without_keeping_the_body() {
        assert_eq!(
            run(r#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt","stream":true}"#),
            Ok((Some("gpt".into()), true, false))
        );
        assert_eq!(run(r#" {"stream":"yes"}"#), Ok((None, false, false)));
        assert_eq!(
            run(r#"{"model":"keep"}"#),
            Ok((Some("keep".into()), false, true))
        );
    }

    #[test]
    fn unusual_bodies_get_the_full_parse_and_its_errors() {
        for bad in [
            r#"{"model":null}"#,
            r#"{"model":3}"#,
            r#"["gpt",true]"#,
            r#"{"model":"a""#,
            "7",
        ] {
            assert!(run(bad).is_err(), "{bad} must be refused");
        }
        // A duplicate field is legal JSON: the last one wins, as with a full parse.
        assert_eq!(
            run(r#"{"model":"a","model":"b","stream":true}"#),
            Ok((Some("b".into()), true, false))
        );
    }
}
