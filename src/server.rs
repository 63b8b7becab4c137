//! Serving: an accept loop over an already-bound listener (tests bind port 0) with a cap on open
//! connections, hyper's HTTP/1 header-read timeout and header size limit (slowloris, oversized
//! headers), HTTP/2 (h2c, unless turned off) with keep-alive pings, per-connection first-request
//! and idle deadlines (`conn`), and graceful shutdown: on the shutdown signal stop accepting,
//! let in-flight requests and streams finish within the grace period, then close the rest.

mod conn;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{IntCounter, IntGauge};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use conn::Guarded;

/// The listen backlog of every listener keygate binds: connections the kernel completes before
/// keygate accepts them. tokio's `TcpListener::bind` asks for 128 (mio's, as the standard
/// library's), and a burst of new connections past that is dropped at the SYN, so each of
/// those clients waits for its retransmission (1 s) before it is even accepted: 1,000 streams
/// whose connections opened in bursts showed +0.9 s at the 99th percentile of their time to
/// first byte (BENCHMARKS.md, "The listen backlog"). nginx's default is 511; the kernel lowers
/// this to `net.core.somaxconn` (4,096 by default since Linux 5.4; README.md, "Deploy").
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` for serving as `TcpListener::bind` does (address reuse, so a restart does not
/// wait for the old socket's TIME_WAIT), with [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A request's answer, as a listener's handlers give it.
pub type Served = Pin<Box<dyn Future<Output = axum::response::Response> + Send>>;

/// What one listener serves: axum's router and, on the main listener, a handler that takes the
/// requests under one path prefix without it (`routes::public`: the proxy). Routing a proxied
/// request through axum cost about 4,900 instructions: the route table's match, decoding the
/// path parameter, the method router, the request's extensions and a second boxed future
/// (BENCHMARKS.md, "The proxy's requests skip the router").
#[derive(Clone)]
pub struct Routes {
    pub router: Router,
    pub direct: Option<Direct>,
}

impl From<Router> for Routes {
    fn from(router: Router) -> Routes {
        Routes {
            router,
            direct: None,
        }
    }
}

impl Routes {
    /// The handler that takes this request: `direct` for a path of at least one character
    /// after its prefix (what a route `<prefix>{*path}` matches), for every method but HEAD and
    /// CONNECT, whose answers the router changes (it empties the body of an answer to HEAD and
    /// checks the answer to CONNECT); `None`: the router.
    fn direct_for(&self, method: &http::Method, path: &str) -> Option<&Direct> {
        let direct = self.direct.as_ref()?;
        let under = path.len() > direct.prefix.len() && path.starts_with(direct.prefix);
        (under && method != http::Method::HEAD && method != http::Method::CONNECT).then_some(direct)
    }
}

/// A handler for the requests under `prefix`, given the peer's address.
#[derive(Clone)]
pub struct Direct {
    prefix: &'static str,
    handler: Arc<dyn Fn(SocketAddr, axum::extract::Request) -> Served + Send + Sync>,
}

impl Direct {
    pub fn new(
        prefix: &'static str,
        handler: impl Fn(SocketAddr, axum::extract::Request) -> Served + Send + Sync + 'static,
    ) -> Direct {
        Direct {
            prefix,
            handler: Arc::new(handler),
        }
    }

    fn call(&self, remote: SocketAddr, req: axum::extract::Request) -> Served {
        (self.handler)(remote, req)
    }
}

/// Limits applied to every connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// For each request head (HTTP/1.1), and for a new connection's first request (both).
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub grace: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Serve h2c next to HTTP/1.1.
    pub http2: bool,
}

/// HTTP/2 keep-alive: a ping this often while the connection is open, and the connection closed
/// when one goes unanswered this long (a peer that vanished without a FIN).
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// At most one log line per this period for refused connections and accept errors.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// The answer a connection over the cap gets before it is closed (HTTP/1.1 clients read it).
const OVER_CAP_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\nretry-after: 1\r\ncontent-length: 146\r\n\r\n\
{\"error\":{\"message\":\"keygate is at its connection limit; retry shortly.\",\"type\":\"service_unavailable\",\"code\":\"too_many_connections\",\"param\":null}}";

/// How many connections a listener holds at once, and the metrics that count them.
#[derive(Clone)]
pub struct ConnCap {
    permits: Arc<Semaphore>,
    max: usize,
    metrics: Option<(IntGauge, IntCounter)>,
    refusals: Arc<RateLimitedLog>,
}

impl ConnCap {
    /// A cap counted by no metric (the metrics and admin listeners).
    pub fn new(max: usize) -> ConnCap {
        ConnCap {
            permits: Arc::new(Semaphore::new(max)),
            max,
            metrics: None,
            refusals: Arc::new(RateLimitedLog::default()),
        }
    }

    /// A cap that keeps `open` and `rejected` up to date.
    pub fn counted(max: usize, open: IntGauge, rejected: IntCounter) -> ConnCap {
        ConnCap {
            metrics: Some((open, rejected)),
            ..ConnCap::new(max)
        }
    }

    /// A slot for one more connection, or `None` at the cap (counted and logged).
    fn admit(&self, remote: SocketAddr) -> Option<ConnSlot> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let open = self.metrics.as_ref().map(|(open, _)| open.clone());
                if let Some(open) = &open {
                    open.inc();
                }
                Some(ConnSlot {
                    _permit: permit,
                    open,
                })
            }
            Err(_) => {
                if let Some((_, rejected)) = &self.metrics {
                    rejected.inc();
                }
                let max = self.max;
                self.refusals.log(|suppressed| {
                    tracing::warn!(%remote, max_connections = max, refused_since_last_line = suppressed,
                        "connection refused: server.max_connections reached");
                });
                None
            }
        }
    }
}

/// One admitted connection; frees its place (and the gauge) when dropped.
struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    open: Option<IntGauge>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.dec();
        }
    }
}

/// Logs at most once per [`LOG_EVERY`], telling how many events went unlogged in between.
#[derive(Default)]
struct RateLimitedLog {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    fn log(&self, line: impl FnOnce(u64)) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        line(self.suppressed.swap(0, Ordering::Relaxed));
    }
}

fn http_builders(limits: &ConnLimits) -> conn::Builders {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    conn::Builders::new(builder, limits.http2)
}

/// Serves `routes` on `listener` until `shutdown` resolves, then drains for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    routes: impl Into<Routes>,
    limits: ConnLimits,
    cap: ConnCap,
    shutdown: impl Future<Output = ()>,
) {
    let routes = routes.into();
    let builder = Arc::new(http_builders(&limits));
    let (draining, hard_stop) = (CancellationToken::new(), CancellationToken::new());
    let connections = TaskTracker::new();
    let accept_errors = RateLimitedLog::default();
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors (EMFILE/ENFILE) or a network error: wait, longer
                    // each time, rather than spin on an accept that keeps failing.
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    accept_errors.log(|suppressed| {
                        tracing::warn!(error = %e, failed_since_last_line = suppressed, "accept failed");
                    });
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            },
        };
        backoff = Duration::ZERO;
        let Some(slot) = cap.admit(remote) else {
            refuse(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (routes, builder) = (routes.clone(), builder.clone());
        let (draining, hard_stop) = (draining.clone(), hard_stop.clone());
        connections.spawn(async move {
            conn::serve_connection(stream, remote, routes, builder, limits, draining, hard_stop)
                .await;
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!(
        grace_s = limits.grace.as_secs(),
        "shutting down: draining in-flight requests"
    );
    draining.cancel();
    connections.close();
    if tokio::time::timeout(limits.grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
        hard_stop.cancel();
    }
}

/// Closes a connection over the cap, with a 503 for an HTTP/1.1 client that reads it (written
/// only if the socket takes it at once: a refused connection never waits).
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(OVER_CAP_ANSWER);
    drop(stream);
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::OVER_CAP_ANSWER;

    #[test]
    fn the_over_cap_answer_is_well_formed_http_with_an_openai_error() {
        let text = std::str::from_utf8(OVER_CAP_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length = format!("content-length: {}", body.len());
        assert!(head.contains(&length), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "too_many_connections");
    }
}
