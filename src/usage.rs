//! Token usage read from upstream answers, for `keygate_tokens_total{pool,key,model,kind}`.
//!
//! Non-streaming answers carry a top-level `usage` object (chat and completions: prompt,
//! completion and total tokens; embeddings: prompt and total only). Streaming answers are
//! Server-Sent Events; with `stream_options.include_usage` the last chunk carries `usage`.
//! [`SseUsageScanner`] watches the streamed bytes as they pass through the proxy without touching
//! them, at O(chunk) cost per chunk and bounded memory.
//!
//! The Responses API spelling (`input_tokens`/`output_tokens`, and `response.usage` inside its
//! stream events) is understood too.

use serde::Deserialize;
use serde_json::Value;

/// The largest single SSE event the scanner buffers; larger events are skipped, not parsed.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Buffers that grew beyond this are released after each event, so one large event does not pin
/// its memory for the rest of the stream.
const KEEP_CAPACITY: usize = 64 * 1024;

/// The token counts of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    /// Reads a `usage` object; `None` unless it is an object with at least one token count.
    /// A missing `total_tokens` is the sum of the other two.
    fn from_value(value: &Value) -> Option<Usage> {
        let count = |names: &[&str]| names.iter().find_map(|name| value.get(*name)?.as_u64());
        let prompt = count(&["prompt_tokens", "input_tokens"]);
        let completion = count(&["completion_tokens", "output_tokens"]);
        let total = count(&["total_tokens"]);
        if prompt.is_none() && completion.is_none() && total.is_none() {
            return None;
        }
        let (prompt, completion) = (prompt.unwrap_or(0), completion.unwrap_or(0));
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: total.unwrap_or(prompt.saturating_add(completion)),
        })
    }
}

/// The fields of an answer (or of one stream chunk) that we read; everything else is skipped
/// by serde without being built.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    model: Option<Value>,
    /// Responses API stream events wrap the answer: `{"type":"response.completed","response":{…}}`.
    #[serde(default)]
    response: Option<Inner>,
}

#[derive(Deserialize)]
struct Inner {
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    model: Option<Value>,
}

impl Envelope {
    fn parse(json: &[u8]) -> Option<Envelope> {
        serde_json::from_slice(json).ok()
    }

    fn usage(&self) -> Option<Usage> {
        let nested = self.response.as_ref().and_then(|r| r.usage.as_ref());
        self.usage.as_ref().or(nested).and_then(Usage::from_value)
    }

    fn model(&self) -> Option<&str> {
        let nested = self.response.as_ref().and_then(|r| r.model.as_ref());
        let model = self.model.as_ref().and_then(Value::as_str);
        model
            .or_else(|| nested.and_then(Value::as_str))
            .filter(|m| !m.is_empty())
    }
}

/// The `usage` of a non-streaming JSON answer.
pub fn usage_from_json_body(body: &[u8]) -> Option<Usage> {
    Envelope::parse(body)?.usage()
}

/// The `model` of a non-streaming JSON answer (the model that actually served it).
pub fn model_from_json_body(body: &[u8]) -> Option<String> {
    Envelope::parse(body)?.model().map(str::to_owned)
}

/// The `usage` of a non-streaming JSON answer and, when it has one, the `model` that served
/// it: the body parsed once for both.
pub fn usage_and_model_from_json_body(body: &[u8]) -> Option<(Usage, Option<String>)> {
    let envelope = Envelope::parse(body)?;
    let usage = envelope.usage()?;
    Some((usage, envelope.model().map(str::to_owned)))
}

/// Watches a Server-Sent Events stream for the last non-null `usage` and the `model` field.
///
/// Feed it every chunk in order, by reference; it never changes or holds back the bytes. Lines
/// may end in `\n`, `\r\n` or `\r` and may be split anywhere across chunks; an event ends at a
/// blank line; its `data:` lines are joined with `\n`. `[DONE]` and non-JSON data are skipped,
/// and an event larger than [`MAX_EVENT_BYTES`] is dropped whole.
#[derive(Debug, Default)]
pub struct SseUsageScanner {
    /// The current, unfinished line.
    line: Vec<u8>,
    /// Whether the current line has any byte (it may be unbuffered when the event is oversized).
    line_started: bool,
    /// The previous chunk ended in `\r`: a leading `\n` finishes that same line ending.
    after_cr: bool,
    /// The `data` of the current event so far, lines joined with `\n`.
    data: Vec<u8>,
    /// Whether the current event has had a `data` line (an empty one counts).
    has_data: bool,
    /// The current event passed [`MAX_EVENT_BYTES`]: skip its bytes until it ends.
    oversized: bool,
    /// The current event's data was parsed in place (its blank line is still to come).
    parsed: bool,
    usage: Option<Usage>,
    model: Option<String>,
}

