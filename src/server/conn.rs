//! One connection's life: hyper serves it while a watchdog closes it when it has had no request
//! in flight for too long. A new connection gets `header_read_timeout` for its first request
//! (this covers an HTTP/2 client that sends only its preface, or never finishes its HEADERS:
//! hyper itself has no deadline there); afterwards `idle_timeout` applies between requests,
//! for HTTP/1.1 keep-alive and HTTP/2 alike. A request counts as in flight from the moment
//! hyper hands it over until its response body has ended or been dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::ConnLimits;

/// How long an idle connection told to close (HTTP/2 GOAWAY) may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

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
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnLimits,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) {
    let activity = Activity::new();
    let svc = TowerToHyperService::new(tracked_service(router, remote, activity.clone()));
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

/// `router` as hyper's service, each request carrying the peer address and counted in flight
/// until its response body has ended.
fn tracked_service(
    router: Router,
    remote: SocketAddr,
    activity: Arc<Activity>,
) -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<http::Response<Body>, std::convert::Infallible>> + Send,
> + Clone {
    tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(remote));
        let in_flight = activity.begin();
        let router = router.clone();
        async move {
            let resp = router.oneshot(req).await?;
            Ok(resp.map(|body| Guarded::wrap(body, in_flight)))
        }
    })
}
