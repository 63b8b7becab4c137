//! A pool's `models` allowlist, failing closed: when the pool has one, keygate must be able to
//! read the model a request asks for exactly as the upstream will, or the request is refused
//! with a 400 naming the problem (README.md, "Model allowlist").
//!
//! Bodies are JSON (every top-level key equal to `model` in any letter case is looked at, so a
//! duplicate or a case variant the upstream might prefer is refused) or `multipart/form-data`
//! (the `model` form field, read by the careful parser below). Any other media type cannot name
//! a model keygate can check, so it is refused. A request without a body is unaffected; a body
//! without a model is refused on the inference paths, where the upstream would pick a model
//! itself or fail.

use std::fmt;

use axum::http::{HeaderMap, Method};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::error::ApiError;

/// The model field as OpenAI names it.
const MODEL: &str = "model";

/// Checks the request's model against `allowed` (empty: anything goes).
pub fn check_allowed(
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    allowed: &[String],
    inference: bool,
) -> Result<(), ApiError> {
    if allowed.is_empty() || body.is_empty() || method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = (content_type.split(';').next().unwrap_or_default())
        .trim()
        .to_ascii_lowercase();
    let fields = match media.as_str() {
        "application/json" | "text/json" => json_model_fields(body)?,
        "multipart/form-data" => multipart_model_fields(body, content_type)?,
        other => {
            let shown = if other.is_empty() { "untyped" } else { other };
            return Err(unreadable(format!(
                "keygate cannot read the model of a {shown} body; send application/json or \
                 multipart/form-data"
            )));
        }
    };
    let model = match fields.as_slice() {
        [] if inference => {
            return Err(ApiError::bad_request(
                "missing_model",
                format!(
                    "This pool serves only some models; name one in `model`. Allowed models: {}.",
                    allowed.join(", ")
                ),
            ))
        }
        [] => return Ok(()),
        [(name, _)] if name != MODEL => {
            return Err(ambiguous(format!(
                "The body names the model as `{name}`; use exactly one `model` field."
            )))
        }
        [(_, value)] => value,
        [..] => {
            let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
            return Err(ambiguous(format!(
                "The body names the model more than once ({}); use exactly one `model` field.",
                names.join(", ")
            )));
        }
    };
    let Some(model) = model.as_deref().filter(|m| allowed.iter().any(|a| a == m)) else {
        let shown = model.as_deref().map_or("(not text)".to_string(), |m| {
            m.chars().take(64).collect::<String>()
        });
        return Err(ApiError::bad_request(
            "model_not_allowed",
            format!(
                "The model `{shown}` is not allowed on this pool. Allowed models: {}.",
                allowed.join(", ")
            ),
        ));
    };
    tracing::trace!(model, "model allowed");
    Ok(())
}

fn unreadable(why: String) -> ApiError {
    ApiError::bad_request(
        "model_unreadable",
        format!("This pool serves only some models, and {why}."),
    )
}

fn ambiguous(message: String) -> ApiError {
    ApiError::bad_request("ambiguous_model", message)
}

/// One field that may name the model: its name as sent and its value, when it is text.
type ModelField = (String, Option<String>);

/// Every top-level key of a JSON object equal to `model` in any letter case.
fn json_model_fields(body: &[u8]) -> Result<Vec<ModelField>, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let fields = de
        .deserialize_map(ModelKeys)
        .and_then(|f| de.end().map(|()| f))
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("The request body is not a valid JSON object: {e}."),
            )
        })?;
    Ok(fields)
}

struct ModelKeys;

