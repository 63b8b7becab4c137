//! HTTP/1.1 on one upstream connection, read and written by the task that sends the request and
//! reads its answer: no connection task, no channel between them, and no buffer held between
//! reads. hyper's HTTP/1.1 client gave each connection a task, an 8 KiB write buffer, an 8 KiB
//! read buffer and a request channel whose first block is 9.5 KB, about 28 KB for every open
//! stream, and moved every answer and chunk through that task (BENCHMARKS.md, "An HTTP/1.1
//! upstream connection without hyper's client").
//!
//! - A request is written whole: its head and body in one buffer, freed once written.
//! - A read goes into the stack and only the bytes read are kept (`Conn::rest`): a stream
//!   waiting for its next event holds no buffer. Body chunks are handed on without a copy.
//! - The answer's head is parsed by `httparse` (hyper's parser); its body is framed as
//!   RFC 9112 section 6.3 says and as hyper's client does (`Framing`): no body for `HEAD`,
//!   1xx, 204 and 304; chunked when `Transfer-Encoding` ends in `chunked`; else
//!   `Content-Length`; else up to the close. Interim 1xx answers are skipped.
//! - The connection goes back to its pool ([`super::h1`]) the moment its answer's body has been
//!   read to its end, and is closed instead when the answer said `Connection: close`, was
//!   delimited by the close, or was not read to its end.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::h1::H1Pool;

/// What the pool's connector answers.
pub(super) type Connected =
    hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;

/// A connection's stream: plaintext TCP, or TLS boxed. hyper_rustls's stream is as large as its
/// TLS variant (1,112 bytes), which a plaintext connection would carry for nothing, and a
/// request moves its connection a dozen times (into the pool, the answer, its body and the
/// body's wrappers): unboxed, those moves cost about 14,000 instructions a request in `memcpy`.
enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<hyper_util::rt::TokioIo<Connected>>),
}

