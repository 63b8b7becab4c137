//! keygate's own pool of HTTP/1.1 upstream connections, for the pools whose upstream speaks
//! only HTTP/1.1 (a plaintext `base_url`, or `upstream_http2 = "never"`): connections from the
//! pool's connector, spoken to by `wire.rs` (no task or buffer of their own), idle ones in a
//! vector. hyper_util's pooled client cost a request about 10,900 instructions more for the same
//! work: a pool key hashed with SipHash twice, a checkout future, a task spawned to wait until
//! the connection is ready again, and the futures moved in between (BENCHMARKS.md, "The
//! upstream connection pool").
//!
//! - A request takes the idle connection returned last (the one most likely still open), else
//!   connects. The connection comes back when its answer's body has been read to its end
//!   (`wire::H1Body`); one whose answer was not read to its end is closed.
//! - At most `idle_connections` wait; one more is closed when it comes back. Each waits at
//!   most `idle_timeout_ms`: a checkout drops what expired, and a reaper task closes the rest
//!   (a replica closes its idle connections after a burst, not at the next request).
//! - An idle connection is checked before it is taken: one the upstream closed (or sent bytes
//!   on) is closed and the next one tried. A request whose write fails on a pooled connection
//!   (the upstream closed it as it was taken) is sent again on a new connection: it did not
//!   reach the upstream whole.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Uri;
use http::Method;
use tokio::time::Instant;
use tower::Service;

use super::wire::{encode_request, Conn, H1Body, WireError};
use super::{Connector, UpstreamError};

/// One pool's idle HTTP/1.1 connections.
pub(super) struct H1Pool {
    connector: Connector,
    /// The pool's `base_url`, and the `Host` its requests carry (built once: every request of
    /// the pool goes to that scheme, host and port, `proxy/forward.rs`).
    base: Uri,
    host: Option<http::HeaderValue>,
    idle: Mutex<Idle>,
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Default)]
struct Idle {
    /// Oldest first; each with the moment it came back.
    conns: Vec<(Conn, Instant)>,
    /// A reaper task runs (started with the first connection that came back).
    reaping: bool,
}

