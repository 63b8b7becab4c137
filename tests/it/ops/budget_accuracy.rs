//! Budgets across replica processes (README "Budgets"): three `keygate serve` processes on one
//! redis-server, in front of an upstream written here that enforces, per key, a sliding 60 s
//! request limit, a sliding 60 s token limit and a concurrency limit, answering 429 when one is
//! exceeded and counting everything it receives. Under saturating demand the upstream answers
//! no 429, never sees a limit exceeded, and the pool delivers its capacity. A replica killed
//! with SIGKILL gives its in-flight slots back within the lease.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use keygate::config::hash_token;

use crate::harness::gateway::CLIENT_TOKEN;
use crate::harness::processes::KeygateProcess;
use crate::harness::RedisServer;

/// What the upstream enforces on one key, and how long it takes to answer.
#[derive(Clone, Copy, Default)]
struct KeyRule {
    rpm: Option<usize>,
    tpm: Option<u64>,
    conc: Option<u64>,
    delay_ms: u64,
    /// The first request is held this long (a long stream holding its slot).
    first_hold_ms: u64,
}

#[derive(Default)]
struct KeyCount {
    arrivals: VecDeque<(Instant, u64)>,
    inflight: u64,
    accepted: u64,
    refused: u64,
    max_requests_60s: usize,
    max_tokens_60s: u64,
    max_inflight: u64,
}

#[derive(Default)]
struct Upstream {
    rules: HashMap<String, KeyRule>,
    counts: Mutex<HashMap<String, KeyCount>>,
}

const WINDOW: Duration = Duration::from_secs(60);

/// The tokens the upstream charges: the words of the messages plus `max_tokens` (it always
/// answers that many).
fn charge(body: &serde_json::Value) -> u64 {
    let words: usize = (body["messages"].as_array().into_iter().flatten())
        .filter_map(|m| m["content"].as_str())
        .map(|c| c.split_whitespace().count())
        .sum();
    words as u64 + body["max_tokens"].as_u64().unwrap_or(16)
}

/// Admits a request on `key` or says which limit it would exceed.
fn admit(up: &Upstream, key: &str, tokens: u64) -> Result<(KeyRule, bool), &'static str> {
    let rule = up.rules.get(key).copied().unwrap_or_default();
    let mut counts = up.counts.lock().unwrap();
    let c = counts.entry(key.to_string()).or_default();
    let now = Instant::now();
    while c.arrivals.front().is_some_and(|(t, _)| now - *t >= WINDOW) {
        c.arrivals.pop_front();
    }
    let reqs = c.arrivals.len() + 1;
    let toks = c.arrivals.iter().map(|(_, n)| n).sum::<u64>() + tokens;
    let refused = if rule.rpm.is_some_and(|l| reqs > l) {
        Some("rpm")
    } else if rule.tpm.is_some_and(|l| toks > l) {
        Some("tpm")
    } else if rule.conc.is_some_and(|l| c.inflight + 1 > l) {
        Some("concurrency")
    } else {
        None
    };
    if let Some(why) = refused {
        c.refused += 1;
        return Err(why);
    }
    c.arrivals.push_back((now, tokens));
    c.inflight += 1;
    c.accepted += 1;
    c.max_requests_60s = c.max_requests_60s.max(reqs);
    c.max_tokens_60s = c.max_tokens_60s.max(toks);
    c.max_inflight = c.max_inflight.max(c.inflight);
    Ok((rule, c.accepted == 1))
}

async fn chat(
    State(up): State<Arc<Upstream>>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let key = (headers.get("authorization").and_then(|v| v.to_str().ok()))
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let tokens = charge(&body);
    let (rule, first) = match admit(&up, &key, tokens) {
        Ok(r) => r,
        Err(why) => {
            let err = serde_json::json!({"error": {"message": format!("{why} limit"),
                "type": "requests", "code": "rate_limit_exceeded", "param": null}});
            return (StatusCode::TOO_MANY_REQUESTS, Json(err)).into_response();
        }
    };
    let hold = if first && rule.first_hold_ms > 0 {
        rule.first_hold_ms
    } else {
        rule.delay_ms
    };
    tokio::time::sleep(Duration::from_millis(hold)).await;
    if let Some(c) = up.counts.lock().unwrap().get_mut(&key) {
        c.inflight -= 1;
    }
    let completion = body["max_tokens"].as_u64().unwrap_or(16);
    let answer = serde_json::json!({"id": "x", "object": "chat.completion", "created": 0,
        "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": tokens - completion, "completion_tokens": completion,
                  "total_tokens": tokens}});
    Json(answer).into_response()
}

