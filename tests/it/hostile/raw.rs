//! Raw HTTP/1.1 over TCP, for what a well-behaved client library refuses to send.

use super::*;

#[derive(Debug)]
pub(crate) struct RawReply {
    pub status: Option<u16>,
    pub head: String,
    pub body: String,
    /// The server closed the connection (EOF or reset) before `wait` passed.
    pub closed: bool,
    pub elapsed: Duration,
}

impl RawReply {
    /// A 4xx answer, or the connection closed without any answer.
    pub fn refused(&self) -> bool {
        match self.status {
            Some(s) => (400..500).contains(&s),
            None => self.closed,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `buf` holds one whole response (by Content-Length or the last chunk).
fn complete(buf: &[u8]) -> bool {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    if let Some(cl) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= cl;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

pub(super) async fn read_reply(s: &mut TcpStream, started: Instant, wait: Duration) -> RawReply {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = Vec::new();
    let mut closed = false;
    while !complete(&buf) {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let (head, body) = match find(&buf, b"\r\n\r\n") {
        Some(end) => (&buf[..end], &buf[end + 4..]),
        None => (&buf[..], &[][..]),
    };
    let head = String::from_utf8_lossy(head).into_owned();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    RawReply {
        status,
        head,
        body: String::from_utf8_lossy(body).into_owned(),
        closed,
        elapsed: started.elapsed(),
    }
}

/// Sends `request` as is and reads one response (or the close), waiting at most `wait`.
pub(crate) async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> RawReply {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading everything: keep what it said.
    let _ = s.write_all(request).await;
    read_reply(&mut s, started, wait).await
}

/// Sends `request` and reads everything until the server closes or `wait` passes: every
/// answer the server gave on the connection, and whether it closed it.
pub(super) async fn raw_all(addr: SocketAddr, request: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (String::from_utf8_lossy(&buf).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&buf).into_owned(), true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A request with the client token and a JSON body; `extra` is raw header lines.
pub(super) fn raw_post(target: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {target} HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub(super) fn chat_body() -> String {
    chat("m", false).to_string()
}

pub(super) const WAIT: Duration = Duration::from_secs(5);
