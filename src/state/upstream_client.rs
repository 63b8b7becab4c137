//! One pool's upstream HTTP client over hyper-rustls (BENCHMARKS.md, "The upstream client"),
//! built from the pool's `upstream_http2` and `[pools.timeouts]` (README, "Upstream
//! connections"): keygate's own pool of HTTP/1.1 connections (`h1.rs`), spoken to by its own
//! HTTP/1.1 client (`wire.rs`), where the upstream speaks only HTTP/1.1 (a plaintext `base_url`
//! without `prior_knowledge`, or `never`), else hyper_util's pooled client, which negotiates
//! HTTP/2 by ALPN.
//!
//! HTTP/1.1 carries one request per connection at a time; idle connections are kept up to
//! `idle_connections` per host, each for at most `idle_timeout_ms`. HTTP/2 carries many streams
//! on one connection, but hyper_util's pool holds a single connection per host and queues the
//! streams an upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` does not admit. Long SSE streams
//! would wait there for others to end, so once the upstream has answered over HTTP/2 requests
//! are spread over several clients (one connection each), each carrying at most
//! [`H2_STREAMS_PER_CONNECTION`] at once. hyper_util may open one HTTP/2 connection more than
//! a burst needs: a request that found none pooled can start connecting just after the first
//! connection went in, and the pool closes that spare one as soon as it is up
//! (tests/it/proxy/upstream_conns.rs counts connections open while streams run for this reason).

mod h1;
mod wire;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{PoolConfig, UpstreamHttp2};
use h1::H1Pool;
pub use wire::{H1Body, WireError};

/// Streams one HTTP/2 connection carries at once before the next request goes to another: the
/// limit HTTP/2 peers assume before a server's SETTINGS arrive (servers commonly allow 100-256).
pub const H2_STREAMS_PER_CONNECTION: usize = 100;

/// hyper_util's HTTP/1.1 read buffer's limit (HTTP/2-capable pools that answered over
/// HTTP/1.1): the largest answer head keygate accepts, as on its own connections.
const H1_MAX_BUF: usize = wire::MAX_HEAD;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type Inner = Client<Connector, Full<Bytes>>;

/// Why an upstream request got no answer.
#[derive(Debug)]
pub enum UpstreamError {
    /// hyper_util's client (HTTP/2-capable pools): connecting or the exchange.
    Pooled(hyper_util::client::legacy::Error),
    /// Connecting: TCP (including the pool's `connect_ms`) or TLS.
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The HTTP/1.1 exchange on one of keygate's own connections (`wire.rs`).
    Wire(WireError),
}

impl UpstreamError {
    /// The upstream could not be reached (no request was sent).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Pooled(e) => e.is_connect(),
            UpstreamError::Connect(_) => true,
            UpstreamError::Wire(_) => false,
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Pooled(e) => write!(f, "{e}"),
            UpstreamError::Connect(e) => write!(f, "connect: {e}"),
            UpstreamError::Wire(e) => write!(f, "{e}"),
        }
    }
}

/// One client (HTTP/2: one connection) and the requests it carries now.
struct Slot {
    client: Inner,
    in_flight: AtomicUsize,
}

/// A pool's upstream client; follows no redirect and adds nothing but `Host`.
pub struct UpstreamClient {
    /// The pool's upstream speaks only HTTP/1.1: keygate's own connection pool.
    h1: Option<Arc<H1Pool>>,
    connector: Connector,
    mode: UpstreamHttp2,
    idle_connections: usize,
    idle_timeout: Duration,
    /// hyper_util's clients (empty with `h1`: never used then).
    slots: RwLock<Vec<Arc<Slot>>>,
    /// The upstream answered over HTTP/2 (by ALPN or prior knowledge): spread the streams.
    h2_seen: AtomicBool,
}

