//! One connection's life: hyper serves it while a watchdog closes it when it has had no request
//! in flight for too long. A new connection gets `header_read_timeout` for its first request
//! (this covers an HTTP/2 client that sends only its preface, or never finishes its HEADERS:
//! hyper itself has no deadline there); afterwards `idle_timeout` applies between requests,
//! for HTTP/1.1 keep-alive and HTTP/2 alike. A request counts as in flight from the moment
//! hyper hands it over until its response body has ended or been dropped.
//!
//! With h2c on, the connection's first bytes are peeked (not read) to choose HTTP/1.1 or
//! HTTP/2 before hyper starts: hyper_util's own detection reads the first 24 bytes apart and
//! hands them back to hyper's HTTP/1.1 reader as a first read of their own, after which that
//! reader's buffer grows from 8 to 16 KiB for the rest of the request; that was 8 KiB of every
//! open stream from an HTTP/1.1 client (BENCHMARKS.md, "Memory per open stream").

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{ConnLimits, Routes};

/// How long an idle connection told to close (HTTP/2 GOAWAY) may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What an HTTP/2 client sends first (RFC 9113 section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The builders connections are served with, all configured alike.
pub(super) struct Builders {
    /// HTTP/1.1 only; the only one when h2c is off.
    http1: auto::Builder<TokioExecutor>,
    /// HTTP/2 only, for a client whose first bytes are the preface; none when h2c is off.
    http2: Option<auto::Builder<TokioExecutor>>,
    /// Reads the first bytes itself to decide: for a client whose preface has only partly
    /// arrived.
    detect: auto::Builder<TokioExecutor>,
}

impl Builders {
    pub fn new(builder: auto::Builder<TokioExecutor>, http2: bool) -> Builders {
        Builders {
            http1: builder.clone().http1_only(),
            http2: http2.then(|| builder.clone().http2_only()),
            detect: builder,
        }
    }
}

/// The protocol a connection's first bytes show.
#[derive(Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// The start of the HTTP/2 preface, not all of it yet.
    Unsure,
}

/// `first`: what has arrived so far (empty: the client closed, which HTTP/1.1 handles).
fn protocol_of(first: &[u8]) -> Protocol {
    let n = first.len().min(H2_PREFACE.len());
    if n == 0 || first[..n] != H2_PREFACE[..n] {
        Protocol::Http1
    } else if n == H2_PREFACE.len() {
        Protocol::Http2
    } else {
        Protocol::Unsure
    }
}

/// Waits for the connection's first bytes and peeks at them (they stay in the socket for hyper).
async fn first_bytes(stream: &TcpStream) -> Protocol {
    let mut buf = [0u8; H2_PREFACE.len()];
    match stream.peek(&mut buf).await {
        Ok(n) => protocol_of(&buf[..n]),
        // hyper meets the same error on its first read and ends the connection.
        Err(_) => Protocol::Http1,
    }
}

/// What the watchdog knows of a connection's requests.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Requests seen so far (the first-request deadline applies while it is 0).
    requests: AtomicU64,
    /// Milliseconds after `opened` when the last request ended.
    idle_since_ms: AtomicU64,
    /// Wakes the watchdog when the first request begins (the header-read deadline no longer
    /// applies). Later requests do not wake it: it finds out when its timer fires (see
    /// `serve_connection`), which keeps two task wake-ups and a timer re-registration off every
    /// request.
    first_request: Notify,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            first_request: Notify::new(),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        let before = self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before == 0 {
            self.first_request.notify_one();
        }
        InFlight(self.clone())
    }

    /// When the connection is to be closed if nothing changes; `None` while a request runs.
    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.requests.load(Ordering::Relaxed) == 0 {
            return Some(self.opened + limits.header_read_timeout);
        }
        let idle_since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        Some(self.opened + idle_since + limits.idle_timeout)
    }
}

/// One request in flight; its drop (the response body ended, or the request was abandoned)
/// starts the idle clock.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let since = self.0.opened.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(since, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds a guard until it has been sent or dropped.
pub struct Guarded<G> {
    inner: Body,
    _guard: G,
}

impl<G: Send + Unpin + 'static> Guarded<G> {
    pub fn wrap(inner: Body, guard: G) -> Body {
        Body::new(Guarded {
            inner,
            _guard: guard,
        })
    }
}

impl<G: Unpin> hyper::body::Body for Guarded<G> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Where a connection is in being closed.
#[derive(Clone, Copy)]
enum Closing {
    No,
    /// The server is shutting down: in-flight requests finish within the grace period.
    Draining,
    /// Idle, told to close (HTTP/2: GOAWAY); dropped at this instant if it has not closed and
    /// no request came in meanwhile.
    Idle(Instant),
}

