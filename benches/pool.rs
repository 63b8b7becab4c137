//! One multiplexed connection against a connection pool: the Redis store's `select` + `report`
//! scripts at concurrency 64, through the single self-reconnecting multiplexed connection every
//! task of a replica shares (a `ConnectionManager`, as `src/store/connection.rs` builds it) and
//! through `deadpool-redis` with a pool of 64 connections (one per task: no task ever waits for
//! a connection), a connection checked out for each script call as a store would (a request
//! holds none across its upstream attempt).
//!
//! Both modes run the same scripts (`lua/lib.lua` + `select.lua` / `report.lua`) with the same
//! arguments on the same pool, synced once by the Redis store; rounds alternate the modes so a
//! busy machine disturbs both alike. Per round and mode: pairs per second, the pair's p50 and p99,
//! and CPU per pair of this process (the client side: syscalls, wakeups) and of redis-server.
//!
//! Run with `cargo bench --bench pool` (release). Options, after `--`:
//!   `--secs S`    each mode's measured time per round (default 3)
//!   `--rounds R`  rounds, each running both modes in alternating order (default 4)
//!   `--keys N`    the pool's keys (default 4)
//!   `--lone N`    instead: one task's round trips alone (c=1), N `PING`s a mode and round,
//!                 through the `ConnectionManager` (its connection task carries each command
//!                 and reply) and through a socket the task writes and reads itself: what the
//!                 hand-off to redis-rs's connection task costs a lone request
//!
//! The redis-server is started on a free port in a temp dir and killed at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::pool::KeyId;
use keygate::store::redis::{RedisOptions, RedisStore};
use keygate::store::spec::{PoolSpec, SpecKey, StorePolicy};
use keygate::store::KeyStore;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Script, Value};

#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CONCURRENCY: usize = 64;
const PREFIX: &str = "kgpool";
const POOL: &str = "bench";

struct Options {
    secs: f64,
    rounds: usize,
    keys: usize,
    lone: usize,
}

fn options() -> Options {
    let mut o = Options {
        secs: 3.0,
        rounds: 4,
        keys: 4,
        lone: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.windows(2) {
        match pair[0].as_str() {
            "--secs" => o.secs = pair[1].parse().unwrap_or(o.secs),
            "--rounds" => o.rounds = pair[1].parse().unwrap_or(o.rounds),
            "--keys" => o.keys = pair[1].parse().unwrap_or(o.keys),
            "--lone" => o.lone = pair[1].parse().unwrap_or(o.lone),
            _ => {}
        }
    }
    o
}

/// How the tasks reach Redis.
#[derive(Clone)]
enum Connection {
    Multiplexed(ConnectionManager),
    Pool(deadpool_redis::Pool),
}

impl Connection {
    fn name(&self) -> &'static str {
        match self {
            Connection::Multiplexed(_) => "one multiplexed connection",
            Connection::Pool(_) => "deadpool-redis, 64 connections",
        }
    }

    async fn eval(&self, script: &Script, args: &[&str]) -> Result<Value, BoxError> {
        let base = format!("{PREFIX}:{{{POOL}}}");
        let mut invocation = script.key(base);
        for a in args {
            invocation.arg(*a);
        }
        match self {
            Connection::Multiplexed(m) => Ok(run(&invocation, &mut m.clone()).await?),
            Connection::Pool(p) => Ok(run(&invocation, &mut p.get().await?).await?),
        }
    }
}

async fn run(
    invocation: &redis::ScriptInvocation<'_>,
    conn: &mut impl ConnectionLike,
) -> redis::RedisResult<Value> {
    invocation.invoke_async(conn).await
}

struct Scripts {
    select: Script,
    report: Script,
}

fn scripts() -> Scripts {
    let lib = include_str!("../lua/lib.lua");
    Scripts {
        // As src/store/scripts.rs builds the EVALSHA form: lib.lua, begin(KEYS), the script
        // (and select.lua's call, select_call).
        select: Script::new(&format!(
            "{lib}\nbegin(KEYS)\n{}\nreturn select_call(KEYS, ARGV)\n",
            include_str!("../lua/select.lua")
        )),
        report: Script::new(&format!(
            "{lib}\nbegin(KEYS)\n{}",
            include_str!("../lua/report.lua")
        )),
    }
}