/// Serves the upstream on a free port; answers its base URL.
async fn start_upstream(up: Arc<Upstream>) -> String {
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .with_state(up);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

/// One pool of the replicas' config: `[pools.limits]` lines and its keys' secrets.
struct PoolDef {
    name: &'static str,
    limits: &'static str,
    keys: &'static [&'static str],
}

fn config(redis_url: &str, upstream: &str, pools: &[PoolDef]) -> String {
    let names: Vec<String> = pools.iter().map(|p| format!("{:?}", p.name)).collect();
    let mut t = format!(
        "[store]\nredis_url = \"{redis_url}\"\nprefix = \"kg\"\ntimeout_ms = 500\n\n\
         [[clients]]\nname = \"load\"\ntoken_sha256 = \"{}\"\npools = [{}]\n\n",
        hash_token(CLIENT_TOKEN),
        names.join(", ")
    );
    for p in pools {
        t.push_str(&format!(
            "[[pools]]\nname = \"{}\"\nbase_url = \"{upstream}\"\nmax_attempts = 1\n\n\
             [pools.limits]\n{}\n\n",
            p.name, p.limits
        ));
        for k in p.keys {
            t.push_str(&format!(
                "[[pools.keys]]\nid = \"{k}\"\nsecret = \"sk-{k}\"\n\n"
            ));
        }
    }
    t
}

fn request_body() -> serde_json::Value {
    serde_json::json!({"model": "m", "max_tokens": 200,
        "messages": [{"role": "user", "content": "count the words of this prompt"}]})
}

