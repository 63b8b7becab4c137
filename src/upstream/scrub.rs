//! Scrubbing a pool's secrets out of everything an upstream answers before a client sees it:
//! header values, whole bodies, and streamed bodies across chunk boundaries, in plain form and
//! JSON-escaped (`\u0073k-…`, `\/`, `\"`, any mix of escaped and plain characters).
//!
//! One [`Scrubber`] per pool, built when the config is loaded: an Aho-Corasick automaton over
//! the pool's secrets (matching costs the same for 1 key or 10,000), and the secrets sorted, to
//! tell whether the end of a chunk may be the start of one. Bytes holding a backslash are matched
//! in a copy with the JSON escapes undone, mapped back to the original bytes; bytes without one
//! (nearly every chunk) are matched as they are, and an unchanged chunk is passed on without a
//! copy. A stream holds back only a chunk's tail that is the start of some secret (never more than
//! the longest secret, escaped), so SSE events, which end in a newline, are never delayed.
//!
//! A match is replaced by a mask of the same length (the key's fingerprint padded with `*`), so a
//! `Content-Length` stays true.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;

use crate::config::Secret;

/// The secrets of one pool, ready to be found in anything an upstream answers.
pub struct Scrubber {
    /// `None` when the pool has no keys.
    automaton: Option<AhoCorasick>,
    secrets: Vec<Box<[u8]>>,
    /// Per secret (same index): its fingerprint, what a mask starts with.
    fingerprints: Vec<Box<[u8]>>,
    /// Indexes into `secrets`, sorted by the secrets' bytes.
    sorted: Vec<usize>,
    /// The bytes some secret starts with.
    first_bytes: [bool; 256],
    longest: usize,
    /// The shortest secret's length: bytes fewer than this hold no secret, in any form (an
    /// escape only lengthens one), so they are not scanned.
    shortest: usize,
}

/// Where secrets were found in some bytes, and how much of them may be sent now.
struct Scan {
    /// Original byte ranges to mask, in order, with the secret found there.
    found: Vec<(std::ops::Range<usize>, usize)>,
    /// Bytes before this offset may go out; the rest must wait for more bytes.
    ready: usize,
}