impl Stream {
    fn new(connected: Connected) -> Stream {
        match connected {
            hyper_rustls::MaybeHttpsStream::Http(tcp) => Stream::Plain(tcp.into_inner()),
            tls => Stream::Tls(Box::new(hyper_util::rt::TokioIo::new(tls))),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// The largest answer head accepted (hyper's client default buffer limit, as before).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Headers an answer may carry (hyper's default).
const MAX_HEADERS: usize = 100;
/// One read: on the stack, so nothing stays allocated while a stream waits.
const READ: usize = 16 * 1024;
/// A chunk-size line (with its extensions) or a trailer line.
const MAX_LINE: usize = 4 * 1024;
/// All trailer lines of a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;
/// A body this long or longer is written after the head instead of copied behind it.
const COPY_BODY_UP_TO: usize = 16 * 1024;

/// Why an exchange on an HTTP/1.1 connection failed. Names no URL and no header value: nothing
/// secret to strip.
#[derive(Debug)]
pub enum WireError {
    /// Reading or writing the connection.
    Io(io::Error),
    /// The upstream closed the connection before its answer's head was complete.
    ClosedBeforeAnswer,
    /// The upstream closed the connection before the end its answer's framing announced.
    BodyCut,
    /// The answer broke HTTP/1.1 (the reason names what).
    Invalid(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "upstream connection: {e}"),
            WireError::ClosedBeforeAnswer => {
                f.write_str("the upstream closed the connection before answering")
            }
            WireError::BodyCut => f.write_str("the upstream closed the connection mid-body"),
            WireError::Invalid(why) => write!(f, "invalid answer from the upstream: {why}"),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// One upstream connection and the bytes read past what was parsed.
pub(super) struct Conn {
    io: Stream,
    rest: BytesMut,
}

impl Conn {
    pub(super) fn new(connected: Connected) -> Conn {
        Conn {
            io: Stream::new(connected),
            rest: BytesMut::new(),
        }
    }

    /// Whether an idle connection may carry a request: nothing arrived on it, not even its
    /// close. Reads without waiting.
    pub(super) fn is_usable(&mut self) -> bool {
        if !self.rest.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut one = [MaybeUninit::<u8>::uninit(); 1];
        let mut buf = ReadBuf::uninit(&mut one);
        // Pending: open and quiet. Anything else (a close, an error, bytes nobody asked for)
        // ends the connection.
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }

    pub(super) async fn write(&mut self, head: &[u8], body: &Bytes) -> io::Result<()> {
        self.io.write_all(head).await?;
        if !body.is_empty() {
            self.io.write_all(body).await?;
        }
        self.io.flush().await
    }

    /// Reads once into the stack and keeps what came; `Ok(0)` at the close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut stack = [MaybeUninit::<u8>::uninit(); READ];
        let mut buf = ReadBuf::uninit(&mut stack);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let got = buf.filled();
                self.rest.extend_from_slice(got);
                Poll::Ready(Ok(got.len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Reads the answer's head (after any interim 1xx answers) to a `method` request.
    pub(super) async fn read_head(&mut self, method: &Method) -> Result<Head, WireError> {
        loop {
            if let Some(head) = parse_head(&mut self.rest, method)? {
                return Ok(head);
            }
            if self.rest.len() >= MAX_HEAD {
                return Err(WireError::Invalid("answer head too large"));
            }
            match self.fill().await {
                Ok(0) if self.rest.is_empty() => return Err(WireError::ClosedBeforeAnswer),
                Ok(0) => return Err(WireError::Invalid("answer head cut by the close")),
                Ok(_) => {}
                Err(e) => return Err(WireError::Io(e)),
            }
        }
    }
}

/// The request in HTTP/1.1 (its target: the path and query), with `Content-Length` for a body
/// that is not empty (as hyper writes it): its head, with the body behind it when the body is
/// short, and what is left to write after the head (the body, when long; else nothing).
pub(super) fn encode_request(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> (Vec<u8>, Bytes) {
    let copy_body = body.len() < COPY_BODY_UP_TO;
    let mut len = method.as_str().len() + target.len() + 40;
    for (name, value) in headers {
        len += name.as_str().len() + value.len() + 4;
    }
    if copy_body {
        len += body.len();
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        // Framing is keygate's to write.
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if copy_body {
        out.extend_from_slice(&body);
        return (out, Bytes::new());
    }
    (out, body)
}

/// An answer's head and how its body is framed.
pub(super) struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once the body has been read to its end.
    pub reusable: bool,
}

/// Parses a complete answer head off the front of `buf`, skipping interim 1xx answers; `None`
/// while the head is incomplete.
pub(super) fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, WireError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        // Where each header's name and value lie in the head, to slice them out of it after
        // it is split off `buf` (the values are then views of the head, not copies).
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut raw);
        let (len, code, minor, count) = match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let base = buf.as_ptr() as usize;
                let count = parsed.headers.len();
                for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
                    let name = h.name.as_ptr() as usize - base;
                    let value = h.value.as_ptr() as usize - base;
                    *span = (
                        name as u32,
                        (name + h.name.len()) as u32,
                        value as u32,
                        (value + h.value.len()) as u32,
                    );
                }
                (
                    len,
                    parsed.code.unwrap_or(0),
                    parsed.version.unwrap_or(1),
                    count,
                )
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(WireError::Invalid("more than 100 headers"))
            }
            Err(_) => return Err(WireError::Invalid("malformed answer head")),
        };
        let head = buf.split_to(len).freeze();
        if !buf.has_remaining() {
            // Hand the allocation to the head alone: freed with it.
            *buf = BytesMut::new();
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| WireError::Invalid("invalid status code"))?;
        if status.is_informational() && code != 101 {
            continue;
        }
        let mut headers = HeaderMap::with_capacity(count);
        for &(n0, n1, v0, v1) in &spans[..count] {
            let name = HeaderName::from_bytes(&head[n0 as usize..n1 as usize])
                .map_err(|_| WireError::Invalid("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize))
                .map_err(|_| WireError::Invalid("invalid header value"))?;
            headers.append(name, value);
        }
        let version = if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let (framing, frames_reusably) = framing(code, method, version, &headers)?;
        let reusable = frames_reusably && keeps_alive(version, &headers);
        return Ok(Some(Head {
            status,
            version,
            headers,
            framing,
            reusable,
        }));
    }
}

/// The answer's body framing (RFC 9112 section 6.3, in hyper's client's order), and whether it
/// leaves the connection able to carry another request.
fn framing(
    code: u16,
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<(Framing, bool), WireError> {
    match code {
        // An upgrade keygate did not ask for: the connection is no longer HTTP/1.1.
        101 => return Ok((Framing::Length(0), false)),
        204 | 304 => return Ok((Framing::Length(0), true)),
        _ => {}
    }
    if method == Method::HEAD {
        return Ok((Framing::Length(0), true));
    }
    if method == Method::CONNECT && (200..300).contains(&code) {
        return Ok((Framing::Length(0), false));
    }
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(WireError::Invalid(
                "transfer-encoding in an HTTP/1.0 answer",
            ));
        }
        // With Content-Length too the answer is framed by Transfer-Encoding, but the
        // connection is not trusted with another request (RFC 9112 section 6.3).
        let both = headers.contains_key(http::header::CONTENT_LENGTH);
        return Ok(if ends_chunked(headers) {
            (Framing::Chunked(Chunked::Size), !both)
        } else {
            (Framing::Close, false)
        });
    }
    match content_length(headers) {
        Some(Ok(n)) => Ok((Framing::Length(n), true)),
        Some(Err(())) => Err(WireError::Invalid("invalid content-length")),
        None => Ok((Framing::Close, false)),
    }
}

/// The last transfer coding named is `chunked`.
fn ends_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
        .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"))
}

/// Every `Content-Length` value (lists included) agrees: that length; `Err` when one does not
/// parse or two differ; `None` without the header.
fn content_length(headers: &HeaderMap) -> Option<Result<u64, ()>> {
    let mut found: Option<u64> = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = trim(part);
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Some(Err(()));
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            match found {
                Some(m) if m != n => return Some(Err(())),
                _ => found = Some(n),
            }
        }
    }
    found.map(Ok)
}

