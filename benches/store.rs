//! Store benchmark: `select` + `report` of the Redis store against its own `redis-server`.
//!
//! Run with `cargo bench --bench store` (bench profile = release). Options, after `--`:
//!   `--secs S`      the concurrency-64 phase per pool, in seconds (default 3; env
//!                   `STORE_BENCH_SECS`); the other phases scale with it
//!   `--sizes a,b,c` pool sizes (default 4,64,1024,10000; env `STORE_BENCH_SIZES`)
//!   `--no-churn`    skip the cooling-churn variant at the largest size
//!
//! For every pool size it syncs a pool of stable keys (weights 1..=10), loads the scripts, warms
//! up, then measures:
//!   1. c=1 round trips: one `select` + one `report` pair at a time (latency of the pair and of
//!      the `select` alone), and `PING` for the bare network round trip. This phase runs last and
//!      round-robin over all pools in the same window (2.5 × secs in all), because loopback
//!      latency on a VM drifts from one phase to the next by more than the pool size changes it;
//!   2. c=64: 64 tasks sharing one `RedisStore` (one multiplexed connection) for a fixed time;
//!   3. Redis CPU per call: `cmdstat_fcall` (or `cmdstat_evalsha` on a Redis without Functions)
//!      of a select-only and of a report-only phase (each
//!      after `CONFIG RESETSTAT`), and the main thread's CPU (`INFO cpu`) during the c=64 phase;
//!   4. for the churn variant, the server time of a `rate_limited` report alone (the path that
//!      takes a key out of the weight tree and into the due index).
//!
//! Server time comes from `INFO commandstats` only. `SLOWLOG` with a threshold of 0 would split
//! the mixed workload by script, but Redis 7.0 also logs every command a script issues, inside
//! the script's own measured time, which inflates scripts in proportion to their `redis.call`s.
//!
//! The cooling-churn variant reports 10% of attempts as `rate_limited` with a 50 ms hint, so keys
//! keep leaving the weight tree, entering the due index and being recovered lazily by `select`.
//!
//! The redis-server is started on a free port in a temp dir (`--save "" --appendonly no`) and
//! killed at the end; the machine's Redis is never touched.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::pool::{KeyId, Outcome};
use keygate::store::redis::{RedisOptions, RedisStore};
use keygate::store::spec::{PoolSpec, SpecKey, StorePolicy};
use keygate::store::{random_draw, KeyStore, KeyStoreExt, Report, Route, SelectRequest, Selection};
use redis::aio::MultiplexedConnection;

#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CONCURRENCY: usize = 64;

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
    secs: f64,
    sizes: Vec<usize>,
    churn: bool,
}

fn parse_sizes(s: &str) -> Option<Vec<usize>> {
    let v: Option<Vec<usize>> = s.split(',').map(|p| p.trim().parse().ok()).collect();
    v.filter(|v| !v.is_empty() && v.iter().all(|&n| n > 0))
}

fn options() -> Options {
    let mut o = Options {
        secs: 3.0,
        sizes: vec![4, 64, 1024, 10_000],
        churn: true,
    };
    if let Some(s) = std::env::var("STORE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        o.secs = s;
    }
    if let Some(v) = std::env::var("STORE_BENCH_SIZES")
        .ok()
        .and_then(|s| parse_sizes(&s))
    {
        o.sizes = v;
    }
    // `cargo bench` passes `--bench` (and maybe a filter): ignore what we do not know.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--secs" => {
                if let Some(s) = args.get(i + 1).and_then(|s| s.parse().ok()) {
                    o.secs = s;
                }
                i += 1;
            }
            "--sizes" => {
                if let Some(v) = args.get(i + 1).and_then(|s| parse_sizes(s)) {
                    o.sizes = v;
                }
                i += 1;
            }
            "--no-churn" => o.churn = false,
            _ => {}
        }
        i += 1;
    }
    if !(o.secs > 0.0 && o.secs.is_finite()) {
        o.secs = 3.0;
    }
    o
}

// ---------------------------------------------------------------------------------------------
// Our own redis-server: benches/support/redis_server.rs

