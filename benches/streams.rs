//! The streams load generator of `bench/run.sh` (phase `streams`): holds N streaming chat
//! completions open at once against one URL, each as soon as the previous one of its slot ends,
//! for a fixed time, and prints one JSON line: streams finished, their rate, time to first byte
//! and whole-stream duration percentiles, events received, errors.
//!
//! ```text
//! cargo bench --bench streams -- --url http://127.0.0.1:8080/v1/chat/completions \
//!     --concurrency 4000 --secs 20 --token bench-token [--header X-Keygate-Pool:streams]
//! ```
//!
//! One HTTP/1.1 connection per open stream (as the SDKs do without HTTP/2), so N streams hold N
//! sockets here, and 2N in a proxy between this and the provider. `--http2` speaks HTTP/2 with
//! prior knowledge instead, 100 streams per connection.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

struct Args {
    url: String,
    concurrency: usize,
    secs: u64,
    token: String,
    headers: Vec<(String, String)>,
    http2: bool,
}

/// Streams per connection with `--http2` (servers commonly allow 100-256).
const H2_STREAMS_PER_CONNECTION: usize = 100;

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: String::new(),
        concurrency: 100,
        secs: 10,
        token: "bench-token".into(),
        headers: Vec::new(),
        http2: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--concurrency" => args.concurrency = value()?.parse().map_err(|e| format!("{e}"))?,
            "--secs" => args.secs = value()?.parse().map_err(|e| format!("{e}"))?,
            "--token" => args.token = value()?,
            "--header" => {
                let h = value()?;
                let (k, v) = h.split_once(':').ok_or("--header takes NAME:VALUE")?;
                args.headers.push((k.trim().into(), v.trim().into()));
            }
            "--http2" => args.http2 = true,
            "--bench" => {} // added by `cargo bench`
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.url.is_empty() {
        return Err("--url is required".into());
    }
    Ok(args)
}

/// What one stream measured.
struct Sample {
    ttfb: Duration,
    total: Duration,
    events: u64,
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn one_stream(client: &Http, args: &Args, body: &Bytes) -> Result<Sample, String> {
    let mut req = http::Request::post(&args.url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", args.token));
    for (k, v) in &args.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(body.clone()))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut ttfb = None;
    let mut events = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            ttfb.get_or_insert_with(|| started.elapsed());
            events += data.windows(6).filter(|w| w == b"data: ").count() as u64;
        }
    }
    Ok(Sample {
        ttfb: ttfb.unwrap_or_else(|| started.elapsed()),
        total: started.elapsed(),
        events,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => std::sync::Arc::new(a),
        Err(e) => {
            eprintln!("streams: {e}");
            std::process::exit(2);
        }
    };
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    // HTTP/2: one client (one connection) per 100 slots, since one client keeps a single
    // HTTP/2 connection per host and queues streams past the server's limit.
    let clients: Vec<Http> = if args.http2 {
        (0..args.concurrency.div_ceil(H2_STREAMS_PER_CONNECTION))
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .build(connector.clone())
            })
            .collect()
    } else {
        vec![Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(args.concurrency)
            .build(connector)]
    };
    let body = Bytes::from_static(
        br#"{"model":"gpt-4.1","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say something short."}]}"#,
    );
    let end = Instant::now() + Duration::from_secs(args.secs);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for slot in 0..args.concurrency {
        let client = clients[(slot / H2_STREAMS_PER_CONNECTION).min(clients.len() - 1)].clone();
        let (args, body) = (args.clone(), body.clone());
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let mut errors = Vec::new();
            while Instant::now() < end {
                match one_stream(&client, &args, &body).await {
                    Ok(s) => samples.push(s),
                    Err(e) => errors.push(e),
                }
            }
            (samples, errors)
        });
    }
    let mut samples = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((s, e)) = joined {
            samples.extend(s);
            errors.extend(e);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut ttfb: Vec<Duration> = samples.iter().map(|s| s.ttfb).collect();
    let mut total: Vec<Duration> = samples.iter().map(|s| s.total).collect();
    ttfb.sort();
    total.sort();
    let events: u64 = samples.iter().map(|s| s.events).sum();
    let first_error = errors.first().cloned().unwrap_or_default();
    let summary = serde_json::json!({
        "concurrency": args.concurrency,
        "secs": elapsed,
        "streams": samples.len(),
        "streams_per_s": samples.len() as f64 / elapsed,
        "events": events,
        "errors": errors.len(),
        "first_error": first_error,
        "ttfb_p50_ms": percentile(&ttfb, 0.50),
        "ttfb_p99_ms": percentile(&ttfb, 0.99),
        "duration_p50_ms": percentile(&total, 0.50),
        "duration_p99_ms": percentile(&total, 0.99),
    });
    println!("{summary}");
}
