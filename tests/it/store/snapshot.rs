//! Snapshots of large pools against a real redis-server: paged so that no script call holds
//! Redis for long, refreshed in the background only when the pool's change counter moved; and
//! degraded mode that a short burst of timeouts does not trip while a lasting outage does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::pool::{KeyState, Outcome};
use keygate::store::failover::{FailoverOptions, FailoverStore};
use keygate::store::memory::MemoryStore;
use keygate::store::redis::{RedisOptions, RedisStore};
use keygate::store::{AdminState, KeyStore, KeyStoreExt, PoolSpec, Report, Route, SelectRequest};

use crate::harness::{kid, spec, wait_until, RedisServer};

const T0: u64 = 1_700_000_000_000;

fn store_with_timeout(server: &RedisServer, timeout: Duration) -> RedisStore {
    RedisStore::connect(&RedisOptions {
        url: server.url(),
        prefix: "kg".into(),
        timeout,
        connect_timeout: Duration::from_millis(500),
    })
    .expect("redis store")
}

fn big_spec(name: &str, n: usize) -> PoolSpec {
    let ids: Vec<String> = (0..n).map(|i| format!("k{i:05}")).collect();
    let keys: Vec<(&str, u32, &str)> = ids.iter().map(|id| (id.as_str(), 2, "stable")).collect();
    spec(name, &keys)
}

/// `calls` of one command in `INFO commandstats` (commands run by scripts included).
pub(super) fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.conn())
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A mix of state changes on every seventh key, the same on every store it is applied to.
async fn write_state(s: &dyn KeyStore, pool: &str, n: usize) {
    for i in (0..n).step_by(7) {
        let k = kid(&format!("k{i:05}"));
        let report = |outcome, hint, status| Report {
            key: &k,
            outcome,
            cooldown_ms: hint,
            http_status: status,
            probe: false,
            now_ms: Some(T0),
        };
        let r = match i % 5 {
            0 => report(Outcome::RateLimited, Some((i as u64 % 6 + 1) * 1000), 429),
            1 => report(Outcome::Success, None, 200),
            2 => report(Outcome::Unauthorized, None, 401),
            3 => report(Outcome::QuotaExhausted, None, 429),
            _ => report(Outcome::ServerError, None, 500),
        };
        s.report(pool, &r).await.unwrap();
        match i % 4 {
            0 => s.set_weight(pool, &k, (i % 9) as u32).await.unwrap(),
            1 => s.set_group(pool, &k, "canary").await.unwrap(),
            2 => {
                s.set_state(pool, &k, AdminState::Drain).await.unwrap();
            }
            _ => {}
        }
    }
    s.set_canary(pool, 37).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_snapshot_of_10000_keys_returns_each_key_once_as_written_and_no_call_over_20ms() {
    const N: usize = 10_000;
    let server = RedisServer::start();
    let redis = store_with_timeout(&server, Duration::from_secs(10));
    let memory = MemoryStore::new();
    let sp = big_spec("big", N);
    redis.sync(&sp).await.unwrap();
    memory.sync(&sp).await.unwrap();
    write_state(&redis, "big", N).await;
    write_state(&memory, "big", N).await;

    let mut c = server.conn();
    for (name, value) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "100000"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query(&mut c)
            .unwrap();
    }
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut c).unwrap();
    // 3.5 s after the cooldowns began: those of 1-3 s are over and recovered by the snapshot.
    let at = T0 + 3_500;
    let got = redis.snapshot("big", Some(at)).await.unwrap();
    type Entry = (i64, i64, i64, Vec<String>, String, String);
    let log: Vec<Entry> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query(&mut c)
        .unwrap();
    let pages: Vec<i64> = log
        .iter()
        .filter(|e| {
            e.3.first()
                .is_some_and(|a| matches!(a.to_ascii_lowercase().as_str(), "fcall" | "evalsha"))
        })
        .map(|e| e.2)
        .collect();
    let want = memory.snapshot("big", Some(at)).await.unwrap();

    let max = pages.iter().copied().max().unwrap_or(0);
    eprintln!(
        "FIGURES paged-snapshot-10k: {} script calls, slowest {max} us, total {} us",
        pages.len(),
        pages.iter().sum::<i64>()
    );
    assert_eq!(got.keys.len(), N);
    assert!(
        got.keys.windows(2).all(|w| w[0].id < w[1].id),
        "sorted, each id once"
    );
    assert!(got.keys.iter().any(|k| k.status == KeyState::Cooling));
    assert!(got
        .keys
        .iter()
        .all(|k| k.status != KeyState::Cooling || k.cooldown_until_ms > at));
    assert_eq!(
        got, want,
        "Redis's paged snapshot differs from the memory store's"
    );
    assert!(pages.len() >= N / 128 / 2, "{} pages", pages.len());
    assert!(max < 20_000, "a snapshot page held Redis {max} us");
}