/// One request's share of a hyper_util client, given back when dropped (when its response body
/// has ended or been dropped). An HTTP/1.1 connection of keygate's own needs none: its answer's
/// body holds it.
pub struct Lease(Option<Arc<Slot>>);

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(slot) = &self.0 {
            slot.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// An upstream answer's body: read off keygate's own HTTP/1.1 connection, or hyper_util's.
pub enum UpstreamBody {
    H1(H1Body),
    Pooled(Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Pooled(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::Pooled(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::Pooled(b) => b.size_hint(),
        }
    }
}

impl UpstreamClient {
    pub fn new(pool: &PoolConfig) -> UpstreamClient {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(Duration::from_millis(pool.timeouts.connect_ms)));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http();
        let connector = match pool.upstream_http2 {
            UpstreamHttp2::Never => builder.enable_http1().wrap_connector(tcp),
            UpstreamHttp2::Alpn | UpstreamHttp2::PriorKnowledge => {
                builder.enable_http1().enable_http2().wrap_connector(tcp)
            }
        };
        // Plaintext without prior knowledge, or `never`: HTTP/1.1 whatever the upstream.
        let only_h1 = pool.upstream_http2 == UpstreamHttp2::Never
            || (pool.upstream_http2 == UpstreamHttp2::Alpn && pool.base_url.starts_with("http://"));
        let client = UpstreamClient {
            h1: only_h1.then(|| {
                Arc::new(H1Pool::new(
                    connector.clone(),
                    &pool.base_url,
                    pool.timeouts.idle_connections,
                    Duration::from_millis(pool.timeouts.idle_timeout_ms),
                ))
            }),
            connector,
            mode: pool.upstream_http2,
            idle_connections: pool.timeouts.idle_connections,
            idle_timeout: Duration::from_millis(pool.timeouts.idle_timeout_ms),
            slots: RwLock::new(Vec::new()),
            h2_seen: AtomicBool::new(pool.upstream_http2 == UpstreamHttp2::PriorKnowledge),
        };
        // hyper_util's clients serve only pools that may speak HTTP/2.
        if client.h1.is_none() {
            let first = client.slot();
            client.write_slots().push(first);
        }
        client
    }

    fn slot(&self) -> Arc<Slot> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_max_idle_per_host(self.idle_connections)
            .pool_idle_timeout(self.idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_max_buf_size(H1_MAX_BUF)
            .http2_only(self.mode == UpstreamHttp2::PriorKnowledge);
        Arc::new(Slot {
            client: builder.build(self.connector.clone()),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn write_slots(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Slot>>> {
        self.slots.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `request` (its URI absolute); the lease holds its place until the response (body
    /// included) is done.
    pub async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<(http::Response<UpstreamBody>, Lease), UpstreamError> {
        if let Some(h1) = &self.h1 {
            let resp = h1.send(request).await?;
            return Ok((resp.map(UpstreamBody::H1), Lease(None)));
        }
        let slot = self.pick();
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        let lease = Lease(Some(slot.clone()));
        let resp = slot
            .client
            .request(request.map(Full::new))
            .await
            .map_err(UpstreamError::Pooled)?;
        Ok((resp.map(UpstreamBody::Pooled), lease))
    }

    /// Notes the protocol an answer came in: HTTP/2 turns on spreading over connections.
    pub fn answered_over(&self, version: http::Version) {
        if version == http::Version::HTTP_2 && !self.h2_seen.load(Ordering::Relaxed) {
            self.h2_seen.store(true, Ordering::Relaxed);
        }
    }

    /// HTTP/1.1: the one client. HTTP/2: the first client with room for another stream, else a
    /// new one.
    fn pick(&self) -> Arc<Slot> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        if !self.h2_seen.load(Ordering::Relaxed) {
            return slots[0].clone();
        }
        let has_room =
            |s: &Arc<Slot>| s.in_flight.load(Ordering::Acquire) < H2_STREAMS_PER_CONNECTION;
        if let Some(slot) = slots.iter().find(|s| has_room(s)) {
            return slot.clone();
        }
        drop(slots);
        let mut slots = self.write_slots();
        if let Some(slot) = slots.iter().find(|s| has_room(s)) {
            return slot.clone();
        }
        let slot = self.slot();
        slots.push(slot.clone());
        slot
    }

    /// Clients (HTTP/2: connections) this pool has opened so far.
    pub fn clients(&self) -> usize {
        self.slots.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}