/// Sends requests to `pool` through `url` until `until`; answers (ok, keygate 429s, other).
async fn drive(c: reqwest::Client, url: String, pool: &'static str, until: Instant) -> [u64; 3] {
    let mut n = [0u64; 3];
    while Instant::now() < until {
        let r = c
            .post(&url)
            .bearer_auth(CLIENT_TOKEN)
            .header("x-keygate-pool", pool)
            .json(&request_body())
            .send()
            .await;
        match r.map(|r| r.status().as_u16()) {
            Ok(200) => n[0] += 1,
            Ok(429) => {
                n[1] += 1;
                // Pacing of the load generator, not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => n[2] += 1,
        }
    }
    n
}

fn rule(rpm: Option<usize>, tpm: Option<u64>, conc: Option<u64>, delay_ms: u64) -> KeyRule {
    KeyRule {
        rpm,
        tpm,
        conc,
        delay_ms,
        first_hold_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_under_saturating_demand_never_exceed_rpm_tpm_or_concurrency() {
    const RPM: usize = 60;
    const TPM: u64 = 6_000;
    const CONC: u64 = 2;
    let mut up = Upstream::default();
    for k in ["r1", "r2"] {
        up.rules
            .insert(format!("sk-{k}"), rule(Some(RPM), None, None, 50));
    }
    for k in ["t1", "t2"] {
        up.rules
            .insert(format!("sk-{k}"), rule(None, Some(TPM), None, 50));
    }
    for k in ["c1", "c2"] {
        up.rules
            .insert(format!("sk-{k}"), rule(None, None, Some(CONC), 300));
    }
    let up = Arc::new(up);
    let upstream = start_upstream(up.clone()).await;
    let redis = RedisServer::start();
    let pools = [
        PoolDef {
            name: "r",
            limits: "rpm = 60\nmax_wait_ms = 3000",
            keys: &["r1", "r2"],
        },
        PoolDef {
            name: "t",
            limits: "tpm = 6000\nmax_request_tokens = 500\ndefault_completion_tokens = 200\nmax_wait_ms = 3000",
            keys: &["t1", "t2"],
        },
        PoolDef {
            name: "c",
            limits: "max_concurrent = 2\nlease_s = 5",
            keys: &["c1", "c2"],
        },
    ];
    let cfg = config(&redis.url(), &upstream, &pools);
    let replicas = [
        KeygateProcess::start(&cfg, &[]).await,
        KeygateProcess::start(&cfg, &[]).await,
        KeygateProcess::start(&cfg, &[]).await,
    ];
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let run = Duration::from_secs(125);
    let started = Instant::now();
    let until = started + run;
    let mut tasks = Vec::new();
    for r in &replicas {
        for pool in ["r", "t", "c", "r", "t", "c"] {
            let url = r.url("/v1/chat/completions");
            tasks.push((pool, tokio::spawn(drive(c.clone(), url, pool, until))));
        }
    }
    let mut clients: HashMap<&str, [u64; 3]> = HashMap::new();
    for (pool, t) in tasks {
        let n = t.await.unwrap();
        let e = clients.entry(pool).or_default();
        for i in 0..3 {
            e[i] += n[i];
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let counts = up.counts.lock().unwrap();
    let get = |k: &str| counts.get(&format!("sk-{k}")).expect("key used");
    println!("FIGURES budgets over {secs:.1} s, 3 replicas; clients (ok, keygate 429, other): {clients:?}");
    for k in ["r1", "r2", "t1", "t2", "c1", "c2"] {
        let c = get(k);
        println!(
            "FIGURES key {k}: accepted {} refused {} max requests/60s {} max tokens/60s {} max in flight {}",
            c.accepted, c.refused, c.max_requests_60s, c.max_tokens_60s, c.max_inflight
        );
    }
    for k in ["r1", "r2", "t1", "t2", "c1", "c2"] {
        assert_eq!(get(k).refused, 0, "the upstream answered 429 on {k}");
    }
    for k in ["r1", "r2"] {
        assert!(get(k).max_requests_60s <= RPM, "{k} over rpm");
    }
    for k in ["t1", "t2"] {
        assert!(get(k).max_tokens_60s <= TPM, "{k} over tpm");
    }
    for k in ["c1", "c2"] {
        assert_eq!(
            get(k).max_inflight,
            CONC,
            "{k}: concurrency never exceeded, and reached"
        );
    }
    let delivered = (get("r1").accepted + get("r2").accepted) as f64;
    let capacity = 2.0 * RPM as f64 * secs / 60.0;
    println!(
        "FIGURES rpm pool delivered {delivered} of {capacity:.0} ({:.1}%)",
        100.0 * delivered / capacity
    );
    assert!(
        delivered >= 0.95 * capacity,
        "rpm pool delivered {delivered} of {capacity:.0}"
    );
    let tokens: u64 = (get("t1").arrivals.iter().chain(get("t2").arrivals.iter()))
        .map(|(_, n)| n)
        .sum();
    println!("FIGURES tpm pool: {tokens} tokens in the last 60 s of 2 x {TPM}");
    assert_eq!(clients["r"][2] + clients["t"][2] + clients["c"][2], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_with_sigkill_gives_its_in_flight_slots_back_within_the_lease() {
    let mut up = Upstream::default();
    // The upstream only counts here: the killed replica's held request stays open at it.
    let mut hold = rule(None, None, None, 10);
    hold.first_hold_ms = 60_000;
    up.rules.insert("sk-k1".into(), hold);
    let up = Arc::new(up);
    let upstream = start_upstream(up.clone()).await;
    let redis = RedisServer::start();
    let pools = [PoolDef {
        name: "c",
        limits: "max_concurrent = 1\nlease_s = 2",
        keys: &["k1"],
    }];
    let cfg = config(&redis.url(), &upstream, &pools);
    let mut doomed = KeygateProcess::start(&cfg, &[]).await;
    let survivor = KeygateProcess::start(&cfg, &[]).await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap();
    let send = |url: String| {
        let c = c.clone();
        async move {
            c.post(url)
                .bearer_auth(CLIENT_TOKEN)
                .json(&request_body())
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    // The doomed replica's request holds k1's only slot at the upstream.
    let held = tokio::spawn(send(doomed.url("/v1/chat/completions")));
    let t0 = Instant::now();
    while up
        .counts
        .lock()
        .unwrap()
        .get("sk-k1")
        .map_or(0, |c| c.inflight)
        == 0
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the held request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Two leases later the slot is still held: the live replica renews it.
    let renewed_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < renewed_until {
        assert_eq!(send(survivor.url("/v1/chat/completions")).await, 429);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = doomed.proc.pid().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status();
    assert!(killed.unwrap().success());
    let kill_time = Instant::now();
    while doomed.proc.exited().is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back = loop {
        if send(survivor.url("/v1/chat/completions")).await == 200 {
            break kill_time.elapsed();
        }
        assert!(
            kill_time.elapsed() < Duration::from_secs(10),
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("FIGURES the killed replica's slot came back {back:?} after SIGKILL (lease 2 s)");
    // A lease, plus the renewal that may have happened just before the kill, plus polling.
    assert!(
        back <= Duration::from_millis(2_500),
        "slot back after {back:?}"
    );
    held.abort();
}