// ---------------------------------------------------------------------------------------------
// Server statistics over a second connection (its own commands are not EVALSHA)

struct Admin {
    conn: MultiplexedConnection,
}

fn info_field(info: &str, name: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

impl Admin {
    async fn cmd<T: redis::FromRedisValue>(&mut self, args: &[&str]) -> Result<T, BoxError> {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        Ok(c.query_async(&mut self.conn).await?)
    }

    async fn reset_stats(&mut self) -> Result<(), BoxError> {
        self.cmd::<()>(&["CONFIG", "RESETSTAT"]).await
    }

    /// Every `cmdstat_*` line: (command, calls, usec). Redis 7 also counts the commands a
    /// script issues, under their own names.
    async fn commandstats(&mut self) -> Result<Vec<(String, u64, u64)>, BoxError> {
        let info: String = self.cmd(&["INFO", "commandstats"]).await?;
        Ok(info
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let field = |f: &str| -> u64 {
                    rest.split(',')
                        .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                Some((name.to_string(), field("calls"), field("usec")))
            })
            .collect())
    }

    /// `cmdstat_fcall` and `cmdstat_evalsha`: (calls, usec).
    async fn evalsha(&mut self) -> Result<(u64, u64), BoxError> {
        Ok(evalsha_of(&self.commandstats().await?))
    }

    /// CPU seconds (user + sys) of Redis's main thread, or of the process on older servers.
    async fn cpu_secs(&mut self) -> Result<f64, BoxError> {
        let info: String = self.cmd(&["INFO", "cpu"]).await?;
        let main = info_field(&info, "used_cpu_user_main_thread")
            .zip(info_field(&info, "used_cpu_sys_main_thread"));
        let total = info_field(&info, "used_cpu_user").zip(info_field(&info, "used_cpu_sys"));
        Ok(main.or(total).map(|(u, s)| u + s).unwrap_or(0.0))
    }
}

// ---------------------------------------------------------------------------------------------
// Workload

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Mix {
    /// Every report is a success.
    #[default]
    Success,
    /// 10% of reports are `rate_limited` with a 50 ms hint.
    Churn,
    /// Every report is `rate_limited` with a 50 ms hint (report-only phase of the churn run).
    RateLimited,
}

fn outcome(mix: Mix) -> (Outcome, Option<u64>, u16) {
    let limited = match mix {
        Mix::Success => false,
        Mix::Churn => rand::random::<u32>() % 10 == 0,
        Mix::RateLimited => true,
    };
    if limited {
        (Outcome::RateLimited, Some(50), 429)
    } else {
        (Outcome::Success, None, 200)
    }
}

fn select_req() -> SelectRequest<'static> {
    SelectRequest {
        route: Route::Stable,
        exclude: &[],
        rand: random_draw(),
        now_ms: None,
        tokens: 0,
    }
}

/// One select + report. Returns (select ns, pair ns, whether a key was chosen).
async fn one_pair(store: &RedisStore, pool: &str, mix: Mix) -> Result<(u64, u64, bool), BoxError> {
    let t0 = Instant::now();
    let sel = store.select(pool, &select_req()).await?;
    let select_ns = t0.elapsed().as_nanos() as u64;
    let chosen = match sel {
        Selection::Key(c) => c,
        Selection::None(_) => return Ok((select_ns, select_ns, false)),
    };
    let (outcome, cooldown_ms, http_status) = outcome(mix);
    store
        .report(
            pool,
            &Report {
                key: &chosen.key,
                outcome,
                cooldown_ms,
                http_status,
                probe: chosen.probe,
                now_ms: None,
            },
        )
        .await?;
    Ok((select_ns, t0.elapsed().as_nanos() as u64, true))
}

async fn one_report(store: &RedisStore, pool: &str, key: &KeyId, mix: Mix) -> Result<(), BoxError> {
    let (outcome, cooldown_ms, http_status) = outcome(mix);
    store
        .report(
            pool,
            &Report {
                key,
                outcome,
                cooldown_ms,
                http_status,
                probe: false,
                now_ms: None,
            },
        )
        .await?;
    Ok(())
}

