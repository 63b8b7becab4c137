//! Where an answer's top-level `usage` and `model` sit, found in one pass over the JSON that
//! checks its grammar on the way but builds nothing: serde_json's reader spent most of its time
//! on the fields keygate skips (each key decoded and checked as UTF-8, each skipped value
//! through a visitor), about 6,000 instructions for a small chat completion (BENCHMARKS.md,
//! "Where a request's CPU goes").
//!
//! The pass answers only when it is sure serde_json would read the same: the whole text is
//! UTF-8, its grammar is JSON's (strings with their escapes and without control characters,
//! numbers, literals, nesting, nothing after the value), the value is an object, and no
//! top-level key is escaped, repeated among `usage`, `model` and `response`, or `response`
//! (the Responses API's wrapper). Anything else is [`Fields::Unsure`]: the caller reads the
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

/// Bytes that end a run of plain string bytes: the closing quote, an escape, a control
/// character.
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

pub(super) fn top_level(json: &[u8]) -> Fields {
    if std::str::from_utf8(json).is_err() {
        return Fields::Unsure;
    }
    let mut c = Cursor { b: json, i: 0 };
    c.object().unwrap_or(Fields::Unsure)
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
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_none() {
            loop {
                let key_start = self.i + 1;
                if self.string()? {
                    return None; // an escaped key: serde_json compares it decoded
                }
                let key = &self.b[key_start..self.i - 1];
                self.ws();
                self.eat(b':')?;
                self.ws();
                let start = self.i;
                let plain_string = if self.peek()? == b'"' {
                    !self.string()?
                } else {
                    self.value()?;
                    false
                };
                let range = Some(start..self.i);
                match key {
                    b"usage" if usage.is_none() => usage = range,
                    b"model" if model.is_none() => (model, plain_model) = (range, plain_string),
                    b"usage" | b"model" | b"response" => return None,
                    _ => {}
                }
                self.ws();
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        self.ws();
                    }
                    b'}' => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.ws();
        (self.i == self.b.len()).then_some(Fields::Object {
            usage,
            model,
            plain_model,
        })
    }

    /// A string at the cursor, its closing quote included; whether it holds an escape.
    fn string(&mut self) -> Option<bool> {
        self.eat(b'"')?;
        let mut escaped = false;
        loop {
            while !STRING_STOP[usize::from(*self.b.get(self.i)?)] {
                self.i += 1;
            }
            match self.b[self.i] {
                b'"' => {
                    self.i += 1;
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
                _ => return None, // a control character
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

    /// A member's key and its colon, in a nested object.
    fn member_key(&mut self) -> Option<()> {
        self.ws();
        self.string()?;
        self.ws();
        self.eat(b':')
    }
}