impl<'de> Visitor<'de> for ModelKeys {
    type Value = Vec<ModelField>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<ModelField>, A::Error> {
        let mut found = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.eq_ignore_ascii_case(MODEL) {
                let value = map.next_value::<serde_json::Value>()?;
                found.push((key, value.as_str().map(str::to_string)));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// The form fields of a `multipart/form-data` body named `model` in any letter case. Anything
/// another parser might read differently (no closing delimiter, bare CR or LF in part headers,
/// folded or repeated `Content-Disposition`, `name*=`, escapes in the name, a transfer
/// encoding on the model part) is refused rather than guessed.
fn multipart_model_fields(body: &[u8], content_type: &str) -> Result<Vec<ModelField>, ApiError> {
    let bad = |why: &str| unreadable(format!("its multipart body cannot be read safely ({why})"));
    let boundary = param(content_type, "boundary")
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or_else(|| bad("no valid boundary"))?;
    let delimiter = format!("\r\n--{boundary}");
    let delimiter = delimiter.as_bytes();
    // Read the body as if it began with CRLF, so the first delimiter is like every other one.
    let mut rest = match find(body, &delimiter[2..]) {
        Some(0) => &body[delimiter.len() - 2..],
        _ => match find(body, delimiter) {
            Some(at) => &body[at + delimiter.len()..],
            None => return Err(bad("no boundary delimiter")),
        },
    };
    let mut found = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(found);
        }
        let padded = rest
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        rest = rest[padded..]
            .strip_prefix(b"\r\n")
            .ok_or_else(|| bad("a delimiter not followed by CRLF"))?;
        let end = find(rest, delimiter).ok_or_else(|| bad("no closing delimiter"))?;
        let part = &rest[..end];
        rest = &rest[end + delimiter.len()..];
        let (head, content) = match part.strip_prefix(b"\r\n") {
            Some(content) => (&b""[..], content),
            None => {
                let split = find(part, b"\r\n\r\n").ok_or_else(|| bad("a part without headers"))?;
                (&part[..split], &part[split + 4..])
            }
        };
        let head = std::str::from_utf8(head).map_err(|_| bad("part headers are not UTF-8"))?;
        let mut name = None;
        let mut encoded = false;
        for line in head.split("\r\n") {
            if line.contains(['\r', '\n']) || line.starts_with([' ', '\t']) {
                return Err(bad("bare CR/LF or folding in part headers"));
            }
            let (header, value) = line
                .split_once(':')
                .ok_or_else(|| bad("a malformed part header"))?;
            let header = header.trim();
            if header.eq_ignore_ascii_case("content-disposition") {
                if name.is_some() {
                    return Err(bad("a repeated Content-Disposition"));
                }
                name = Some(disposition_name(value).ok_or_else(|| bad("an unclear field name"))?);
            } else if header.eq_ignore_ascii_case("content-transfer-encoding") {
                encoded = true;
            }
        }
        let Some(name) = name.filter(|n| n.eq_ignore_ascii_case(MODEL)) else {
            continue;
        };
        if encoded {
            return Err(bad("a transfer-encoded model field"));
        }
        let value = std::str::from_utf8(content).ok().map(str::to_string);
        found.push((name, value));
    }
}

/// The `name` of a `form-data` Content-Disposition; `None` when unclear.
fn disposition_name(value: &str) -> Option<String> {
    let mut parts = split_params(value)?.into_iter();
    if !parts.next()?.trim().eq_ignore_ascii_case("form-data") {
        return None;
    }
    let mut name = None;
    for p in parts {
        let (key, v) = p.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        if key == "name*" || (key == "name" && name.is_some()) {
            return None;
        }
        if key == "name" {
            name = Some(unquote(v.trim())?);
        }
    }
    name
}

/// A parameter of a header value such as `multipart/form-data; boundary="x"`.
fn param(value: &str, wanted: &str) -> Option<String> {
    split_params(value)?.into_iter().skip(1).find_map(|p| {
        let (key, v) = p.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case(wanted)
            .then(|| unquote(v.trim()))?
    })
}

/// `value` split at the semicolons outside quotes; `None` for an unclosed quote.
fn split_params(value: &str) -> Option<Vec<&str>> {
    let (mut out, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    (!quoted).then_some(out)
}

/// A token or a quoted string without escapes (an escape is read differently by parsers).
fn unquote(v: &str) -> Option<String> {
    match v.strip_prefix('"') {
        Some(inner) => {
            let inner = inner.strip_suffix('"')?;
            (!inner.contains(['"', '\\'])).then(|| inner.to_string())
        }
        None => (!v.is_empty() && !v.contains([' ', '"', '\\'])).then(|| v.to_string()),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests;