/// One `select` (stable route, nothing excluded) and one `report` of a success for the key it
/// chose, as the store sends them.
async fn one_pair(conn: &Connection, scripts: &Scripts) -> Result<(), BoxError> {
    let rand = (rand::random::<u64>() >> 11).to_string();
    let reply = conn
        .eval(&scripts.select, &["0", &rand, "stable", "0", "0", "0"])
        .await?;
    // One line of words: "key <id> ..." (lua/select.lua).
    let key = match &reply {
        Value::BulkString(line) => {
            match String::from_utf8_lossy(line).split(' ').collect::<Vec<_>>()[..] {
                ["key", id, ..] => id.to_string(),
                _ => return Err(format!("select chose no key: {reply:?}").into()),
            }
        }
        other => return Err(format!("unexpected select reply {other:?}").into()),
    };
    conn.eval(&scripts.report, &["0", &key, "success", "-1", "200", "0"])
        .await?;
    Ok(())
}

/// This process's CPU time (user + system), in microseconds.
fn own_cpu_us() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// redis-server's CPU time (user + system), in microseconds, from `INFO cpu`.
async fn redis_cpu_us(admin: &mut ConnectionManager) -> Result<u64, BoxError> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(admin).await?;
    let field = |name: &str| -> f64 {
        (info.lines())
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Ok(((field("used_cpu_user") + field("used_cpu_sys")) * 1e6) as u64)
}

struct Measured {
    pairs_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    own_us_per_pair: f64,
    redis_us_per_pair: f64,
}

/// `CONCURRENCY` tasks doing pairs back to back for `secs`.
async fn measure(
    conn: &Connection,
    scripts: &Arc<Scripts>,
    admin: &mut ConnectionManager,
    secs: f64,
) -> Result<Measured, BoxError> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let (own0, redis0, t0) = (own_cpu_us(), redis_cpu_us(admin).await?, Instant::now());
    let mut tasks = Vec::with_capacity(CONCURRENCY);
    for _ in 0..CONCURRENCY {
        let (conn, scripts) = (conn.clone(), scripts.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat_ns = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                one_pair(&conn, &scripts).await?;
                lat_ns.push(t.elapsed().as_nanos() as u64);
            }
            Ok::<_, BoxError>(lat_ns)
        }));
    }
    let mut lat_ns = Vec::new();
    for t in tasks {
        lat_ns.extend(t.await??);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (own1, redis1) = (own_cpu_us(), redis_cpu_us(admin).await?);
    lat_ns.sort_unstable();
    let n = lat_ns.len().max(1) as f64;
    let pct = |p: f64| lat_ns[((lat_ns.len() - 1) as f64 * p) as usize] as f64 / 1e3;
    Ok(Measured {
        pairs_per_s: n / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        own_us_per_pair: (own1 - own0) as f64 / n,
        redis_us_per_pair: (redis1 - redis0) as f64 / n,
    })
}

fn spec(keys: usize) -> PoolSpec {
    PoolSpec {
        name: POOL.to_string(),
        policy: StorePolicy::default(),
        canary_group: "canary".into(),
        canary_percent: 0,
        canary_fallback: true,
        keys: (0..keys)
            .map(|i| SpecKey {
                id: KeyId::new(&format!("k{i:05}")).expect("valid key id"),
                weight: (i % 10) as u32 + 1,
                group: "stable".into(),
                limits: Default::default(),
            })
            .collect(),
        budget: Default::default(),
    }
}

/// The p50, p90 and p99 of `v` (nanoseconds), in microseconds.
fn percentiles(mut v: Vec<u64>) -> [f64; 3] {
    v.sort_unstable();
    [50, 90, 99].map(|p| v[(v.len() - 1) * p / 100] as f64 / 1000.0)
}