impl H1Pool {
    pub(super) fn new(
        connector: Connector,
        base_url: &str,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> H1Pool {
        let base: Uri = base_url.parse().unwrap_or_default();
        H1Pool {
            connector,
            host: host_header(&base),
            base,
            idle: Mutex::new(Idle::default()),
            max_idle,
            idle_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `req` (its URI absolute: scheme and authority name the upstream) and answers the
    /// response; its body holds the connection until it has been read.
    pub(super) async fn send(
        self: &Arc<Self>,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<H1Body>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        // HTTP/1.1 to an origin: the request line carries the path, `Host` the authority.
        if !parts.headers.contains_key(http::header::HOST) {
            let host = self
                .host_for(&parts.uri)
                .ok_or_else(|| UpstreamError::Connect("the upstream URL names no host".into()))?;
            parts.headers.insert(http::header::HOST, host);
        }
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let (head, after) = encode_request(&parts.method, target, &parts.headers, body);
        if let Some(mut conn) = self.take_idle() {
            // A failed write did not reach the upstream whole: a new connection carries it.
            if conn.write(&head, &after).await.is_ok() {
                return self.answer(conn, &parts.method).await;
            }
        }
        let mut conn = self.connect(&parts.uri).await?;
        conn.write(&head, &after)
            .await
            .map_err(|e| UpstreamError::Wire(WireError::Io(e)))?;
        self.answer(conn, &parts.method).await
    }

    async fn answer(
        self: &Arc<Self>,
        mut conn: Conn,
        method: &Method,
    ) -> Result<http::Response<H1Body>, UpstreamError> {
        let head = conn.read_head(method).await.map_err(UpstreamError::Wire)?;
        let body = H1Body::new(conn, &head, self.clone());
        let mut resp = http::Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }

    /// `Host` for a request to `target`: the one built once when `target` has the pool's origin
    /// (compared whole: `host()` and `port()` each parse the authority, about 1,300
    /// instructions a request for the four), else built for it.
    fn host_for(&self, target: &Uri) -> Option<http::HeaderValue> {
        match &self.host {
            Some(h)
                if self.base.scheme() == target.scheme()
                    && self.base.authority() == target.authority() =>
            {
                Some(h.clone())
            }
            _ => host_header(target),
        }
    }

    /// The newest idle connection that is still open and quiet; expired and closed ones are
    /// closed on the way.
    fn take_idle(&self) -> Option<Conn> {
        loop {
            let mut conn = {
                let mut idle = self.lock();
                let (conn, since) = idle.conns.pop()?;
                if Instant::now().saturating_duration_since(since) >= self.idle_timeout {
                    // Every one below it came back earlier: expired too.
                    idle.conns.clear();
                    return None;
                }
                conn
            };
            if conn.is_usable() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self, target: &Uri) -> Result<Conn, UpstreamError> {
        let io = self
            .connector
            .clone()
            .call(target.clone())
            .await
            .map_err(UpstreamError::Connect)?;
        Ok(Conn::new(io))
    }

    /// A connection whose answer was read to its end: kept (up to the cap).
    pub(super) fn put(pool: &Arc<H1Pool>, conn: Conn) {
        if pool.max_idle == 0 {
            return;
        }
        let mut idle = pool.lock();
        if idle.conns.len() >= pool.max_idle {
            return; // dropped after the lock: closed
        }
        idle.conns.push((conn, Instant::now()));
        if !idle.reaping {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                idle.reaping = true;
                rt.spawn(reap(Arc::downgrade(pool), pool.idle_timeout));
            }
        }
    }
}

/// `Host` for a request to `uri`: its host, and its port unless the scheme's default (as
/// hyper_util's client writes it).
fn host_header(uri: &Uri) -> Option<http::HeaderValue> {
    let host = uri.host()?;
    let default = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let value = match uri.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_string(),
    };
    http::HeaderValue::from_str(&value).ok()
}

/// Closes the connections idle longer than `timeout`, about every `timeout`, until the pool
/// is gone (its config was replaced).
async fn reap(pool: Weak<H1Pool>, timeout: Duration) {
    let every = timeout.max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let expired: Vec<(Conn, Instant)> = {
            let mut idle = pool.lock();
            let now = Instant::now();
            let keep = idle
                .conns
                .iter()
                .position(|(_, since)| now.saturating_duration_since(*since) < timeout)
                .unwrap_or(idle.conns.len());
            idle.conns.drain(..keep).collect()
        };
        drop(expired);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body::Body as _;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/1.1 upstream on loopback writing `answer` to every request; with `close`, it
    /// closes a connection after its first answer once `close` is notified. Answers its
    /// address and the count of connections it accepted.
    async fn upstream_with(
        answer: &'static [u8],
        close: Option<Arc<tokio::sync::Notify>>,
    ) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let close = close.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        // The requests carry no body: a head ends each one.
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        seen.drain(..end);
                        if sock.write_all(answer).await.is_err() {
                            return;
                        }
                        if let Some(close) = &close {
                            close.notified().await;
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    async fn upstream(
        close: Option<Arc<tokio::sync::Notify>>,
    ) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        upstream_with(OK, close).await
    }

    fn pool_of(addr: std::net::SocketAddr, max_idle: usize) -> Arc<H1Pool> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(hyper_util::client::legacy::connect::HttpConnector::new());
        let base = format!("http://{addr}/v1");
        Arc::new(H1Pool::new(
            connector,
            &base,
            max_idle,
            Duration::from_secs(600),
        ))
    }

    fn get(addr: std::net::SocketAddr) -> http::Request<Bytes> {
        let mut req = http::Request::new(Bytes::new());
        *req.uri_mut() = format!("http://{addr}/v1/models").parse().unwrap();
        req
    }

    /// Sends one request and answers the response, its body not read yet.
    async fn ask(pool: &Arc<H1Pool>, addr: std::net::SocketAddr) -> http::Response<H1Body> {
        let resp = pool.send(get(addr)).await.expect("an answer");
        assert_eq!(resp.status(), 200);
        resp
    }

    async fn read(resp: http::Response<H1Body>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[test]
    fn the_host_sent_is_the_targets_whatever_its_origin() {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(hyper_util::client::legacy::connect::HttpConnector::new());
        let bases = [
            "http://127.0.0.1:8080/v1",
            "https://api.example.com/v1",
            "https://API.Example.com:443/v1",
            "http://[::1]:9000/v1",
            "http://user@h.example:81/v1",
        ];
        let targets = [
            "http://127.0.0.1:8080/v1/chat/completions",
            "http://127.0.0.1:8081/v1/x",
            "https://127.0.0.1:8080/v1/x",
            "https://api.example.com/v1/x?a=1",
            "https://api.example.com:443/v1/x",
            "http://api.example.com:443/v1/x",
            "http://api.example.com/v1/x",
            "https://API.EXAMPLE.COM/v1/x",
            "https://api.example.com:8443/v1/x",
            "http://[::1]:9000/v1/x",
            "http://[::1]/v1/x",
            "http://h.example:81/v1/x",
            "http://other@h.example:81/v1/x",
        ];
        for base in bases {
            let pool = H1Pool::new(connector.clone(), base, 1, Duration::from_secs(1));
            for target in targets {
                let uri: Uri = target.parse().unwrap();
                let got = pool
                    .host_for(&uri)
                    .map(|h| h.to_str().unwrap().to_ascii_lowercase());
                let want = host_header(&uri).map(|h| h.to_str().unwrap().to_ascii_lowercase());
                assert_eq!(got, want, "base {base}, target {target}");
            }
        }
    }

    #[tokio::test]
    async fn a_connection_comes_back_when_its_answer_is_read_and_carries_the_next_request() {
        let (addr, accepted) = upstream(None).await;
        let pool = pool_of(addr, 4);
        for _ in 0..3 {
            let resp = ask(&pool, addr).await;
            assert_eq!(pool.lock().conns.len(), 0, "held by the unread body");
            assert_eq!(&read(resp).await[..], b"ok");
            assert_eq!(pool.lock().conns.len(), 1, "back at the body's end");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// hyper's server stops polling a body once it has written the length the answer
    /// announced: the connection must be back by then, not at a poll that never comes.
    #[tokio::test]
    async fn a_connection_comes_back_with_its_answers_last_data_not_a_poll_later() {
        let chunked: &[u8] =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        for answer in [OK, chunked] {
            let (addr, accepted) = upstream_with(answer, None).await;
            let pool = pool_of(addr, 4);
            for _ in 0..2 {
                let mut body = ask(&pool, addr).await.into_body();
                let frame = body.frame().await.expect("a frame").expect("data");
                assert_eq!(&frame.into_data().unwrap()[..], b"ok");
                assert!(body.is_end_stream());
                assert_eq!(pool.lock().conns.len(), 1, "back with the last data");
                drop(body);
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn connections_back_beyond_the_cap_are_closed() {
        let (addr, accepted) = upstream(None).await;
        let pool = pool_of(addr, 2);
        let held = vec![
            ask(&pool, addr).await,
            ask(&pool, addr).await,
            ask(&pool, addr).await,
        ];
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "one connection per body being read"
        );
        for resp in held {
            assert_eq!(&read(resp).await[..], b"ok");
        }
        assert_eq!(pool.lock().conns.len(), 2);
    }

    #[tokio::test]
    async fn an_answer_not_read_to_its_end_closes_its_connection() {
        let (addr, accepted) = upstream(None).await;
        let pool = pool_of(addr, 4);
        drop(ask(&pool, addr).await);
        assert_eq!(pool.lock().conns.len(), 0);
        assert_eq!(&read(ask(&pool, addr).await).await[..], b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_costs_no_failed_request() {
        let close = Arc::new(tokio::sync::Notify::new());
        let (addr, accepted) = upstream(Some(close.clone())).await;
        let pool = pool_of(addr, 4);
        assert_eq!(&read(ask(&pool, addr).await).await[..], b"ok");
        assert_eq!(pool.lock().conns.len(), 1, "back in the pool, open");
        close.notify_one();
        // Until the upstream's close has reached the idle connection (a request racing the
        // close could already be on the wire, which no client can send again).
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.lock().conns.iter_mut().all(|(c, _)| c.is_usable()) {
            assert!(Instant::now() < deadline, "the close never arrived");
            tokio::task::yield_now().await;
        }
        assert_eq!(&read(ask(&pool, addr).await).await[..], b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn answers_framed_by_chunks_or_by_the_close_arrive_whole() {
        // Chunked with an extension and a trailer: the connection carries the next request.
        let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n";
        let (addr, accepted) = upstream_with(chunked, None).await;
        let pool = pool_of(addr, 4);
        for _ in 0..2 {
            assert_eq!(&read(ask(&pool, addr).await).await[..], b"hello world");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Neither Content-Length nor chunked: the body ends at the close, which ends the
        // connection.
        let close = Arc::new(tokio::sync::Notify::new());
        let (addr, _) = upstream_with(
            b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
            Some(close.clone()),
        )
        .await;
        let pool = pool_of(addr, 4);
        let resp = ask(&pool, addr).await;
        close.notify_one();
        assert_eq!(&read(resp).await[..], b"until the close");
        assert_eq!(pool.lock().conns.len(), 0);
        // `Connection: close`: read whole, then closed, not pooled, although this upstream
        // would keep it open: the next request takes a new connection.
        let (addr, accepted) = upstream_with(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            None,
        )
        .await;
        let pool = pool_of(addr, 4);
        for _ in 0..2 {
            assert_eq!(&read(ask(&pool, addr).await).await[..], b"ok");
            assert_eq!(pool.lock().conns.len(), 0);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_cut_by_the_close_is_an_error_not_an_end() {
        let close = Arc::new(tokio::sync::Notify::new());
        let (addr, _) = upstream_with(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            Some(close.clone()),
        )
        .await;
        let pool = pool_of(addr, 4);
        let resp = ask(&pool, addr).await;
        close.notify_one();
        let got = resp.into_body().collect().await;
        assert!(matches!(got, Err(WireError::BodyCut)), "{:?}", got.err());
        assert_eq!(pool.lock().conns.len(), 0);
    }

    #[tokio::test]
    async fn an_upstream_that_closes_without_answering_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
            }
        });
        let pool = pool_of(addr, 4);
        let got = pool.send(get(addr)).await;
        assert!(
            matches!(got, Err(UpstreamError::Wire(WireError::ClosedBeforeAnswer))),
            "{:?}",
            got.err()
        );
    }
}