fn random_key(keys: &[KeyId]) -> &KeyId {
    &keys[(rand::random::<u64>() % keys.len() as u64) as usize]
}

#[derive(Default)]
struct Run {
    pairs: u64,
    nones: u64,
    elapsed: Duration,
    select_ns: Vec<u64>,
    pair_ns: Vec<u64>,
}

impl Run {
    fn pairs_per_sec(&self) -> f64 {
        self.pairs as f64 / self.elapsed.as_secs_f64()
    }
}

/// `tasks` tasks sharing `store`, each doing select + report pairs until `dur` has passed.
async fn run_pairs(
    store: &Arc<RedisStore>,
    pool: &str,
    mix: Mix,
    tasks: usize,
    dur: Duration,
) -> Result<Run, BoxError> {
    let start = Instant::now();
    let deadline = start + dur;
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let store = Arc::clone(store);
        let pool = pool.to_string();
        handles.push(tokio::spawn(async move {
            let mut run = Run::default();
            while Instant::now() < deadline {
                let (s, p, got) = one_pair(&store, &pool, mix).await?;
                run.select_ns.push(s);
                run.pair_ns.push(p);
                run.pairs += 1;
                run.nones += u64::from(!got);
            }
            Ok::<Run, BoxError>(run)
        }));
    }
    let mut total = Run::default();
    for h in handles {
        let r = h.await??;
        total.pairs += r.pairs;
        total.nones += r.nones;
        total.select_ns.extend(r.select_ns);
        total.pair_ns.extend(r.pair_ns);
    }
    total.elapsed = start.elapsed();
    total.select_ns.sort_unstable();
    total.pair_ns.sort_unstable();
    Ok(total)
}

fn pct(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_ns.len() - 1) as f64 * p).round() as usize;
    sorted_ns[i] as f64 / 1000.0
}

/// The script calls: `FCALL`s and `EVALSHA`s together (calls, usec).
fn evalsha_of(stats: &[(String, u64, u64)]) -> (u64, u64) {
    stats
        .iter()
        .filter(|(n, _, _)| n == "evalsha" || n == "fcall")
        .fold((0, 0), |(c, u), &(_, c1, u1)| (c + c1, u + u1))
}

/// The commands a script ran, per script call: (command, calls, usec).
type Inner = Vec<(String, f64, f64)>;

/// Server µs per EVALSHA over `f`, from `INFO commandstats` after `CONFIG RESETSTAT`, and the
/// script's own commands per call.
async fn evalsha_usec_per_call<F, Fut>(admin: &mut Admin, f: F) -> Result<(f64, Inner), BoxError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    admin.reset_stats().await?;
    f().await?;
    let stats = admin.commandstats().await?;
    let (calls, usec) = evalsha_of(&stats);
    let per = calls.max(1) as f64;
    let inner = stats
        .into_iter()
        .filter(|(n, _, _)| {
            !matches!(
                n.as_str(),
                "evalsha" | "fcall" | "info" | "config" | "script"
            ) && !n.starts_with("function")
        })
        .map(|(n, c, u)| (n, c as f64 / per, u as f64 / per))
        .collect();
    Ok((usec as f64 / per, inner))
}

// ---------------------------------------------------------------------------------------------
// One pool

#[derive(Default)]
struct Row {
    label: String,
    pool: String,
    mix: Mix,
    size: usize,
    pair_p50: f64,
    pair_p99: f64,
    sel_p50: f64,
    sel_p99: f64,
    ops_c1: f64,
    ops_c64: f64,
    c64_p50: f64,
    c64_p99: f64,
    redis_select: f64,
    redis_report: f64,
    evalsha_pair_c64: f64,
    cpu_pair_c64: f64,
    /// EVALSHA µs per pair at c=64 minus the report-only cost: a select inside the mix.
    select_in_mix: f64,
    /// Churn only: server µs of a `rate_limited` report alone.
    report_429: Option<f64>,
    select_inner: Inner,
    nones: u64,
}

/// Names the pool and phase in an error.
fn ctx<E: std::fmt::Display>(label: &str, phase: &'static str) -> impl FnOnce(E) -> BoxError {
    let label = label.to_string();
    move |e| format!("pool {label}, {phase} phase: {e}").into()
}

