//! The floor of keygate's own HTTP stack: a proxy of hyper and tokio that does nothing but
//! what `bench/nginx.bare.conf.template` does (forward every request to one upstream with a key
//! header, the answer streamed back), on the same runtime, server, upstream client and
//! allocator keygate uses. `bench/instructions.sh` (target `hyper-bare`) counts its instructions
//! per request and `bench/run.sh`'s floor rounds its throughput, next to keygate's and bare
//! nginx's: what keygate's work costs over its stack, and what the stack costs over nginx
//! (BENCHMARKS.md, "The floor of keygate's stack: bare hyper").
//!
//! ```text
//! cargo bench --bench bare_proxy -- --listen 127.0.0.1:8090 --upstream http://127.0.0.1:8081
//! ```
//!
//! As keygate serves: one tokio worker per vCPU, hyper's HTTP/1.1 server with keep-alive (no
//! HTTP/2 detection), TCP_NODELAY, and hyper_util's pooled client with its HTTP connector
//! (keygate's adds rustls for `https://` upstreams, unused on `http://`). Nothing else: no
//! authentication, no body read, no store, no metrics, no logging.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, AUTHORIZATION};
use http::uri::{PathAndQuery, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The key header nginx's bare config sets (`bench/nginx.bare.conf.template`).
const KEY: &str = "Bearer sk-bench-bare-0000000000000000";

struct Proxy {
    client: Client<HttpConnector, Incoming>,
    /// The upstream's scheme and authority (`http://127.0.0.1:8081`).
    upstream: Uri,
    key: HeaderValue,
}

fn parse_args() -> Result<(SocketAddr, Uri), String> {
    let (mut listen, mut upstream) = (None, None);
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
            "--bench" => {} // added by `cargo bench`
            other => return Err(format!("unknown argument {other}")),
        }
    }
    match (listen, upstream) {
        (Some(l), Some(u)) => Ok((l, u)),
        _ => Err("usage: bare_proxy --listen ADDR --upstream http://HOST:PORT".into()),
    }
}

impl Proxy {
    async fn forward(
        &self,
        mut req: http::Request<Incoming>,
    ) -> Result<http::Response<Incoming>, hyper_util::client::legacy::Error> {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = Some(path);
        *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path make a URI");
        req.headers_mut().remove(http::header::HOST);
        req.headers_mut().insert(AUTHORIZATION, self.key.clone());
        self.client.request(req).await
    }
}

async fn serve(proxy: Arc<Proxy>, addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
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
                        Ok(resp) => resp.map(http_body_util::Either::Left),
                        Err(_) => http::Response::builder()
                            .status(502)
                            .body(http_body_util::Either::Right(http_body_util::Empty::new()))
                            .expect("a 502 with no headers is a response"),
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

fn main() {
    let (listen, upstream) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bare_proxy: {e}");
            std::process::exit(2);
        }
    };
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(tcp);
    let proxy = Arc::new(Proxy {
        client,
        upstream,
        key: HeaderValue::from_static(KEY),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(serve(proxy, listen)) {
        eprintln!("bare_proxy: {e}");
        std::process::exit(1);
    }
}