/// Whether `rest`, the bytes after a line ending, starts with the blank line that ends an event
/// (`after_cr`: that ending was `\r`, so a `\n` first completes it).
fn ends_event(rest: &[u8], after_cr: bool) -> bool {
    let rest = match rest {
        [b'\n', tail @ ..] if after_cr => tail,
        _ => rest,
    };
    matches!(rest.first(), Some(b'\n' | b'\r'))
}

impl SseUsageScanner {
    pub fn new() -> SseUsageScanner {
        SseUsageScanner::default()
    }

    /// Observes the next chunk of the stream. A line that lies whole in the chunk is read where
    /// it is; only a line cut by a chunk boundary is copied (and only the `data` of an event
    /// with more than one `data` line, or whose end is in a later chunk).
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while let Some((&first, rest)) = chunk.split_first() {
            if std::mem::take(&mut self.after_cr) && first == b'\n' {
                chunk = rest;
                continue;
            }
            match memchr::memchr2(b'\n', b'\r', chunk) {
                Some(end) => {
                    let line = &chunk[..end];
                    self.after_cr = chunk[end] == b'\r';
                    chunk = &chunk[end + 1..];
                    if self.line_started || self.oversized || line.is_empty() {
                        self.push_line_bytes(line);
                        self.end_line();
                    } else if self.data.len() + line.len() > MAX_EVENT_BYTES {
                        self.line_started = true;
                        self.drop_event();
                        self.end_line();
                    } else {
                        self.whole_line(line, ends_event(chunk, self.after_cr));
                    }
                }
                None => {
                    self.push_line_bytes(chunk);
                    chunk = &[];
                }
            }
        }
    }

    /// Handles an event that the stream left unterminated (no blank line before its end). The
    /// SSE rules discard such an event; call this only to be lenient with a broken upstream.
    pub fn finish(&mut self) {
        if self.line_started {
            self.end_line();
        }
        self.end_event();
    }

    /// The last non-null `usage` seen so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The last non-empty `model` seen so far.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.line_started = true;
        if self.oversized {
            return;
        }
        if self.line.len() + self.data.len() + bytes.len() > MAX_EVENT_BYTES {
            self.drop_event();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self) {
        if !std::mem::take(&mut self.line_started) {
            self.end_event();
            return;
        }
        if self.oversized {
            return;
        }
        let line = std::mem::take(&mut self.line);
        self.whole_line(&line, false);
        // Reuse the line buffer's allocation.
        self.line = line;
        self.line.clear();
    }

    /// One complete, non-empty line of the current event. When it is the event's only `data`
    /// line and the event ends right after it (`event_ends`), the data is parsed in place.
    fn whole_line(&mut self, line: &[u8], event_ends: bool) {
        // A line without a colon is a field name with an empty value; `:` starts a comment.
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => (&line[..colon], &line[colon + 1..]),
            None => (line, &[][..]),
        };
        if field != b"data" {
            return;
        }
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if !self.has_data && event_ends {
            self.parse_data(value);
            self.parsed = true;
        } else {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
        }
        self.has_data = true;
    }

    fn parse_data(&mut self, data: &[u8]) {
        if data != b"[DONE]" {
            if let Some(envelope) = Envelope::parse(data) {
                self.observe(&envelope);
            }
        }
    }

    fn end_event(&mut self) {
        if self.has_data && !self.oversized && !self.parsed {
            let data = std::mem::take(&mut self.data);
            self.parse_data(&data);
            self.data = data;
        }
        self.parsed = false;
        self.data.clear();
        self.has_data = false;
        self.oversized = false;
        if self.data.capacity() > KEEP_CAPACITY {
            self.data = Vec::new();
        }
        if self.line.capacity() > KEEP_CAPACITY {
            self.line = Vec::new();
        }
    }

    fn observe(&mut self, envelope: &Envelope) {
        if let Some(usage) = envelope.usage() {
            self.usage = Some(usage);
        }
        if let Some(model) = envelope.model() {
            if self.model.as_deref() != Some(model) {
                self.model = Some(model.to_owned());
            }
        }
    }

    fn drop_event(&mut self) {
        self.oversized = true;
        self.line = Vec::new();
        self.data = Vec::new();
    }
}

#[cfg(test)]
mod tests;