fn spec(name: &str, n: usize) -> PoolSpec {
    PoolSpec {
        name: name.to_string(),
        policy: StorePolicy::default(),
        canary_group: "canary".into(),
        canary_percent: 0,
        canary_fallback: true,
        keys: (0..n)
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

async fn bench_pool(
    url: &str,
    admin: &mut Admin,
    label: &str,
    n: usize,
    mix: Mix,
    secs: f64,
) -> Result<Row, BoxError> {
    let store = Arc::new(RedisStore::connect(&RedisOptions {
        url: url.to_string(),
        prefix: "kgbench".into(),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
    })?);
    let pool = format!("bench-{}", label.replace(' ', "-"));
    let spec = spec(&pool, n);
    let keys: Vec<KeyId> = spec.keys.iter().map(|k| k.id.clone()).collect();
    let t = Instant::now();
    store.sync(&spec).await.map_err(ctx(label, "sync"))?;
    store
        .load_scripts()
        .await
        .map_err(ctx(label, "load_scripts"))?;
    let sync_ms = t.elapsed().as_secs_f64() * 1000.0;

    let phase = |f: f64| Duration::from_secs_f64(secs * f);
    // Warm-up: connection, script cache, allocator, CPU frequency.
    run_pairs(&store, &pool, mix, 8, Duration::from_millis(300))
        .await
        .map_err(ctx(label, "warm-up"))?;

    // (a) c=1 round trips: later, interleaved over all pools (see `interleaved_c1`).

    // (b) c=64, with the Redis main thread's CPU and EVALSHA time over the same phase.
    admin.reset_stats().await?;
    let cpu0 = admin.cpu_secs().await?;
    let c64 = run_pairs(&store, &pool, mix, CONCURRENCY, phase(1.0))
        .await
        .map_err(ctx(label, "c=64"))?;
    let cpu1 = admin.cpu_secs().await?;
    let (calls, usec) = admin.evalsha().await?;
    let evalsha_pair_c64 = usec as f64 / calls.max(1) as f64 * 2.0;
    let cpu_pair_c64 = (cpu1 - cpu0) * 1e6 / c64.pairs.max(1) as f64;

    // (c) Redis time per select alone and per report alone.
    let dur = phase(1.0 / 6.0);
    let (redis_select, select_inner) = evalsha_usec_per_call(admin, || async {
        let deadline = Instant::now() + dur;
        while Instant::now() < deadline {
            store.select(&pool, &select_req()).await?;
        }
        Ok(())
    })
    .await
    .map_err(ctx(label, "select-only"))?;
    let (redis_report, _) = evalsha_usec_per_call(admin, || async {
        let deadline = Instant::now() + dur;
        while Instant::now() < deadline {
            one_report(&store, &pool, random_key(&keys), mix).await?;
        }
        Ok(())
    })
    .await
    .map_err(ctx(label, "report-only"))?;

    // (d) Churn: a rate_limited report alone (cools a key: tree update + due index).
    let report_429 = if mix == Mix::Churn {
        let (us, _) = evalsha_usec_per_call(admin, || async {
            let deadline = Instant::now() + dur / 2;
            while Instant::now() < deadline {
                one_report(&store, &pool, random_key(&keys), Mix::RateLimited).await?;
            }
            Ok(())
        })
        .await
        .map_err(ctx(label, "rate-limited-only"))?;
        Some(us)
    } else {
        None
    };

    eprintln!(
        "  {label}: sync {sync_ms:.0} ms, {} pairs at c=64, {} 'none' selections",
        c64.pairs, c64.nones
    );
    Ok(Row {
        label: label.to_string(),
        pool,
        mix,
        size: n,
        ops_c64: c64.pairs_per_sec(),
        c64_p50: pct(&c64.pair_ns, 0.5),
        c64_p99: pct(&c64.pair_ns, 0.99),
        redis_select,
        redis_report,
        evalsha_pair_c64,
        cpu_pair_c64,
        select_in_mix: evalsha_pair_c64 - redis_report,
        report_429,
        select_inner,
        nones: c64.nones,
        ..Row::default()
    })
}

/// (a) c=1 select + report pairs, round-robin over every pool with a PING per round, all in the
/// same time window. Loopback latency on this VM drifts between phases (PING p50 flips between
/// about 30 and 60 µs), which swamps the pool-size effect when each pool gets its own phase.
async fn interleaved_c1(url: &str, rows: &mut [Row], dur: Duration) -> Result<f64, BoxError> {
    let store = RedisStore::connect(&RedisOptions {
        url: url.to_string(),
        prefix: "kgbench".into(),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
    })?;
    for r in rows.iter() {
        store.sync(&spec(&r.pool, r.size)).await?;
    }
    store.load_scripts().await?;
    let mut pair_ns = vec![Vec::new(); rows.len()];
    let mut select_ns = vec![Vec::new(); rows.len()];
    let mut nones = vec![0u64; rows.len()];
    let mut pings = Vec::new();
    let warm_until = Instant::now() + Duration::from_millis(200);
    let start = Instant::now();
    while start.elapsed() < dur {
        let warm = Instant::now() < warm_until;
        let t = Instant::now();
        store.ping_redis().await?;
        if !warm {
            pings.push(t.elapsed().as_nanos() as u64);
        }
        for (i, r) in rows.iter().enumerate() {
            let (s, p, got) = one_pair(&store, &r.pool, r.mix).await?;
            if !warm {
                select_ns[i].push(s);
                pair_ns[i].push(p);
                nones[i] += u64::from(!got);
            }
        }
    }
    for (i, r) in rows.iter_mut().enumerate() {
        let total_ns: u64 = pair_ns[i].iter().sum();
        r.ops_c1 = pair_ns[i].len() as f64 * 1e9 / total_ns.max(1) as f64;
        pair_ns[i].sort_unstable();
        select_ns[i].sort_unstable();
        r.pair_p50 = pct(&pair_ns[i], 0.5);
        r.pair_p99 = pct(&pair_ns[i], 0.99);
        r.sel_p50 = pct(&select_ns[i], 0.5);
        r.sel_p99 = pct(&select_ns[i], 0.99);
        r.nones += nones[i];
    }
    eprintln!(
        "  c=1, interleaved: {} pairs per pool",
        pair_ns.first().map_or(0, Vec::len)
    );
    pings.sort_unstable();
    Ok(pct(&pings, 0.5))
}

// ---------------------------------------------------------------------------------------------
// Report

fn print_tables(rows: &[Row], ping_p50: f64) {
    println!();
    println!("### Summary (pairs = one select + one report)");
    println!();
    println!(
        "| pool size | select+report p50 µs | p99 µs | ops/s c=1 | ops/s c=64 | \
         Redis µs/select | Redis µs/report |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
            r.label, r.pair_p50, r.pair_p99, r.ops_c1, r.ops_c64, r.redis_select, r.redis_report
        );
    }
    println!();
    println!("### Details");
    println!();
    println!(
        "| pool size | select p50 / p99 µs (c=1) | \
         pair p50 / p99 µs (c=64) | EVALSHA µs/pair (c=64) | Redis main-thread CPU µs/pair (c=64) | \
         Redis µs/select in the mix |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} | {:.1} | {:.1} |",
            r.label,
            r.sel_p50,
            r.sel_p99,
            r.c64_p50,
            r.c64_p99,
            r.evalsha_pair_c64,
            r.cpu_pair_c64,
            r.select_in_mix
        );
    }
    println!();
    println!(
        "PING p50 during the interleaved c=1 phase (the bare loopback round trip): {ping_p50:.0} µs"
    );
    println!();
    println!("### Inside one select (select-only phase; commandstats of the script's own calls)");
    println!();
    println!(
        "| pool size | EVALSHA µs | HGET calls | HGET µs | other commands: calls, µs | \
         Lua + redis.call overhead µs |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let (mut hget, mut other) = ((0.0, 0.0), (0.0, 0.0));
        for (n, c, u) in &r.select_inner {
            let slot = if n == "hget" { &mut hget } else { &mut other };
            slot.0 += c;
            slot.1 += u;
        }
        println!(
            "| {} | {:.2} | {:.1} | {:.2} | {:.1}, {:.2} | {:.2} |",
            r.label,
            r.redis_select,
            hget.0,
            hget.1,
            other.0,
            other.1,
            r.redis_select - hget.1 - other.1
        );
    }
    for r in rows {
        if let Some(us) = r.report_429 {
            println!();
            println!(
                "{}: a `rate_limited` report alone (key leaves its weight class, enters the due index) \
                 costs Redis {us:.2} µs.",
                r.label
            );
        }
    }
    let nones: u64 = rows.iter().map(|r| r.nones).sum();
    if nones > 0 {
        println!();
        println!("({nones} selections found no selectable key.)");
    }

    let stable: Vec<&Row> = rows.iter().filter(|r| !r.label.contains("churn")).collect();
    if let (Some(small), Some(large)) = (
        stable.iter().min_by_key(|r| r.size),
        stable.iter().max_by_key(|r| r.size),
    ) {
        if small.size != large.size {
            println!();
            println!("### Ratios, {} keys / {} keys", large.size, small.size);
            println!();
            println!(
                "- select+report round trip p50 (c=1): {:.3} ({:.0} µs vs {:.0} µs)",
                large.pair_p50 / small.pair_p50,
                large.pair_p50,
                small.pair_p50
            );
            println!(
                "- select+report round trip p99 (c=1): {:.3}",
                large.pair_p99 / small.pair_p99
            );
            println!(
                "- throughput c=64: {:.3} ({:.0} vs {:.0} pairs/s)",
                large.ops_c64 / small.ops_c64,
                large.ops_c64,
                small.ops_c64
            );
            println!(
                "- Redis CPU per select (commandstats): {:.3} ({:.2} µs vs {:.2} µs)",
                large.redis_select / small.redis_select,
                large.redis_select,
                small.redis_select
            );
            println!(
                "- Redis CPU per select inside the mix (c=64 EVALSHA per pair - report): {:.3}",
                large.select_in_mix / small.select_in_mix
            );
            println!(
                "- Redis CPU per report (commandstats): {:.3}",
                large.redis_report / small.redis_report
            );
        }
    }
}