/// `--lone`: one task's `PING` round trips, through the `ConnectionManager` and through a
/// socket of the task's own, rounds alternating the two.
async fn lone(server: &RedisServer, opts: &Options) -> Result<(), BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = opts.lone;
    let manager = ConnectionManager::new(redis::Client::open(server.url())?).await?;
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await?;
    socket.set_nodelay(true)?;
    println!("c=1, {n} PINGs per mode and round");
    println!(
        "{:<6} {:<28} {:>9} {:>9} {:>9}",
        "round", "connection", "p50 us", "p90 us", "p99 us"
    );
    for round in 0..opts.rounds {
        for own in [round % 2 == 1, round % 2 == 0] {
            // In a spawned task, as a request's select is: the workers park between commands.
            let times = if own {
                let mut s = socket;
                let (times, s) = tokio::spawn(async move {
                    let mut times = Vec::with_capacity(n);
                    let mut buf = [0u8; 16];
                    for _ in 0..n {
                        let t = Instant::now();
                        s.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
                        let mut got = 0;
                        while got < b"+PONG\r\n".len() {
                            match s.read(&mut buf[got..]).await? {
                                0 => return Err::<_, BoxError>("redis closed the socket".into()),
                                k => got += k,
                            }
                        }
                        times.push(t.elapsed().as_nanos() as u64);
                    }
                    Ok((times, s))
                })
                .await??;
                socket = s;
                times
            } else {
                let mut m = manager.clone();
                tokio::spawn(async move {
                    let mut times = Vec::with_capacity(n);
                    for _ in 0..n {
                        let t = Instant::now();
                        let _: String = redis::cmd("PING").query_async(&mut m).await?;
                        times.push(t.elapsed().as_nanos() as u64);
                    }
                    Ok::<_, BoxError>(times)
                })
                .await??
            };
            let [p50, p90, p99] = percentiles(times);
            let name = if own {
                "the task's own socket"
            } else {
                "ConnectionManager"
            };
            println!(
                "{:<6} {:<28} {:>9.1} {:>9.1} {:>9.1}",
                round + 1,
                name,
                p50,
                p90,
                p99
            );
        }
    }
    Ok(())
}

async fn bench(opts: &Options) -> Result<(), BoxError> {
    let server = RedisServer::start()?;
    if opts.lone > 0 {
        return lone(&server, opts).await;
    }
    let store = RedisStore::connect(&RedisOptions {
        url: server.url(),
        prefix: PREFIX.into(),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
    })?;
    store.sync(&spec(opts.keys)).await?;
    let client = redis::Client::open(server.url())?;
    let mut admin = ConnectionManager::new(client.clone()).await?;
    let multiplexed = Connection::Multiplexed(ConnectionManager::new(client).await?);
    let pool = deadpool_redis::Config::from_url(server.url())
        .builder()?
        .max_size(CONCURRENCY)
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()?;
    let pool = Connection::Pool(pool);
    let scripts = Arc::new(scripts());
    // Warm both: scripts loaded, the pool's connections opened.
    for conn in [&multiplexed, &pool] {
        measure(conn, &scripts, &mut admin, 0.5).await?;
    }
    println!(
        "c={CONCURRENCY}, {} keys, {} s per mode and round; loadavg {}",
        opts.keys,
        opts.secs,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{:<6} {:<32} {:>10} {:>9} {:>9} {:>13} {:>13}",
        "round", "connection", "pairs/s", "p50 us", "p99 us", "bench us/pair", "redis us/pair"
    );
    for round in 0..opts.rounds {
        let order = if round % 2 == 0 {
            [&multiplexed, &pool]
        } else {
            [&pool, &multiplexed]
        };
        for conn in order {
            let m = measure(conn, &scripts, &mut admin, opts.secs).await?;
            println!(
                "{:<6} {:<32} {:>10.0} {:>9.0} {:>9.0} {:>13.1} {:>13.1}",
                round + 1,
                conn.name(),
                m.pairs_per_s,
                m.p50_us,
                m.p99_us,
                m.own_us_per_pair,
                m.redis_us_per_pair
            );
        }
    }
    Ok(())
}

fn main() {
    let opts = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(bench(&opts)) {
        eprintln!("pool bench failed: {e}");
        std::process::exit(1);
    }
}
