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

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use fields::{Fields, UsageValue};

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
    /// A `usage` object's counts; `None` unless it had at least one token count. A missing
    /// `total_tokens` is the sum of the other two.
    fn from_counts(c: &Counts) -> Option<Usage> {
        let prompt = c.prompt_tokens.or(c.input_tokens);
        let completion = c.completion_tokens.or(c.output_tokens);
        if prompt.is_none() && completion.is_none() && c.total_tokens.is_none() {
            return None;
        }
        let (prompt, completion) = (prompt.unwrap_or(0), completion.unwrap_or(0));
        Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: c.total_tokens.unwrap_or(prompt.saturating_add(completion)),
        })
    }
}

/// The fields of an answer (or of one stream chunk) that we read; everything else is skipped
/// by serde without being built, and so is every part of `usage` but its counts: nothing is
/// allocated but a `model` string with escapes in it (BENCHMARKS.md, "Where a request's CPU
/// goes"). A duplicate top-level field makes the whole envelope unreadable.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    usage: Option<Counts>,
    #[serde(default, borrow)]
    model: Text<'a>,
    /// Responses API stream events wrap the answer: `{"type":"response.completed","response":{…}}`.
    #[serde(default, borrow)]
    response: Option<Inner<'a>>,
}

#[derive(Deserialize)]
struct Inner<'a> {
    #[serde(default)]
    usage: Option<Counts>,
    #[serde(default, borrow)]
    model: Text<'a>,
}

impl<'a> Envelope<'a> {
    /// The envelope serde_json reads from `json` (`None` where it fails), found by
    /// `fields::top_level` where that is sure of it, with `usage` read by `fields::usage_counts`
    /// and an escaped `model` by serde_json.
    fn parse(json: &'a [u8]) -> Option<Envelope<'a>> {
        let Fields::Object {
            usage,
            model,
            plain_model,
        } = fields::top_level(json)
        else {
            return Envelope::parse_whole(json);
        };
        let usage = match usage {
            None => None,
            Some(r) => match fields::usage_counts(&json[r.clone()]) {
                UsageValue::Null => None,
                UsageValue::Counts(c) => Some(Counts {
                    prompt_tokens: c[0],
                    input_tokens: c[1],
                    completion_tokens: c[2],
                    output_tokens: c[3],
                    total_tokens: c[4],
                }),
                UsageValue::Unsure => serde_json::from_slice::<Option<Counts>>(&json[r]).ok()?,
            },
        };
        let model = match model {
            // The range is a string's, quotes included, checked to be UTF-8.
            Some(r) if plain_model => Text(
                std::str::from_utf8(&json[r.start + 1..r.end - 1])
                    .ok()
                    .map(Into::into),
            ),
            Some(r) => serde_json::from_slice::<Text>(&json[r]).ok()?,
            None => Text(None),
        };
        Some(Envelope {
            usage,
            model,
            response: None,
        })
    }

    /// The envelope as serde_json reads it from the whole text.
    fn parse_whole(json: &'a [u8]) -> Option<Envelope<'a>> {
        serde_json::from_slice(json).ok()
    }

    fn usage(&self) -> Option<Usage> {
        let nested = self.response.as_ref().and_then(|r| r.usage.as_ref());
        self.usage.as_ref().or(nested).and_then(Usage::from_counts)
    }

    fn model(&self) -> Option<&str> {
        let nested = self.response.as_ref().and_then(|r| r.model.0.as_deref());
        (self.model.0.as_deref())
            .or(nested)
            .filter(|m| !m.is_empty())
    }
}

/// A value read only if it is a string (borrowed from the body unless it holds escapes);
/// anything else reads as none, skipped without being built.
#[derive(Default)]
struct Text<'a>(Option<std::borrow::Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Some(v.into())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Some(v.to_owned().into())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Some(v.into())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text<'a>, A::Error> {
                skip_map(map).map(|()| Text(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Text<'a>, A::Error> {
                skip_seq(seq).map(|()| Text(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text<'a>, E> {
                Ok(Text(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A `usage` object's token counts: each a whole number of tokens, or none when absent or of
/// another type (a later duplicate key wins, as it would in a JSON object read whole). A
/// `usage` that is not an object has no counts.
#[derive(Default)]
struct Counts {
    prompt_tokens: Option<u64>,
    input_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Counts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counts, A::Error> {
                let mut c = Counts::default();
                while let Some(name) = map.next_key::<CountName>()? {
                    let slot = match name {
                        CountName::Prompt => &mut c.prompt_tokens,
                        CountName::Input => &mut c.input_tokens,
                        CountName::Completion => &mut c.completion_tokens,
                        CountName::Output => &mut c.output_tokens,
                        CountName::Total => &mut c.total_tokens,
                        CountName::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = map.next_value::<Count>()?.0;
                }
                Ok(c)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Counts, A::Error> {
                skip_seq(seq).map(|()| Counts::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Counts, E> {
                Ok(Counts::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Counts, E> {
                Ok(Counts::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Counts, E> {
                Ok(Counts::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Counts, E> {
                Ok(Counts::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Counts, E> {
                Ok(Counts::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Counts, E> {
                Ok(Counts::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// A key of a `usage` object.
enum CountName {
    Prompt,
    Input,
    Completion,
    Output,
    Total,
    Other,
}

impl<'de> Deserialize<'de> for CountName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CountName;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CountName, E> {
                Ok(match v {
                    "prompt_tokens" => CountName::Prompt,
                    "input_tokens" => CountName::Input,
                    "completion_tokens" => CountName::Completion,
                    "output_tokens" => CountName::Output,
                    "total_tokens" => CountName::Total,
                    _ => CountName::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// One count: a whole number that fits in u64, else none (a negative or fractional number, a
/// string, anything else).
struct Count(Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(Some(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Count, A::Error> {
                skip_map(map).map(|()| Count(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Count, A::Error> {
                skip_seq(seq).map(|()| Count(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
        }
        d.deserialize_any(V)
    }
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
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

mod fields;
#[cfg(test)]
mod tests;