impl Scrubber {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Scrubber {
        let mut unique: Vec<&Secret> = Vec::new();
        for s in secrets {
            if !s.expose().is_empty() && !unique.iter().any(|u| u.expose() == s.expose()) {
                unique.push(s);
            }
        }
        let secret_bytes: Vec<Box<[u8]>> = (unique.iter())
            .map(|s| s.expose().as_bytes().into())
            .collect();
        let fingerprints = (unique.iter())
            .map(|s| s.fingerprint().into_bytes().into())
            .collect();
        let mut sorted: Vec<usize> = (0..secret_bytes.len()).collect();
        sorted.sort_by(|a, b| secret_bytes[*a].cmp(&secret_bytes[*b]));
        let mut first_bytes = [false; 256];
        for s in &secret_bytes {
            first_bytes[usize::from(s[0])] = true;
        }
        let automaton = (!secret_bytes.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&secret_bytes)
                    .ok()
            })
            .flatten();
        Scrubber {
            automaton,
            longest: secret_bytes.iter().map(|s| s.len()).max().unwrap_or(0),
            shortest: secret_bytes.iter().map(|s| s.len()).min().unwrap_or(0),
            secrets: secret_bytes,
            fingerprints,
            sorted,
            first_bytes,
        }
    }

    /// Heap bytes of the automaton (for the README's cost figures).
    pub fn automaton_bytes(&self) -> usize {
        self.automaton.as_ref().map_or(0, AhoCorasick::memory_usage)
    }

    /// `body` with every secret masked.
    pub fn scrub_whole(&self, body: Bytes) -> Bytes {
        let scan = self.scan(&body, true);
        self.masked(&body, scan.ready, &scan.found)
    }

    /// Masks secrets in header values; drops a header whose name holds one. Headers without
    /// a secret (nearly every answer's) are left as they are, not copied into a new map.
    pub fn scrub_headers(&self, headers: &mut HeaderMap) {
        if self.automaton.is_none() {
            return;
        }
        let holds_secret = |bytes: &[u8]| !self.scan(bytes, true).found.is_empty();
        let clean = (headers.iter()).all(|(name, value)| {
            !holds_secret(name.as_str().as_bytes()) && !holds_secret(value.as_bytes())
        });
        if clean {
            return;
        }
        let mut out = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers.iter() {
            if !self.scan(name.as_str().as_bytes(), true).found.is_empty() {
                continue;
            }
            let bytes = value.as_bytes();
            let scan = self.scan(bytes, true);
            if scan.found.is_empty() {
                out.append(name.clone(), value.clone());
            } else if let Ok(v) =
                HeaderValue::from_bytes(&self.masked(bytes, bytes.len(), &scan.found))
            {
                out.append(name.clone(), v);
            }
        }
        *headers = out;
    }

    /// Finds the secrets in `bytes`. Unless `at_end`, a tail that may be the start of a secret
    /// (or of a JSON escape) is left for the next call.
    fn scan(&self, bytes: &[u8], at_end: bool) -> Scan {
        let Some(automaton) = &self.automaton else {
            return Scan {
                found: Vec::new(),
                ready: bytes.len(),
            };
        };
        // Nearly every header value and name is shorter than any secret (BENCHMARKS.md, "Where
        // a request's CPU goes"); a chunk that is not the end may still start one, so it is
        // scanned for its tail.
        if at_end && bytes.len() < self.shortest {
            return Scan {
                found: Vec::new(),
                ready: bytes.len(),
            };
        }
        let normalized = memchr::memchr(b'\\', bytes).map(|_| Normalized::of(bytes, at_end));
        let text = normalized.as_ref().map_or(bytes, |n| &n.text[..]);
        let origin = |i: usize| normalized.as_ref().map_or(i, |n| n.starts[i]);
        let hold_from = if at_end {
            text.len()
        } else {
            self.tail_start(text)
        };
        let mut found = Vec::new();
        let mut sent_upto = hold_from;
        for m in automaton.find_iter(text) {
            if m.start() >= hold_from {
                break;
            }
            found.push((origin(m.start())..origin(m.end()), m.pattern().as_usize()));
            sent_upto = sent_upto.max(m.end());
        }
        Scan {
            found,
            ready: origin(sent_upto),
        }
    }

    /// Where the longest tail of `text` that a secret (longer than it) starts with begins, or
    /// `text.len()` when there is none.
    fn tail_start(&self, text: &[u8]) -> usize {
        let from = text.len().saturating_sub(self.longest.saturating_sub(1));
        (from..text.len())
            .find(|&p| self.first_bytes[usize::from(text[p])] && self.starts_longer(&text[p..]))
            .unwrap_or(text.len())
    }

    /// Whether some secret longer than `tail` starts with it.
    fn starts_longer(&self, tail: &[u8]) -> bool {
        let at = self.sorted.partition_point(|&i| &*self.secrets[i] < tail);
        (self.sorted[at..].iter().take(2))
            .map(|&i| &self.secrets[i])
            .any(|s| s.len() > tail.len() && s.starts_with(tail))
    }

    /// `bytes[..ready]` with each found range replaced by a mask of the same length.
    fn masked(
        &self,
        bytes: &[u8],
        ready: usize,
        found: &[(std::ops::Range<usize>, usize)],
    ) -> Bytes {
        if found.is_empty() {
            return Bytes::copy_from_slice(&bytes[..ready]);
        }
        let mut out = Vec::with_capacity(ready);
        let mut at = 0;
        for (range, secret) in found {
            out.extend_from_slice(&bytes[at..range.start]);
            let fingerprint = &self.fingerprints[*secret];
            let len = range.len();
            if fingerprint.len() <= len {
                out.extend_from_slice(fingerprint);
                out.resize(out.len() + len - fingerprint.len(), b'*');
            } else {
                out.resize(out.len() + len, b'*');
            }
            at = range.end;
        }
        out.extend_from_slice(&bytes[at..ready]);
        Bytes::from(out)
    }
}