/// Serves one accepted connection until it ends, idles out, or `hard_stop` fires; `shutdown`
/// asks it to finish its requests and close.
pub(super) async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    routes: Routes,
    builders: Arc<Builders>,
    limits: ConnLimits,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) {
    let activity = Activity::new();
    let builder = match &builders.http2 {
        None => &builders.http1,
        Some(http2) => {
            // Before any request: the first-request deadline and a shutdown end the wait.
            let first_request_by = activity.opened + limits.header_read_timeout;
            let protocol = tokio::select! {
                p = first_bytes(&stream) => p,
                _ = shutdown.cancelled() => return,
                _ = hard_stop.cancelled() => return,
                _ = tokio::time::sleep_until(first_request_by) => {
                    tracing::debug!(%remote, "connection closed: no request within the header timeout");
                    return;
                }
            };
            match protocol {
                Protocol::Http1 => &builders.http1,
                Protocol::Http2 => http2,
                Protocol::Unsure => &builders.detect,
            }
        }
    };
    let svc = TowerToHyperService::new(tracked_service(routes, remote, activity.clone()));
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut closing = Closing::No;
    // One timer for the connection's life, reset only when it fires (or when the first request
    // arrives). While it is armed the true deadline can only have moved later (a request that
    // ends sets it to its end + `idle_timeout`, after any instant armed while it ran), so
    // checking when it fires closes the connection exactly when the deadline passes.
    let timer = tokio::time::sleep_until(next_wake(&activity, &limits, closing, Instant::now()));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if matches!(closing, Closing::No) => {
                conn.as_mut().graceful_shutdown();
                closing = Closing::Draining;
            }
            _ = hard_stop.cancelled() => return,
            _ = activity.first_request.notified() => {}
            _ = timer.as_mut() => {
                let idle = activity.deadline(&limits).is_some_and(|at| at <= Instant::now());
                match closing {
                    Closing::Idle(_) if idle => {
                        tracing::debug!(%remote, "connection dropped: it did not close when asked");
                        return;
                    }
                    // A request came in before the close took effect: it gets to finish.
                    Closing::Idle(_) => closing = Closing::Idle(Instant::now() + CLOSE_GRACE),
                    // Not one request yet (an HTTP/2 preface alone, an unfinished request
                    // head): there is nothing to finish gracefully.
                    Closing::No if idle && activity.requests.load(Ordering::Relaxed) == 0 => {
                        tracing::debug!(%remote, "connection closed: no request within the header timeout");
                        return;
                    }
                    Closing::No if idle => {
                        tracing::debug!(%remote, "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = Closing::Idle(Instant::now() + CLOSE_GRACE);
                    }
                    Closing::No | Closing::Draining => {}
                }
            }
        }
        let wake = next_wake(&activity, &limits, closing, Instant::now());
        if wake != timer.deadline() {
            timer.as_mut().reset(wake);
        }
    }
}

/// When the watchdog next looks: the grace instant of a close in progress, else the idle (or
/// first-request) deadline, else (a request in flight, or draining) one `idle_timeout` from now.
fn next_wake(activity: &Activity, limits: &ConnLimits, closing: Closing, now: Instant) -> Instant {
    match (closing, activity.deadline(limits)) {
        (Closing::Idle(at), _) => at,
        (Closing::No, Some(at)) if at > now => at,
        _ => now + limits.idle_timeout,
    }
}

/// `routes` as hyper's service, each request carrying the peer address and counted in flight
/// until its response body has ended. A request `routes.direct` takes goes to it without the
/// router, its future boxed as the router boxes a route's: hyper keeps the space of a service
/// future for the connection's life, and an open stream should not hold the proxy's.
fn tracked_service(
    routes: Routes,
    remote: SocketAddr,
    activity: Arc<Activity>,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<http::Response<Body>, std::convert::Infallible>> + Send,
> + Clone {
    tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let in_flight = activity.begin();
        let served: super::Served = match routes.direct_for(req.method(), req.uri().path()) {
            Some(direct) => direct.call(remote, req.map(Body::new)),
            None => {
                req.extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(remote));
                let router = routes.router.clone();
                Box::pin(async move {
                    match router.oneshot(req).await {
                        Ok(resp) => resp,
                        Err(never) => match never {},
                    }
                })
            }
        };
        async move {
            let resp = served.await;
            Ok(resp.map(|body| Guarded::wrap(body, in_flight)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_preface_is_http2_its_start_is_unsure_anything_else_http1() {
        assert_eq!(protocol_of(H2_PREFACE), Protocol::Http2);
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        assert_eq!(protocol_of(&more), Protocol::Http2);
        assert_eq!(protocol_of(&H2_PREFACE[..1]), Protocol::Unsure);
        assert_eq!(protocol_of(&H2_PREFACE[..23]), Protocol::Unsure);
        assert_eq!(
            protocol_of(b"POST /v1/chat/completions HTTP/1.1\r\n"),
            Protocol::Http1
        );
        assert_eq!(protocol_of(b"PRI * HTTP/1.1\r\n"), Protocol::Http1);
        assert_eq!(protocol_of(b"G"), Protocol::Http1);
        assert_eq!(protocol_of(b""), Protocol::Http1);
    }

    #[tokio::test]
    async fn first_bytes_peeks_without_taking_them() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        assert_eq!(first_bytes(&server).await, Protocol::Unsure);
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        // The peeked bytes are still there for whoever serves the connection.
        let mut all = [0u8; 24];
        server.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, H2_PREFACE);

        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(first_bytes(&server).await, Protocol::Http1);
    }
}