/// HTTP/1.1 keeps the connection unless the answer says `close`; HTTP/1.0 only when it says
/// `keep-alive`.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let says = |token: &[u8]| {
        headers.get_all(http::header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(token))
        })
    };
    if version == Version::HTTP_10 {
        says(b"keep-alive")
    } else {
        !says(b"close")
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// How the rest of an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// This many bytes more.
    Length(u64),
    /// Chunked transfer coding, in this state.
    Chunked(Chunked),
    /// Up to the connection's close.
    Close,
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk: this many data bytes more.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines (ignored) up to an empty line; their bytes so far.
    Trailers(usize),
    Done,
}

/// What decoding found in the bytes at hand.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    Data(Bytes),
    /// The body ended.
    End,
    /// More bytes are needed.
    More,
}

impl Framing {
    /// Takes the next piece of body off the front of `buf`.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        match self {
            Framing::Length(0) => Ok(Decoded::End),
            Framing::Length(n) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let take = (*n).min(buf.len() as u64) as usize;
                *n -= take as u64;
                Ok(Decoded::Data(take_front(buf, take)))
            }
            Framing::Close => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let all = buf.len();
                Ok(Decoded::Data(take_front(buf, all)))
            }
            Framing::Chunked(state) => decode_chunked(state, buf),
        }
    }

    /// The body's end is known to come only with the connection's close.
    fn ends_at_close(&self) -> bool {
        matches!(self, Framing::Close)
    }

    /// Whether the body has ended, taking what follows its last data off `buf` when that is
    /// only framing (a chunk's CRLF, the last chunk, trailers). A malformed rest is left for
    /// the next `decode` to report.
    fn ended(&mut self, buf: &mut BytesMut) -> bool {
        match self {
            Framing::Length(n) => *n == 0,
            Framing::Close => false,
            Framing::Chunked(state) => loop {
                match *state {
                    Chunked::Done => return true,
                    Chunked::Data(_) => return false,
                    // More bytes needed, or an error: the look ends.
                    _ => match chunk_framing_step(state, buf) {
                        Ok(true) => {}
                        _ => return false,
                    },
                }
            },
        }
    }
}

/// The front `n` bytes of `buf`, without a copy; an emptied `buf` lets go of its allocation.
fn take_front(buf: &mut BytesMut, n: usize) -> Bytes {
    let out = buf.split_to(n).freeze();
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
    out
}

fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Decoded, WireError> {
    loop {
        match *state {
            Chunked::Data(n) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let take = n.min(buf.len() as u64) as usize;
                *state = if take as u64 == n {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(n - take as u64)
                };
                return Ok(Decoded::Data(take_front(buf, take)));
            }
            Chunked::Done => return Ok(Decoded::End),
            _ => {
                if !chunk_framing_step(state, buf)? {
                    return Ok(Decoded::More);
                }
            }
        }
    }
}

/// One step over a chunked body's framing (a chunk-size line, a chunk's CRLF, a trailer line),
/// never its data; `false` while more bytes are needed.
fn chunk_framing_step(state: &mut Chunked, buf: &mut BytesMut) -> Result<bool, WireError> {
    match *state {
        Chunked::Size => {
            let Some(line) = take_line(buf, MAX_LINE, "chunk-size line too long")? else {
                return Ok(false);
            };
            let size = chunk_size(&line)?;
            *state = if size == 0 {
                Chunked::Trailers(0)
            } else {
                Chunked::Data(size)
            };
        }
        Chunked::DataEnd => {
            if buf.len() < 2 {
                return Ok(false);
            }
            if &buf[..2] != b"\r\n" {
                return Err(WireError::Invalid("chunk data not followed by CRLF"));
            }
            take_front(buf, 2);
            *state = Chunked::Size;
        }
        Chunked::Trailers(seen) => {
            let Some(line) = take_line(buf, MAX_LINE, "trailer line too long")? else {
                return Ok(false);
            };
            if line.is_empty() {
                *state = Chunked::Done;
            } else if seen + line.len() > MAX_TRAILERS {
                return Err(WireError::Invalid("trailers too long"));
            } else {
                *state = Chunked::Trailers(seen + line.len());
            }
        }
        Chunked::Data(_) | Chunked::Done => return Ok(false),
    }
    Ok(true)
}

/// A CRLF-terminated line off the front of `buf` (without its CRLF); `None` until it is all
/// there.
fn take_line(
    buf: &mut BytesMut,
    max: usize,
    too_long: &'static str,
) -> Result<Option<Bytes>, WireError> {
    match memchr::memchr(b'\n', buf) {
        Some(lf) => {
            if lf == 0 || buf[lf - 1] != b'\r' {
                return Err(WireError::Invalid("line not ended by CRLF"));
            }
            if lf > max {
                return Err(WireError::Invalid(too_long));
            }
            let mut line = take_front(buf, lf + 1);
            line.truncate(lf - 1);
            Ok(Some(line))
        }
        None if buf.len() > max => Err(WireError::Invalid(too_long)),
        None => Ok(None),
    }
}

/// A chunk-size line's size: hex digits, then optional whitespace and `;` extensions (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(WireError::Invalid("chunk size is not hex"));
    }
    if digits > 16 {
        return Err(WireError::Invalid("chunk size too large"));
    }
    let after = trim(&line[digits..]);
    if !(after.is_empty() || after[0] == b';') {
        return Err(WireError::Invalid("chunk size is not hex"));
    }
    let mut n: u64 = 0;
    for d in &line[..digits] {
        let v = (*d as char).to_digit(16).unwrap_or(0) as u64;
        n = n
            .checked_mul(16)
            .and_then(|n| n.checked_add(v))
            .ok_or(WireError::Invalid("chunk size too large"))?;
    }
    Ok(n)
}

/// An answer's body read off its connection by whoever polls it; gives the connection back to
/// its pool at the body's end.
pub struct H1Body {
    /// `None` once the body has ended or failed.
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
    pool: Option<Arc<H1Pool>>,
    /// An error held back for one poll (see `fail`).
    failed: Option<WireError>,
}

impl H1Body {
    /// The body of an answer with head `head` on `conn`; an empty body gives `conn` back at
    /// once.
    pub(super) fn new(conn: Conn, head: &Head, pool: Arc<H1Pool>) -> H1Body {
        let mut body = H1Body {
            conn: Some(conn),
            framing: head.framing,
            reusable: head.reusable,
            pool: Some(pool),
            failed: None,
        };
        if body.framing == Framing::Length(0) {
            body.end();
        }
        body
    }