/// Some bytes with their JSON escapes undone, and where each resulting byte starts in them.
struct Normalized {
    text: Vec<u8>,
    /// One entry per byte of `text`, plus one: where the normalized part of the input ends.
    starts: Vec<usize>,
}

impl Normalized {
    /// `\uXXXX` above ASCII becomes a NUL byte, which no secret holds (secrets are printable
    /// ASCII). Unless `at_end`, an escape cut off at the end is left out (`starts`'s last entry
    /// says where it begins); at the end it is taken literally.
    fn of(bytes: &[u8], at_end: bool) -> Normalized {
        let mut text = Vec::with_capacity(bytes.len());
        let mut starts = Vec::with_capacity(bytes.len() + 1);
        let mut i = 0;
        while i < bytes.len() {
            starts.push(i);
            if bytes[i] != b'\\' {
                text.push(bytes[i]);
                i += 1;
                continue;
            }
            match escape_at(&bytes[i..]) {
                Escape::Char(c, len) => {
                    text.push(c);
                    i += len;
                }
                Escape::Cut if !at_end => {
                    starts.pop();
                    break;
                }
                Escape::Cut | Escape::NotOne => {
                    text.push(b'\\');
                    i += 1;
                }
            }
        }
        starts.push(i);
        Normalized { text, starts }
    }
}

enum Escape {
    /// The byte it stands for, and its length.
    Char(u8, usize),
    /// The bytes end before the escape does.
    Cut,
    /// A backslash that starts no JSON escape.
    NotOne,
}

/// The JSON escape `bytes` starts with (`bytes[0]` is a backslash).
fn escape_at(bytes: &[u8]) -> Escape {
    let simple = |c: u8| match c {
        b'"' | b'\\' | b'/' => Some(c),
        b'b' => Some(0x08),
        b'f' => Some(0x0c),
        b'n' => Some(b'\n'),
        b'r' => Some(b'\r'),
        b't' => Some(b'\t'),
        _ => None,
    };
    match bytes.get(1) {
        None => Escape::Cut,
        Some(b'u') => {
            let digits = &bytes[2..bytes.len().min(6)];
            if !digits.iter().all(u8::is_ascii_hexdigit) {
                Escape::NotOne
            } else if digits.len() < 4 {
                Escape::Cut
            } else {
                let code = digits.iter().fold(0u32, |n, d| {
                    n * 16 + char::from(*d).to_digit(16).unwrap_or(0)
                });
                Escape::Char(u8::try_from(code).ok().filter(u8::is_ascii).unwrap_or(0), 6)
            }
        }
        Some(c) => simple(*c).map_or(Escape::NotOne, |b| Escape::Char(b, 2)),
    }
}

/// A body's way through the scrubber: what arrives is passed on at once, except a tail that may
/// be the start of a secret, which waits for the next chunk (or the end).
pub struct StreamScrub {
    scrubber: Arc<Scrubber>,
    held: Vec<u8>,
}

impl StreamScrub {
    pub fn new(scrubber: Arc<Scrubber>) -> StreamScrub {
        StreamScrub {
            scrubber,
            held: Vec::new(),
        }
    }

    /// What of `chunk` (after what was held) may go to the client now, masked. May be empty.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        if self.held.is_empty() {
            let scan = self.scrubber.scan(&chunk, false);
            if scan.found.is_empty() {
                self.held.extend_from_slice(&chunk[scan.ready..]);
                return chunk.slice(..scan.ready);
            }
            let out = self.scrubber.masked(&chunk, scan.ready, &scan.found);
            self.held.extend_from_slice(&chunk[scan.ready..]);
            return out;
        }
        self.held.extend_from_slice(&chunk);
        let scan = self.scrubber.scan(&self.held, false);
        let out = self.scrubber.masked(&self.held, scan.ready, &scan.found);
        self.held.drain(..scan.ready);
        out
    }

    /// The held tail, masked, once the body has ended.
    pub fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.held);
        self.scrubber.scrub_whole(Bytes::from(held))
    }
}

#[cfg(test)]
#[path = "scrub/tests.rs"]
mod tests;
