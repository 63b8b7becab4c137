//! keygate's own pool of HTTP/1.1 upstream connections, for the pools whose upstream speaks
//! only HTTP/1.1 (a plaintext `base_url`, or `upstream_http2 = "never"`): hyper's connection
//! API (`hyper::client::conn::http1`) over the pool's connector, idle connections in a vector.
//! hyper_util's pooled client cost a request about 10,900 instructions more for the same work:
//! a pool key hashed with SipHash twice, a checkout future, a task spawned to wait until the
//! connection is ready again, and the futures moved in between (BENCHMARKS.md, "The upstream
//! connection pool").
//!
//! - A request takes the idle connection returned last (the one most likely still open, its
//!   buffers still warm), else connects. The connection comes back when the request's
//!   [`Lease`](super::Lease) is dropped, which is when its answer's body has ended or was
//!   dropped; hyper closes a connection whose answer was not read to its end, and such a
//!   connection fails `ready` at its next checkout and is dropped then.
//! - At most `idle_connections` wait; one more is closed when it comes back. Each waits at
//!   most `idle_timeout_ms`: a checkout drops what expired, and a reaper task closes the rest
//!   (a replica closes its idle connections after a burst, not at the next request).
//! - A request hyper could not start on a pooled connection (the upstream closed it as it was
//!   taken) is sent again on a new connection, as hyper_util's client does: hyper hands such a
//!   request back untouched.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{PathAndQuery, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use tokio::time::Instant;
use tower::Service;

use super::{Connector, UpstreamError, H1_MAX_BUF};

type Conn = SendRequest<Full<Bytes>>;

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

/// A request's connection, given back to its pool when dropped.
pub(super) struct Held {
    conn: Option<Conn>,
    pool: Arc<H1Pool>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            H1Pool::put(&self.pool, conn);
        }
    }
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
    /// response with the connection it holds.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: http::Request<Full<Bytes>>,
    ) -> Result<(http::Response<Incoming>, Held), UpstreamError> {
        let target = req.uri().clone();
        // HTTP/1.1 to an origin: the request line carries the path, `Host` the authority.
        if !req.headers().contains_key(http::header::HOST) {
            let host = self
                .host_for(&target)
                .ok_or_else(|| UpstreamError::Connect("the upstream URL names no host".into()))?;
            req.headers_mut().insert(http::header::HOST, host);
        }
        *req.uri_mut() = Uri::from(
            target
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        if let Some(mut conn) = self.take_idle().await {
            match conn.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.held(conn))),
                Err(mut e) => match e.take_message() {
                    // Not started: the upstream closed the connection as it was taken.
                    Some(back) => req = back,
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        let mut conn = self.connect(&target).await?;
        let resp = conn.send_request(req).await.map_err(UpstreamError::Http)?;
        Ok((resp, self.held(conn)))
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

    fn held(self: &Arc<Self>, conn: Conn) -> Held {
        Held {
            conn: Some(conn),
            pool: self.clone(),
        }
    }

    /// The newest idle connection that is still open and ready for a request; expired ones
    /// are closed on the way.
    async fn take_idle(&self) -> Option<Conn> {
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
            if !conn.is_closed() && conn.ready().await.is_ok() {
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
        let (conn, task) = Builder::new()
            .max_buf_size(H1_MAX_BUF)
            .handshake(io)
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = task.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(conn)
    }

    /// A connection back from a request: kept (up to the cap) unless it is closed.
    fn put(pool: &Arc<H1Pool>, conn: Conn) {
        if conn.is_closed() || pool.max_idle == 0 {
            return;
        }
        let mut idle = pool.lock();
        if idle.conns.len() >= pool.max_idle {
            return; // dropped after the lock: hyper closes it
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

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/1.1 upstream on loopback answering `200 ok` to every request; with `close`, it
    /// closes a connection after its first answer once `close` is notified. Answers its
    /// address and the count of connections it accepted.
    async fn upstream(
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
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
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

    fn pool(addr: std::net::SocketAddr, max_idle: usize) -> Arc<H1Pool> {
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

    fn get(addr: std::net::SocketAddr) -> http::Request<Full<Bytes>> {
        let mut req = http::Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = format!("http://{addr}/v1/models").parse().unwrap();
        req
    }

    /// Sends one request and reads its answer to the end; answers its connection.
    async fn exchange(pool: &Arc<H1Pool>, addr: std::net::SocketAddr) -> Held {
        let (resp, held) = pool.send(get(addr)).await.expect("an answer");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        held
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
    async fn a_connection_comes_back_with_its_lease_and_carries_the_next_request() {
        let (addr, accepted) = upstream(None).await;
        let pool = pool(addr, 4);
        for _ in 0..3 {
            drop(exchange(&pool, addr).await);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.lock().conns.len(), 1);
    }

    #[tokio::test]
    async fn connections_back_beyond_the_cap_are_closed() {
        let (addr, accepted) = upstream(None).await;
        let pool = pool(addr, 2);
        let held = vec![
            exchange(&pool, addr).await,
            exchange(&pool, addr).await,
            exchange(&pool, addr).await,
        ];
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "one connection per held lease"
        );
        drop(held);
        assert_eq!(pool.lock().conns.len(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_costs_no_failed_request() {
        let close = Arc::new(tokio::sync::Notify::new());
        let (addr, accepted) = upstream(Some(close.clone())).await;
        let pool = pool(addr, 4);
        drop(exchange(&pool, addr).await);
        assert_eq!(pool.lock().conns.len(), 1, "back in the pool, open");
        close.notify_one();
        // Until hyper has read the upstream's close of the idle connection (a request racing
        // the close could already be on the wire, which no client can send again).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pool.lock().conns.iter().all(|(c, _)| c.is_closed()) {
            assert!(Instant::now() < deadline, "hyper never saw the close");
            tokio::task::yield_now().await;
        }
        drop(exchange(&pool, addr).await);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