async fn bench(opts: &Options) -> Result<(), BoxError> {
    let server = RedisServer::start()?;
    let version: String = {
        let mut c = redis::Client::open(server.url())?.get_connection()?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut c)?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    eprintln!(
        "store bench: redis-server {version} on port {} (own instance), {} s at c={CONCURRENCY} \
         per pool, sizes {:?}{}",
        server.port,
        opts.secs,
        opts.sizes,
        if opts.churn { " + cooling churn" } else { "" }
    );
    let mut admin = Admin {
        conn: redis::Client::open(server.url())?
            .get_multiplexed_async_connection_with_config(
                // INFO right after a busy phase: do not trip the 500 ms default.
                &redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(10))),
            )
            .await?,
    };
    let url = server.url();
    let mut rows = Vec::new();
    for &n in &opts.sizes {
        rows.push(bench_pool(&url, &mut admin, &n.to_string(), n, Mix::Success, opts.secs).await?);
    }
    if opts.churn {
        if let Some(&n) = opts.sizes.iter().max() {
            let label = format!("{n} churn");
            rows.push(bench_pool(&url, &mut admin, &label, n, Mix::Churn, opts.secs).await?);
        }
    }
    let ping_p50 = interleaved_c1(&url, &mut rows, Duration::from_secs_f64(opts.secs * 2.5))
        .await
        .map_err(ctx("all", "interleaved c=1"))?;
    print_tables(&rows, ping_p50);
    drop(server);
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let opts = options();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("store bench: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    // Redis and the client share this machine's cores: other load skews every number.
    eprintln!("store bench: load average before: {}", loadavg());
    let started = Instant::now();
    let result = rt.block_on(bench(&opts));
    eprintln!(
        "store bench: done in {:.1} s; load average after: {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    if let Err(e) = result {
        eprintln!("store bench failed: {e}");
        std::process::exit(1);
    }
}
