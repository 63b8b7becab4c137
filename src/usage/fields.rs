//! Where an answer's top-level `usage` and `model` sit, found in one pass over the JSON that
//! checks its grammar on the way but builds nothing: serde_json's reader spent most of its time
//! on the fields keygate skips (each key decoded and checked as UTF-8, each skipped value
//! through a visitor), about 6,000 instructions for a small chat completion (BENCHMARKS.md,
//! "Where a request's CPU goes").
//!
//! The pass answers only when it is sure serde_json would read the same: its strings are UTF-8
//! (and nothing else is above ASCII), its grammar is JSON's (strings with their escapes and
//! without control characters, numbers, literals, nesting, nothing after the value), the value
//! is an object, and no top-level key is escaped, repeated among `usage`, `model` and
//! `response`, or `response` (the Responses API's wrapper). Anything else is [`Fields::Unsure`]: the caller reads the
//! text with serde_json, which then decides.

use std::ops::Range;

/// What [`top_level`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fields {
    /// A JSON object; the byte ranges of its `usage` and `model` values, when present, and
    /// whether the `model` value is a string without escapes.
    Object {
        usage: Option<Range<usize>>,
        model: Option<Range<usize>>,
        plain_model: bool,
    },
    Unsure,
}

/// How deep the pass follows nested arrays and objects (serde_json stops at 128).
const MAX_DEPTH: u32 = 100;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each zero byte of `v` (exact for the lowest one).
fn zero_byte(v: u64) -> u64 {
    v.wrapping_sub(ONES) & !v & HIGH
}

pub(super) fn top_level(json: &[u8]) -> Fields {
    let mut c = Cursor { b: json, i: 0 };
    c.object().unwrap_or(Fields::Unsure)
}

/// What a `usage` value holds, read by [`usage_counts`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum UsageValue {
    Null,
    /// The counts named [`COUNT_NAMES`], in that order: each a whole number that fits in u64,
    /// else none (absent, negative, fractional, too large, not a number); a later repeat of a
    /// name wins. Any value but an object or null holds no counts.
    Counts([Option<u64>; 5]),
    /// An escaped name in it: serde_json decodes names before comparing them.
    Unsure,
}

const COUNT_NAMES: [&[u8]; 5] = [
    b"prompt_tokens",
    b"input_tokens",
    b"completion_tokens",
    b"output_tokens",
    b"total_tokens",
];

/// The counts of a `usage` value, `json` its text as [`top_level`] found it (so its grammar
/// is already checked).
pub(super) fn usage_counts(json: &[u8]) -> UsageValue {
    let mut c = Cursor { b: json, i: 0 };
    match json.first() {
        Some(b'n') => UsageValue::Null,
        Some(b'{') => c.counts().map_or(UsageValue::Unsure, UsageValue::Counts),
        Some(_) => UsageValue::Counts([None; 5]),
        None => UsageValue::Unsure,
    }
}

/// A whole number's value, when `text` is only digits and it fits in u64.
fn whole_number(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// The top-level object, then nothing but whitespace.
    fn object(&mut self) -> Option<Fields> {
        let (mut usage, mut model, mut plain_model) = (None, None, false);
        self.ws();
        self.members(|c, key| {
            let start = c.i;
            let plain_string = if c.peek()? == b'"' {
                !c.string()?
            } else {
                c.value()?;
                false
            };
            let range = Some(start..c.i);
            match key {
                b"usage" if usage.is_none() => usage = range,
                b"model" if model.is_none() => (model, plain_model) = (range, plain_string),
                b"usage" | b"model" | b"response" => return None,
                _ => {}
            }
            Some(())
        })?;
        self.ws();
        (self.i == self.b.len()).then_some(Fields::Object {
            usage,
            model,
            plain_model,
        })
    }

    /// The object at the cursor, each member's key handed to `member`, which reads its value
    /// (`None`: unsure); an escaped key is unsure, as serde_json compares keys decoded.
    fn members(&mut self, mut member: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        let b = self.b;
        loop {
            let key_start = self.i + 1;
            if self.string()? {
                return None;
            }
            let key = &b[key_start..self.i - 1];
            self.ws();
            self.eat(b':')?;
            self.ws();
            member(self, key)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string at the cursor, its closing quote included; whether it holds an escape. Runs of
    /// plain bytes are skipped eight at a time; a string with a byte above ASCII is checked
    /// to be UTF-8 (nothing outside strings may be above ASCII).
    fn string(&mut self) -> Option<bool> {
        self.eat(b'"')?;
        let start = self.i;
        let (mut escaped, mut wide) = (false, false);
        loop {
            while let Some(chunk) = self.b.get(self.i..self.i + 8) {
                let v = u64::from_le_bytes(chunk.try_into().ok()?);
                wide |= v & HIGH != 0;
                let stops = zero_byte(v ^ (ONES * u64::from(b'"')))
                    | zero_byte(v ^ (ONES * u64::from(b'\\')))
                    | (v.wrapping_sub(ONES * 0x20) & !v & HIGH);
                if stops != 0 {
                    // The lowest flag is exact: a borrow only flags bytes above a true one.
                    self.i += (stops.trailing_zeros() / 8) as usize;
                    break;
                }
                self.i += 8;
            }
            let byte = *self.b.get(self.i)?;
            match byte {
                b'"' => {
                    let end = self.i;
                    self.i += 1;
                    if wide && std::str::from_utf8(&self.b[start..end]).is_err() {
                        return None;
                    }
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            let hex = self.b.get(self.i + 1..self.i + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 5;
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None, // a control character
                _ => {
                    wide |= byte >= 0x80;
                    self.i += 1;
                }
            }
        }
    }

    /// A number, by JSON's grammar.
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.digit()?;
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digit()?;
            self.digits();
        }
        Some(())
    }

    fn digit(&mut self) -> Option<()> {
        self.peek()?.is_ascii_digit().then(|| self.i += 1)
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// One whole value of any kind, nested ones iteratively (a bit per level of `open`: set
    /// for an object).
    fn value(&mut self) -> Option<()> {
        let mut open: u128 = 0;
        let mut depth = 0u32;
        loop {
            // A value starts here.
            self.ws();
            match self.peek()? {
                b'{' | b'[' => {
                    let object = self.b[self.i] == b'{';
                    self.i += 1;
                    self.ws();
                    if self.eat(if object { b'}' } else { b']' }).is_none() {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return None;
                        }
                        open = (open << 1) | u128::from(object);
                        if object {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // A value ended: close what it ends, or go on to the next one.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.ws();
                let object = open & 1 == 1;
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        if object {
                            self.ws();
                            self.member_key()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                self.i += 1;
                depth -= 1;
                open >>= 1;
            }
        }
    }

    /// A `usage` object's counts (`None`: unsure, or not an object).
    fn counts(&mut self) -> Option<[Option<u64>; 5]> {
        let mut out = [None; 5];
        self.members(|c, key| {
            let start = c.i;
            c.value()?;
            if let Some(slot) = COUNT_NAMES.iter().position(|n| *n == key) {
                out[slot] = whole_number(&c.b[start..c.i]);
            }
            Some(())
        })?;
        Some(out)
    }

    /// A member's key and its colon, in a nested object.
    fn member_key(&mut self) -> Option<()> {
        self.ws();
        self.string()?;
        self.ws();
        self.eat(b':')
    }
}