    /// The body was read to its end: the connection goes back to the pool, unless it may not
    /// carry another request or bytes came after the answer.
    fn end(&mut self) {
        self.framing = Framing::Length(0);
        let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) else {
            return;
        };
        if self.reusable && conn.rest.is_empty() {
            H1Pool::put(&pool, conn);
        }
    }

    /// The body failed. The error comes at the next poll, not this one: what was read before
    /// it (often in the same read as the close) is then written to the client first. hyper's
    /// server drops what it has not yet written when a body fails, answer head included, and
    /// the client would see no answer at all instead of a stream cut short.
    fn fail(
        &mut self,
        e: WireError,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        self.conn = None;
        self.framing = Framing::Length(0);
        self.failed = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = WireError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(this.failed.take().map(Err));
            };
            match this.framing.decode(&mut conn.rest) {
                Ok(Decoded::Data(data)) => {
                    // Ended with this data: the connection goes back now. hyper's server stops
                    // polling a body once it has written the length the answer announced, and
                    // drops it: a connection given back only at the next poll would be closed.
                    if this.framing.ended(&mut conn.rest) {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(e) => return this.fail(e, cx),
            }
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if this.framing.ends_at_close() => {
                    this.reusable = false;
                    this.end();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.fail(WireError::BodyCut, cx),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(WireError::Io(e), cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The body's data, and the bytes after its end (left in the buffer or not yet fed).
    fn decode_all(framing: Framing, pieces: &[&[u8]]) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let mut framing = framing;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            buf.extend_from_slice(piece);
            loop {
                match framing.decode(&mut buf)? {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::End => {
                        let mut after = buf.to_vec();
                        after.extend(pieces[i + 1..].concat());
                        return Ok((out, after));
                    }
                    Decoded::More => break,
                }
            }
        }
        Err(WireError::BodyCut)
    }

    fn chunked(chunks: &[&[u8]], ext: &str, trailers: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(format!("{:x}{ext}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("0{ext}\r\n{trailers}\r\n").as_bytes());
        out
    }

    proptest! {
        /// A chunked body decodes to its data however its bytes are split across reads, with
        /// or without extensions and trailers, and nothing after its end is taken.
        #[test]
        fn a_chunked_body_decodes_whatever_the_reads(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..8),
            cuts in prop::collection::vec(0usize..2_000, 0..12),
            ext in prop::sample::select(vec!["", ";a=b", " ;x"]),
            trailers in prop::sample::select(vec!["", "x-t: 1\r\n", "a: b\r\nc: d\r\n"]),
        ) {
            let refs: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
            let mut wire = chunked(&refs, ext, trailers);
            let body_len = wire.len();
            wire.extend_from_slice(b"HTTP/1.1 200");
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.sort();
            cuts.push(wire.len());
            let mut pieces = Vec::new();
            let mut from = 0;
            for c in cuts {
                pieces.push(&wire[from..c]);
                from = c;
            }
            let mut framing = Framing::Chunked(Chunked::Size);
            let mut buf = BytesMut::new();
            let mut data = Vec::new();
            let mut ended_at = None;
            let mut fed = 0;
            'feed: for piece in pieces {
                buf.extend_from_slice(piece);
                fed += piece.len();
                loop {
                    match framing.decode(&mut buf).unwrap() {
                        Decoded::Data(d) => data.extend_from_slice(&d),
                        Decoded::End => { ended_at = Some(fed - buf.len()); break 'feed; }
                        Decoded::More => break,
                    }
                }
            }
            prop_assert_eq!(data, chunks.concat());
            prop_assert_eq!(ended_at, Some(body_len));
        }

        /// A length-framed body takes exactly its length, however the reads split it.
        #[test]
        fn a_length_framed_body_takes_exactly_its_length(
            body in prop::collection::vec(any::<u8>(), 0..2_000),
            cut in 0usize..2_000,
        ) {
            let mut wire = body.clone();
            wire.extend_from_slice(b"next");
            let cut = cut % (wire.len() + 1);
            let (data, after) =
                decode_all(Framing::Length(body.len() as u64), &[&wire[..cut], &wire[cut..]])
                    .unwrap();
            prop_assert_eq!(data, body);
            prop_assert_eq!(after, b"next", "the next answer's bytes stay");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_errors_not_data() {
        for wire in [
            &b"zz\r\nab\r\n0\r\n\r\n"[..],
            b"2\r\nabXY0\r\n\r\n",
            b"2\nab\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"2 x\r\nab\r\n0\r\n\r\n",
        ] {
            let got = decode_all(Framing::Chunked(Chunked::Size), &[wire]);
            assert!(
                matches!(got, Err(WireError::Invalid(_))),
                "{:?}: {got:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long = vec![b'1'; MAX_LINE + 10];
        let got = decode_all(Framing::Chunked(Chunked::Size), &[&long]);
        assert!(matches!(got, Err(WireError::Invalid(_))), "{got:?}");
    }

    fn head(wire: &[u8], method: Method) -> Result<Option<Head>, WireError> {
        let mut buf = BytesMut::from(wire);
        parse_head(&mut buf, &method)
    }

    #[test]
    fn an_answers_framing_and_reuse_follow_its_head() {
        let cases: &[(&[u8], Method, Framing, bool)] = &[
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::POST, Framing::Length(5), true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", Method::POST, Framing::Length(5), true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", Method::POST, Framing::Chunked(Chunked::Size), true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n", Method::POST, Framing::Chunked(Chunked::Size), false),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", Method::POST, Framing::Close, false),
            (b"HTTP/1.1 200 OK\r\n\r\n", Method::POST, Framing::Close, false),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: Close\r\n\r\n", Method::POST, Framing::Length(5), false),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n", Method::POST, Framing::Length(5), false),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n", Method::POST, Framing::Length(5), true),
            (b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n", Method::POST, Framing::Length(0), true),
            (b"HTTP/1.1 304 Not Modified\r\n\r\n", Method::GET, Framing::Length(0), true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD, Framing::Length(0), true),
            (b"HTTP/1.1 101 Switching\r\nupgrade: x\r\n\r\n", Method::GET, Framing::Length(0), false),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nlink: x\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n", Method::POST, Framing::Length(1), true),
        ];
        for (wire, method, framing, reusable) in cases {
            let h = head(wire, method.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(wire)))
                .expect("complete");
            assert_eq!(h.framing, *framing, "{}", String::from_utf8_lossy(wire));
            assert_eq!(h.reusable, *reusable, "{}", String::from_utf8_lossy(wire));
        }
        let h = head(
            b"HTTP/1.1 429 Too Many\r\nx-a: 1\r\nX-A: 2\r\nretry-after: 3\r\n\r\n",
            Method::POST,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(h.version, Version::HTTP_11);
        let all: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(h.headers["retry-after"], "3");
    }

    #[test]
    fn incomplete_heads_wait_and_broken_ones_are_errors() {
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-len", Method::GET)
            .unwrap()
            .is_none());
        assert!(head(b"HTTP/1.1 100 Continue\r\n\r\n", Method::GET)
            .unwrap()
            .is_none());
        for wire in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"SMTP ready\r\n\r\n",
        ] {
            assert!(
                matches!(head(wire, Method::GET), Err(WireError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..101 {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(
            head(&many, Method::GET),
            Err(WireError::Invalid(_))
        ));
    }

    #[test]
    fn a_request_is_written_with_its_length_and_without_client_framing() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("up.example"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.append("x-b", HeaderValue::from_static("1"));
        headers.append("x-b", HeaderValue::from_static("2"));
        let body = Bytes::from_static(b"{\"a\":1}");
        let (wire, after) =
            encode_request(&Method::POST, "/v1/chat/completions?x=1", &headers, body);
        assert!(after.is_empty());
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: up.example\r\nx-b: 1\r\nx-b: 2\r\n\
             content-length: 7\r\n\r\n{\"a\":1}"
        );
        let (wire, after) =
            encode_request(&Method::GET, "/v1/models", &HeaderMap::new(), Bytes::new());
        assert_eq!(wire, b"GET /v1/models HTTP/1.1\r\n\r\n");
        assert!(after.is_empty());
        let big = Bytes::from(vec![b'x'; COPY_BODY_UP_TO]);
        let (wire, after) = encode_request(&Method::POST, "/", &HeaderMap::new(), big.clone());
        assert_eq!(
            after, big,
            "a long body is written after the head, not copied"
        );
        assert_eq!(
            wire,
            format!("POST / HTTP/1.1\r\ncontent-length: {COPY_BODY_UP_TO}\r\n\r\n").as_bytes()
        );
    }
}