/// A failover store whose background task checks its snapshots every 20 ms.
fn quick_failover(redis: RedisStore, degraded_after: Duration) -> FailoverStore {
    FailoverStore::new(
        Arc::new(redis),
        FailoverOptions {
            degraded_after_failures: 3,
            degraded_after,
            probe_interval: Duration::from_millis(20),
            snapshot_interval: Duration::from_millis(20),
            snapshot_max_age: Duration::from_secs(600),
        },
        None,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_refresh_pages_a_snapshot_only_after_the_change_counter_moved() {
    let server = RedisServer::start();
    let sp = big_spec("p", 2_000);
    let store = quick_failover(
        store_with_timeout(&server, Duration::from_secs(2)),
        Duration::from_secs(1),
    );
    store.sync(&sp).await.unwrap();
    // The first refresh takes a snapshot (SSCAN runs only inside its pages) and keeps it.
    wait_until(Duration::from_secs(10), "a first snapshot kept", || async {
        store.kept_version("p").is_some()
    })
    .await;
    assert!(command_calls(&server, "sscan") > 0);
    let hmget = command_calls(&server, "hmget");
    let sscan = command_calls(&server, "sscan");
    // Nothing changes: refreshes keep reading the counter (one HMGET each), no page.
    wait_until(
        Duration::from_secs(10),
        "ten more refresh checks",
        || async { command_calls(&server, "hmget") >= hmget + 10 },
    )
    .await;
    assert_eq!(
        command_calls(&server, "sscan"),
        sscan,
        "a page with no change"
    );

    // Another replica disables a key: the next refresh pages a new snapshot.
    let other = store_with_timeout(&server, Duration::from_secs(2));
    other.sync(&sp).await.unwrap();
    other
        .set_state("p", &kid("k00042"), AdminState::Disable)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "a snapshot after the change",
        || async { command_calls(&server, "sscan") > sscan },
    )
    .await;
    // What it kept is what memory answers with while Redis is hung.
    let changed = other.pool_version("p").await.unwrap();
    wait_until(Duration::from_secs(10), "the new snapshot kept", || async {
        store.kept_version("p") == changed
    })
    .await;
    tokio::task::block_in_place(|| server.pause());
    let seen = store.snapshot("p", None).await.unwrap();
    tokio::task::block_in_place(|| server.resume());
    let k = seen.keys.iter().find(|k| k.id == "k00042").unwrap();
    assert_eq!((k.status, k.reason.as_str()), (KeyState::Disabled, "admin"));
    store.shutdown().await;
}

async fn select_once(store: &FailoverStore) {
    let req = SelectRequest {
        route: Route::Stable,
        exclude: &[],
        rand: 1,
        now_ms: None,
        tokens: 0,
    };
    store.select("p", &req).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_timeouts_does_not_switch_to_degraded_mode_but_a_hung_redis_does() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(400);
    let store = quick_failover(store_with_timeout(&server, timeout), Duration::from_secs(5));
    store
        .sync(&spec("p", &[("k1", 1, "stable"), ("k2", 1, "stable")]))
        .await
        .unwrap();
    select_once(&store).await;
    // Redis holds every script for 600 ms: three selects sent at once time out together at
    // 400 ms (three failures in a row, the threshold). The PING that confirms them is answered
    // when the pause ends, within its own 400 ms: no switch.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(600)
        .arg("WRITE")
        .query(&mut server.conn())
        .unwrap();
    let started = Instant::now();
    tokio::join!(
        select_once(&store),
        select_once(&store),
        select_once(&store)
    );
    assert!(started.elapsed() >= timeout, "the selects did not time out");
    assert!(
        !store.degraded(),
        "a burst of timeouts switched to degraded mode"
    );
    select_once(&store).await;
    assert!(!store.degraded());

    // A hung Redis: the third timeout in a row asks for a PING, which times out too; that
    // switches long before the 5 s of degraded_after.
    tokio::task::block_in_place(|| server.pause());
    let hung = Instant::now();
    while !store.degraded() {
        assert!(hung.elapsed() < Duration::from_secs(10), "never degraded");
        select_once(&store).await;
    }
    let detected = hung.elapsed();
    tokio::task::block_in_place(|| server.resume());
    eprintln!("FIGURES burst-vs-outage: a hung Redis degraded the replica after {detected:?}");
    assert!(detected < Duration::from_secs(3), "{detected:?}");
    wait_until(Duration::from_secs(10), "back on Redis", || async {
        !store.degraded()
    })
    .await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_that_last_degraded_after_ms_switch_even_while_redis_answers_ping() {
    let server = RedisServer::start();
    let degraded_after = Duration::from_millis(1500);
    let store = quick_failover(
        store_with_timeout(&server, Duration::from_millis(500)),
        degraded_after,
    );
    store
        .sync(&spec("p", &[("k1", 1, "stable"), ("k2", 1, "stable")]))
        .await
        .unwrap();
    let config_set = |value: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(value)
            .query(&mut server.conn())
            .unwrap();
    };
    // Out of memory: every report (a write) fails at once, PING still answers.
    config_set("1");
    let k1 = kid("k1");
    let report = Report {
        key: &k1,
        outcome: Outcome::ServerError,
        cooldown_ms: None,
        http_status: 500,
        probe: false,
        now_ms: None,
    };
    let first = Instant::now();
    let mut failures = 0u32;
    while !store.degraded() {
        assert!(first.elapsed() < Duration::from_secs(10), "never degraded");
        store.report("p", &report).await.unwrap();
        failures += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let switched = first.elapsed();
    config_set("0");
    eprintln!("FIGURES lasting-failures: degraded after {switched:?} and {failures} failures");
    assert!(failures > 3, "switched at the count, PING answered");
    assert!(switched >= degraded_after, "{switched:?}");
    wait_until(Duration::from_secs(10), "back on Redis", || async {
        !store.degraded()
    })
    .await;
    store.shutdown().await;
}
