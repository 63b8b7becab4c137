//! [`Behavior::Leak`](super::behavior::Behavior::Leak): an answer that echoes the key it was
//! sent with everywhere a careless provider might, for the tests that prove keygate never hands a
//! pool key to a client. Every form sends the key in headers (`x-debug-key`, `set-cookie`, a
//! `content-disposition` file name) next to provider account headers (`openai-organization`,
//! `openai-project`); the body holds the key in the form's way.

use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::stream::{self, StreamExt};

/// How the body carries the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakForm {
    /// A JSON body with the key as it is.
    Plain,
    /// A JSON body with every character of the key `\u`-escaped (and once with `\/`-style
    /// escapes mixed in).
    Escaped,
    /// SSE events whose chunks split the key (plain and escaped) mid-way, sent a few
    /// milliseconds apart so they arrive as separate reads.
    Sse,
    /// A gzip-encoded JSON body (`Content-Encoding: gzip`) with the key as it is.
    Gzip,
}

impl LeakForm {
    pub fn parse(text: &str) -> Option<LeakForm> {
        match text {
            "plain" => Some(LeakForm::Plain),
            "escaped" => Some(LeakForm::Escaped),
            "sse" => Some(LeakForm::Sse),
            "gzip" => Some(LeakForm::Gzip),
            _ => None,
        }
    }
}

fn escaped(secret: &str) -> String {
    secret.bytes().map(|b| format!("\\u{b:04x}")).collect()
}

/// Half of the characters `\u`-escaped, the others as they are.
fn half_escaped(secret: &str) -> String {
    (secret.chars().enumerate())
        .map(|(i, c)| {
            if i % 2 == 0 {
                format!("\\u{:04X}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn json_body(secret: &str, form: LeakForm) -> String {
    let key = match form {
        LeakForm::Escaped => format!("{} and {}", escaped(secret), half_escaped(secret)),
        _ => secret.to_owned(),
    };
    format!(
        r#"{{"id":"leak","object":"chat.completion","message":"Sent with key {key}.","choices":[{{"index":0,"message":{{"role":"assistant","content":"{key}"}},"finish_reason":"stop"}}]}}"#
    )
}

/// The SSE chunks: each key form is cut in the middle, the cut falling between two chunks.
fn sse_chunks(secret: &str) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    for key in [secret.to_owned(), escaped(secret), half_escaped(secret)] {
        let event = format!(
            "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{key}\"}}}}]}}\n\n"
        );
        let cut = event.find(&key).unwrap_or(0) + key.len() / 2;
        chunks.push(Bytes::copy_from_slice(&event.as_bytes()[..cut]));
        chunks.push(Bytes::copy_from_slice(&event.as_bytes()[cut..]));
    }
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    chunks
}

pub(super) fn leak_response(secret: &str, form: LeakForm, status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let (content_type, body) = match form {
        LeakForm::Sse => {
            let spaced = stream::iter(sse_chunks(secret)).then(|chunk| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, io::Error>(chunk)
            });
            ("text/event-stream", Body::from_stream(spaced))
        }
        LeakForm::Gzip => (
            "application/json",
            Body::from(gzip_stored(json_body(secret, form).as_bytes())),
        ),
        LeakForm::Plain | LeakForm::Escaped => {
            ("application/json", Body::from(json_body(secret, form)))
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.append(name, v);
        }
    };
    set("content-type", content_type.to_owned());
    set("x-debug-key", format!("Bearer {secret}"));
    set("set-cookie", format!("session={secret}; Path=/"));
    set(
        "content-disposition",
        format!("attachment; filename=\"{secret}.json\""),
    );
    set("openai-organization", "org-mock-provider".to_owned());
    set("openai-project", "proj_mock_provider".to_owned());
    if form == LeakForm::Gzip {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// `data` as a gzip member of stored (uncompressed) deflate blocks: valid gzip that any client
/// decodes, built without a compression library.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(0xffff).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let last = u8::from(blocks.peek().is_none());
        let len = block.len() as u16;
        out.push(last);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE), bit by bit: the mock gzips a few hundred bytes at a time.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn sse_chunks_cut_every_form_of_the_key() {
        let chunks = sse_chunks("sk-abcdefgh");
        assert!(chunks
            .iter()
            .all(|c| !String::from_utf8_lossy(c).contains("sk-abcdefgh")));
        let whole: Vec<u8> = chunks.concat();
        assert!(String::from_utf8_lossy(&whole).contains("sk-abcdefgh"));
    }
}
