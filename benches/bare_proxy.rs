//! The floor of keygate's own HTTP stack: a proxy of hyper and tokio that does nothing but
//! what `bench/nginx.bare.conf.template` does (forward every request to one upstream with a key
//! header, the answer streamed back), on the same runtime, server, upstream client and
//! allocator keygate uses. `bench/instructions.sh` (target `hyper-bare`) counts its instructions
//! per request and `bench/run.sh`'s floor rounds its throughput, next to keygate's and bare
//! nginx's: what keygate's work costs over its stack, and what the stack costs over nginx
//! (BENCHMARKS.md, "The floor of keygate's stack: bare hyper").
//!
//! ```text
//! cargo bench --bench bare_proxy -- --listen 127.0.0.1:8090 --upstream http://127.0.0.1:8081 \
//!     [--own-pool] [--per-thread]
//! ```
//!
//! As keygate serves: one tokio worker per vCPU, hyper's HTTP/1.1 server with keep-alive (no
//! HTTP/2 detection), TCP_NODELAY, and hyper_util's pooled client with its HTTP connector
//! (keygate's adds rustls for `https://` upstreams, unused on `http://`). Nothing else: no
//! authentication, no body read, no store, no metrics, no logging.
//!
//! `--own-pool` forwards through the least pool that works instead of hyper_util's: idle
//! HTTP/1.1 connections (hyper's `client::conn::http1`) in a vector behind a mutex, taken
//! last in, first out and put back when the answer's body is dropped. Plaintext HTTP/1.1 only,
//! no idle timeout, no cap, no retry of a request that meets a connection the upstream closed:
//! a measurement of what hyper_util's pool costs a request, not a pool to ship.
//!
//! `--per-thread` serves as nginx's workers do instead: one current-thread runtime per vCPU,
//! each with its own listener (`SO_REUSEPORT`) and its own upstream pool or client, so no task
//! moves between threads (BENCHMARKS.md, "The floor of keygate's stack: bare hyper").

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION};
use http::uri::{PathAndQuery, Uri};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The key header nginx's bare config sets (`bench/nginx.bare.conf.template`).
const KEY: &str = "Bearer sk-bench-bare-0000000000000000";

struct Args {
    listen: SocketAddr,
    upstream: Uri,
    own_pool: bool,
    per_thread: bool,
}

/// How requests reach the upstream.
enum Upstream {
    /// hyper_util's pooled client, as keygate's `state/upstream_client.rs` uses it.
    Legacy(Box<Client<HttpConnector, Incoming>>),
    /// `--own-pool`.
    Own(Arc<OwnPool>),
}

struct Proxy {
    upstream: Upstream,
    /// The upstream's scheme and authority (`http://127.0.0.1:8081`).
    base: Uri,
    key: HeaderValue,
}

/// Idle upstream connections, the most recently used last.
struct OwnPool {
    idle: Mutex<Vec<SendRequest<Incoming>>>,
    /// `host:port` to connect to.
    addr: String,
}

/// An answer's body that puts its connection back into the pool when dropped.
struct Returning {
    body: Incoming,
    conn: Option<SendRequest<Incoming>>,
    pool: Arc<OwnPool>,
}

type Answer = http::Response<Either<Either<Incoming, Returning>, Empty<Bytes>>>;

fn parse_args() -> Result<Args, String> {
    let (mut listen, mut upstream, mut own_pool, mut per_thread) = (None, None, false, false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--upstream" => {
                let uri: Uri = value()?.parse().map_err(|e| format!("--upstream: {e}"))?;
                if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                    return Err("--upstream: expected http://HOST:PORT".into());
                }
                upstream = Some(uri);
            }
            "--own-pool" => own_pool = true,
            "--per-thread" => per_thread = true,
            "--bench" => {} // added by `cargo bench`
            other => return Err(format!("unknown argument {other}")),
        }
    }
    match (listen, upstream) {
        (Some(listen), Some(upstream)) => Ok(Args {
            listen,
            upstream,
            own_pool,
            per_thread,
        }),
        _ => Err("usage: bare_proxy --listen ADDR --upstream http://HOST:PORT [--own-pool]".into()),
    }
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // A connection whose answer was not read to its end is closed by hyper: it shows as
        // closed here, or fails `ready` at its next checkout.
        if let Some(conn) = self.conn.take().filter(|c| !c.is_closed()) {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
    }
}

impl OwnPool {
    /// An idle connection ready for a request, else a new one.
    async fn checkout(&self) -> Result<SendRequest<Incoming>, String> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut conn) = idle else { break };
            if !conn.is_closed() && conn.ready().await.is_ok() {
                return Ok(conn);
            }
        }
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (conn, task) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(task);
        Ok(conn)
    }
}

impl Proxy {
    async fn forward(&self, mut req: http::Request<Incoming>) -> Result<Answer, String> {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        req.headers_mut().insert(AUTHORIZATION, self.key.clone());
        match &self.upstream {
            Upstream::Legacy(client) => {
                let mut parts = self.base.clone().into_parts();
                parts.path_and_query = Some(path);
                *req.uri_mut() = Uri::from_parts(parts).map_err(|e| e.to_string())?;
                req.headers_mut().remove(http::header::HOST);
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                Ok(resp.map(|b| Either::Left(Either::Left(b))))
            }
            Upstream::Own(pool) => {
                // HTTP/1.1 on a connection of its own: the request target is the path alone.
                *req.uri_mut() = Uri::from(path);
                let mut conn = pool.checkout().await?;
                let resp = conn.send_request(req).await.map_err(|e| e.to_string())?;
                Ok(resp.map(|body| {
                    Either::Left(Either::Right(Returning {
                        body,
                        conn: Some(conn),
                        pool: pool.clone(),
                    }))
                }))
            }
        }
    }
}

async fn serve(proxy: Arc<Proxy>, addr: SocketAddr, reuse_port: bool) -> std::io::Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(reuse_port)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    eprintln!("bare_proxy: listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let proxy = proxy.clone();
                async move {
                    Ok::<_, Infallible>(match proxy.forward(req).await {
                        Ok(resp) => resp,
                        Err(_) => {
                            let mut resp = http::Response::new(Either::Right(Empty::new()));
                            *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
                            resp
                        }
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn proxy_for(args: &Args) -> Arc<Proxy> {
    let upstream = if args.own_pool {
        let authority = args.upstream.authority().map(|a| a.to_string());
        Upstream::Own(Arc::new(OwnPool {
            idle: Mutex::new(Vec::new()),
            addr: authority.unwrap_or_default(),
        }))
    } else {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(tcp);
        Upstream::Legacy(Box::new(client))
    };
    Arc::new(Proxy {
        upstream,
        base: args.upstream.clone(),
        key: HeaderValue::from_static(KEY),
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bare_proxy: {e}");
            std::process::exit(2);
        }
    };
    if args.per_thread {
        // `--per-thread`: one current-thread runtime per vCPU, each with its own listener
        // (SO_REUSEPORT: the kernel spreads connections over them) and its own upstream pool,
        // as nginx's workers are: no task ever moves between threads.
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let proxy = proxy_for(&args);
                let listen = args.listen;
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a tokio runtime");
                    runtime.block_on(serve(proxy, listen, true))
                })
            })
            .collect();
        for t in threads {
            if let Ok(Err(e)) = t.join() {
                eprintln!("bare_proxy: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let proxy = proxy_for(&args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(serve(proxy, args.listen, false)) {
        eprintln!("bare_proxy: {e}");
        std::process::exit(1);
    }
}
