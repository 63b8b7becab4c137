//! What only the Redis store can show: two replicas sharing one Redis, the readable key layout,
//! and surviving a Redis that lost its data or its script cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keygate::pool::{KeyState, Outcome};
use keygate::store::{KeyStore, KeyStoreExt, Report, Route, SelectRequest, Selection};
use redis::Commands;

use crate::harness::{kid, read_budget, redis_store, spec, RedisServer};

/// The key each of 48 stable selects spread over the rand range picks, in order.
async fn picks(s: &dyn KeyStore, pool: &str) -> Vec<String> {
    let mut seen = Vec::new();
    for i in 0..48u64 {
        let req = SelectRequest {
            route: Route::Stable,
            exclude: &[],
            rand: i * ((1u64 << 53) / 48),
            now_ms: None,
            tokens: 0,
        };
        if let Selection::Key(c) = s.select(pool, &req).await.unwrap() {
            seen.push(c.key.to_string());
        }
    }
    seen
}

/// The keys those selects find, each once, sorted.
async fn selectable(s: &dyn KeyStore, pool: &str) -> Vec<String> {
    let mut seen = picks(s, pool).await;
    seen.sort();
    seen.dedup();
    seen
}

#[tokio::test]
async fn a_cooldown_reported_through_one_replica_holds_on_another_until_its_deadline() {
    let server = RedisServer::start();
    let (a, b) = (redis_store(&server, "kg"), redis_store(&server, "kg"));
    let sp = spec("p", &[("k1", 1, "stable"), ("k2", 1, "stable")]);
    a.sync(&sp).await.unwrap();
    b.sync(&sp).await.unwrap();
    let k1 = kid("k1");
    let r = Report {
        key: &k1,
        outcome: Outcome::RateLimited,
        cooldown_ms: Some(600),
        http_status: 429,
        probe: false,
        now_ms: None,
    };
    let receipt = a.report("p", &r).await.unwrap();
    assert_eq!(receipt.state, KeyState::Cooling);
    // Replica b, on the server clock, never sees k1 until the deadline...
    while redis_now_ms(&server) < receipt.cooldown_until_ms {
        let seen = selectable(&b, "p").await;
        if redis_now_ms(&server) < receipt.cooldown_until_ms {
            assert_eq!(seen, ["k2"]);
        }
    }
    // ...and sees it again once the deadline passed.
    assert_eq!(selectable(&b, "p").await, ["k1", "k2"]);
}

fn redis_now_ms(server: &RedisServer) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(&mut server.conn()).unwrap();
    s * 1000 + us / 1000
}

#[tokio::test]
async fn redis_cli_reads_the_documented_key_hash_and_no_secret_is_stored() {
    let server = RedisServer::start();
    let store = redis_store(&server, "kg");
    store
        .sync(&spec("prod", &[("prod-001", 3, "stable")]))
        .await
        .unwrap();
    let k = kid("prod-001");
    let r = Report {
        key: &k,
        outcome: Outcome::Success,
        cooldown_ms: None,
        http_status: 200,
        probe: false,
        now_ms: None,
    };
    store.report("prod", &r).await.unwrap();
    let mut c = server.conn();
    let h: HashMap<String, String> = c.hgetall("kg:{prod}:key:prod-001").unwrap();
    for f in [
        "status",
        "reason",
        "weight",
        "group",
        "errors",
        "strikes",
        "cooldown_until_ms",
        "last_status",
        "last_used_ms",
        "successes",
        "failures",
    ] {
        assert!(h.contains_key(f), "missing field {f}: {h:?}");
    }
    assert_eq!(
        (
            h["status"].as_str(),
            h["weight"].as_str(),
            h["group"].as_str()
        ),
        ("active", "3", "stable")
    );
    assert_eq!(
        (h["last_status"].as_str(), h["successes"].as_str()),
        ("200", "1")
    );
    // Every key of the store carries the pool's hash tag.
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        assert!(key.starts_with("kg:{prod}:"), "{key}");
    }
}

#[tokio::test]
async fn a_pool_lost_to_flushall_or_a_restart_is_recreated_without_failing_the_call() {
    let mut server = RedisServer::start();
    let store = redis_store(&server, "kg");
    store
        .sync(&spec("p", &[("k1", 1, "stable")]))
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut server.conn()).unwrap();
    assert_eq!(selectable(&store, "p").await, ["k1"]);
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(selectable(&store, "p").await, ["k1"]);
    server.restart_empty();
    // The reconnect may cost the first call; the store must come back by itself.
    let mut ok = false;
    for _ in 0..200 {
        let req = SelectRequest {
            route: Route::Stable,
            exclude: &[],
            rand: 1,
            now_ms: None,
            tokens: 0,
        };
        if let Ok(Selection::Key(_)) = store.select("p", &req).await {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "store did not recover after an empty restart");
}

#[tokio::test]
async fn the_store_tells_its_one_listener_of_each_pool_it_creates_or_recreates() {
    let server = RedisServer::start();
    let store = redis_store(&server, "kg");
    let told = Arc::new(Mutex::new(Vec::<String>::new()));
    let listener = told.clone();
    store
        .on_recreated(Box::new(move |pool| {
            listener.lock().unwrap().push(pool.to_string())
        }))
        .unwrap();
    assert!(
        store.on_recreated(Box::new(|_| {})).is_err(),
        "a second listener is refused"
    );
    let sp = spec("p", &[("k1", 1, "stable")]);
    store.sync(&sp).await.unwrap();
    assert_eq!(*told.lock().unwrap(), ["p"], "created on the first start");
    store.sync(&sp).await.unwrap();
    assert_eq!(selectable(&store, "p").await, ["k1"]);
    assert_eq!(*told.lock().unwrap(), ["p"], "nothing lost, nothing told");
    server.flushall();
    assert_eq!(selectable(&store, "p").await, ["k1"]);
    assert_eq!(
        *told.lock().unwrap(),
        ["p", "p"],
        "re-created after FLUSHALL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_replicas_syncing_at_once_create_the_pool_exactly_once() {
    let server = RedisServer::start();
    let ids: Vec<String> = (0..50).map(|i| format!("k{i:02}")).collect();
    let keys: Vec<(&str, u32, &str)> = ids.iter().map(|id| (id.as_str(), 2, "stable")).collect();
    let sp = spec("p", &keys);
    let stores: Vec<_> = (0..8).map(|_| redis_store(&server, "kg")).collect();
    let receipts = futures::future::join_all(stores.iter().map(|s| s.sync(&sp))).await;
    let created: u64 = receipts
        .into_iter()
        .map(|r| match r.unwrap() {
            keygate::store::SyncReceipt::Synced { created, .. } => created,
            keygate::store::SyncReceipt::Unchanged => 0,
        })
        .sum();
    assert_eq!(created, 50, "every key created once across all replicas");
    let active: u64 = server.conn().hget("kg:{p}:meta", "cnt:active").unwrap();
    assert_eq!(active, 50);
    let snap = stores[3].snapshot("p", None).await.unwrap();
    assert_eq!(snap.keys.len(), 50);
    assert!(snap
        .keys
        .iter()
        .all(|k| k.status == KeyState::Active && k.weight == 2));
    // A second round (a rolling restart) changes nothing.
    for s in &stores {
        assert_eq!(
            s.sync(&sp).await.unwrap(),
            keygate::store::SyncReceipt::Unchanged
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_find_their_pool_lost_at_once_recreate_it_with_one_sync() {
    let server = RedisServer::start();
    let ids: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
    let keys: Vec<(&str, u32, &str)> = ids.iter().map(|id| (id.as_str(), 1, "stable")).collect();
    let store = redis_store(&server, "kg");
    store.sync(&spec("p", &keys)).await.unwrap();
    server.flushall();
    server.log_all_commands();
    let selects = (0..16u64).map(|i| {
        let store = &store;
        async move {
            let req = SelectRequest {
                route: Route::Stable,
                exclude: &[],
                rand: i,
                now_ms: None,
                tokens: 0,
            };
            store.select("p", &req).await
        }
    });
    for r in futures::future::join_all(selects).await {
        assert!(matches!(r, Ok(Selection::Key(_))), "{r:?}");
    }
    let syncs = server.logged_script_calls("sync.lua");
    assert_eq!(syncs, 1, "one sync re-created the pool for all 16 requests");
    let active: u64 = server.conn().hget("kg:{p}:meta", "cnt:active").unwrap();
    assert_eq!(active, 300);
}

async fn select_one(store: &dyn KeyStore, pool: &str) -> Selection {
    let req = SelectRequest {
        route: Route::Stable,
        exclude: &[],
        rand: 7,
        now_ms: None,
        tokens: 0,
    };
    store.select(pool, &req).await.unwrap()
}

fn logged(server: &RedisServer, first: &str, second: &str) -> usize {
    server
        .logged_commands()
        .iter()
        .filter(|c| {
            c.len() >= 2 && c[0].eq_ignore_ascii_case(first) && c[1].eq_ignore_ascii_case(second)
        })
        .count()
}

/// Every script runs as a function of the one library Redis loaded (no `EVALSHA`), and a Redis
/// that lost the library (`FUNCTION FLUSH`; a restart is the same) gets it back from the next
/// call, which still answers.
#[tokio::test]
async fn scripts_run_as_functions_and_a_lost_library_is_loaded_again_by_the_next_call() {
    let server = RedisServer::start();
    let store = redis_store(&server, "kg");
    store
        .sync(&spec("p", &[("k1", 1, "stable")]))
        .await
        .unwrap();
    server.log_all_commands();
    assert!(matches!(select_one(&store, "p").await, Selection::Key(_)));
    assert_eq!(server.logged_script_calls("select.lua"), 1);
    assert_eq!(server.logged_evalshas(), 0);

    server.function_flush();
    server.log_all_commands();
    assert!(matches!(select_one(&store, "p").await, Selection::Key(_)));
    assert_eq!(
        logged(&server, "function", "load"),
        1,
        "the library loaded once"
    );
    assert_eq!(
        server.logged_script_calls("select.lua"),
        2,
        "the call Redis refused, then the same call again"
    );
    assert_eq!(server.logged_evalshas(), 0);
}

/// On a Redis without Functions (before 7.0: here `FCALL` and `FUNCTION` are renamed away) the
/// same scripts run with `EVALSHA`, and pick exactly what the library picks on a Redis with
/// Functions.
#[tokio::test]
async fn a_redis_without_functions_runs_the_same_scripts_with_evalsha() {
    let with = RedisServer::start();
    let without = RedisServer::start_with(&[
        "--rename-command",
        "FCALL",
        "",
        "--rename-command",
        "FUNCTION",
        "",
    ]);
    let sp = spec(
        "p",
        &[
            ("k1", 1, "stable"),
            ("k2", 3, "stable"),
            ("k3", 2, "stable"),
        ],
    );
    let (a, b) = (redis_store(&with, "kg"), redis_store(&without, "kg"));
    for s in [&a, &b] {
        s.sync(&sp).await.unwrap();
        // The first select loads its script (on `without`: NOSCRIPT, SCRIPT LOAD, EVALSHA).
        assert!(matches!(select_one(s, "p").await, Selection::Key(_)));
    }
    with.log_all_commands();
    without.log_all_commands();
    let by_function = picks(&a, "p").await;
    assert_eq!(by_function.len(), 48);
    assert_eq!(picks(&b, "p").await, by_function);
    assert_eq!(without.logged_script_calls("select.lua"), 48);
    assert_eq!(without.logged_evalshas(), 48);
    assert_eq!(with.logged_script_calls("select.lua"), 48);
    assert_eq!(with.logged_evalshas(), 0);

    without.script_flush();
    assert_eq!(picks(&b, "p").await, by_function, "after SCRIPT FLUSH");
}

/// A pool whose budgets an older keygate kept in twelve key-hash fields (layout `cls1`) is
/// converted at the next sync: each key's schedules move into its `kg:{P}:budget` entry and
/// keep holding the key back, and the old fields are gone.
#[tokio::test]
async fn budgets_an_older_keygate_kept_in_key_hash_fields_survive_the_upgrade() {
    use keygate::store::budget::KeyLimits;

    const T0: u64 = 1_700_000_000_000;
    let server = RedisServer::start();
    let mut sp = spec("p", &[("k1", 1, "stable"), ("k2", 1, "stable")]);
    for k in Arc::make_mut(&mut sp.keys) {
        k.limits = KeyLimits {
            rpm: 60,
            ..KeyLimits::default()
        };
    }
    sp.budget.lease_ms = 10_000;
    sp.budget.max_request_tokens = 1_000;
    redis_store(&server, "kg").sync(&sp).await.unwrap();
    // Rewrite the pool as the older layout held it: k1's next request not before T0 + 5 s.
    let mut c = server.conn();
    for (id, tat_r) in [("k1", T0 + 5_000), ("k2", 0)] {
        let _: () = c.hdel("kg:{p}:budget", id).unwrap();
        let old: Vec<(&str, u64)> = vec![
            ("b_rpm", 60),
            ("b_tpm", 0),
            ("b_conc", 0),
            ("b_rpd", 0),
            ("b_tpd", 0),
            ("l_rpm", 0),
            ("l_tpm", 0),
            ("tat_r", tat_r),
            ("tat_rd", 0),
            ("tat_t", 0),
            ("tat_td", 0),
            ("n_in", 0),
        ];
        let _: () = c.hset_multiple(format!("kg:{{p}}:key:{id}"), &old).unwrap();
    }
    let _: () = c.hset("kg:{p}:meta", "layout", "cls1").unwrap();

    let upgraded = redis_store(&server, "kg");
    upgraded.sync(&sp).await.unwrap();
    let b1 = read_budget(&mut c, "kg:{p}:budget", "k1");
    assert_eq!((b1["b_rpm"], b1["tat_r"]), (60, (T0 + 5_000) as i64));
    let h: HashMap<String, String> = c.hgetall("kg:{p}:key:k1").unwrap();
    assert!(
        !h.contains_key("tat_r") && !h.contains_key("b_rpm"),
        "old fields left: {h:?}"
    );
    // At T0 only k2 has headroom; then nothing until k2's next slot (T0 + 1010), which comes
    // before k1's kept schedule.
    let pick = |now: u64| {
        let upgraded = &upgraded;
        async move {
            let req = SelectRequest {
                route: Route::Stable,
                exclude: &[],
                rand: 7,
                now_ms: Some(now),
                tokens: 0,
            };
            upgraded.select("p", &req).await.unwrap()
        }
    };
    match pick(T0).await {
        Selection::Key(c) => assert_eq!(c.key.as_str(), "k2"),
        Selection::None(u) => panic!("no key at T0: {u:?}"),
    }
    match pick(T0).await {
        Selection::None(u) => assert_eq!(u.retry_at_ms, Some(T0 + 1_010)),
        Selection::Key(c) => panic!("{} chosen before its slot", c.key),
    }
}

/// A canary-routed select of pool `p` that excludes the canary key `c1`: the stable key when the
/// pool lets canary requests fall back, else none.
async fn canary_without_c1(store: &dyn KeyStore) -> Option<String> {
    let exclude = [kid("c1")];
    let req = SelectRequest {
        route: Route::Canary,
        exclude: &exclude,
        rand: 7,
        now_ms: None,
        tokens: 0,
    };
    match store.select("p", &req).await.unwrap() {
        Selection::Key(c) => Some(c.key.to_string()),
        Selection::None(_) => None,
    }
}

/// A pool synced by the previous layout (`cls2`: meta without `sel`, the select call's settings
/// packed in one field) is selected from by its fields one by one, and the first sync of this
/// version writes `sel` although the config is unchanged.
#[tokio::test]
async fn a_pool_synced_before_the_packed_select_settings_gets_them_at_the_next_sync() {
    let server = RedisServer::start();
    let sp = spec("p", &[("k1", 1, "stable"), ("c1", 1, "canary")]);
    redis_store(&server, "kg").sync(&sp).await.unwrap();
    let mut c = server.conn();
    let sel: Vec<u8> = c.hget("kg:{p}:meta", "sel").unwrap();
    assert!(!sel.is_empty(), "this version's sync writes sel");
    // As the previous layout left the pool.
    let _: () = c.hdel("kg:{p}:meta", "sel").unwrap();
    let _: () = c.hset("kg:{p}:meta", "layout", "cls2").unwrap();

    let upgraded = redis_store(&server, "kg");
    assert_eq!(canary_without_c1(&upgraded).await.as_deref(), Some("k1"));
    let none: Option<Vec<u8>> = c.hget("kg:{p}:meta", "sel").unwrap();
    assert_eq!(none, None, "a select writes no settings");
    upgraded.sync(&sp).await.unwrap();
    let again: Vec<u8> = c.hget("kg:{p}:meta", "sel").unwrap();
    assert_eq!(again, sel, "the same config packs the same settings");
    let layout: String = c.hget("kg:{p}:meta", "layout").unwrap();
    assert_eq!(layout, "cls4");
    assert_eq!(canary_without_c1(&upgraded).await.as_deref(), Some("k1"));
}

/// During a rolling upgrade a replica of the previous version may sync a changed config: it
/// writes the settings field by field and its own layout, and leaves `sel` as it was. A select
/// then follows the fields, not the stale `sel`: here canary requests may no longer fall back.
#[tokio::test]
async fn settings_an_older_sync_wrote_field_by_field_win_over_a_stale_packed_copy() {
    let server = RedisServer::start();
    let sp = spec("p", &[("k1", 1, "stable"), ("c1", 1, "canary")]);
    let store = redis_store(&server, "kg");
    store.sync(&sp).await.unwrap();
    assert_eq!(
        canary_without_c1(&store).await.as_deref(),
        Some("k1"),
        "the config lets canary requests fall back"
    );
    // The older replica's sync of a config with `fallback = false`.
    let mut c = server.conn();
    let _: () = c
        .hset_multiple(
            "kg:{p}:meta",
            &[
                ("canary_fallback", "0"),
                ("layout", "cls2"),
                ("config_hash", "older"),
            ],
        )
        .unwrap();
    assert_eq!(canary_without_c1(&store).await, None);
}

/// A pool whose counts an earlier version's select calls left short (a coalesced call benched a
/// key twice: `tests/it/store/coalesce.rs`) gets them back at the first sync of this layout
/// (`cls4`), with its config unchanged: the class sets, their counts and the per-state counts
/// are rebuilt from the key hashes, and every selectable key is drawn again.
#[tokio::test]
async fn a_pool_with_class_counts_left_short_is_recounted_at_the_next_sync() {
    let server = RedisServer::start();
    let sp = spec(
        "p",
        &[
            ("a", 1, "stable"),
            ("b", 1, "stable"),
            ("c", 3, "stable"),
            ("d", 1, "stable"),
            ("x", 2, "canary"),
        ],
    );
    let store = redis_store(&server, "kg");
    store.sync(&sp).await.unwrap();
    store
        .set_state("p", &kid("d"), keygate::store::AdminState::Disable)
        .await
        .unwrap();
    let mut c = server.conn();
    let exact: HashMap<String, i64> = c.hgetall("kg:{p}:clsn:stable").unwrap();
    let meta_counts = |c: &mut redis::Connection| -> Vec<i64> {
        ["cnt:active", "cnt:cooling", "cnt:disabled"]
            .iter()
            .map(|f| c.hget("kg:{p}:meta", *f).unwrap_or(0))
            .collect()
    };
    assert_eq!(meta_counts(&mut c), [4, 0, 1]);
    // As the double benches left it: counts short, a key out of its set, the previous layout.
    let _: () = c
        .hset_multiple("kg:{p}:clsn:stable", &[("0", -1), ("total", 0)])
        .unwrap();
    let _: () = c.zrem("kg:{p}:cls:stable:0", "b").unwrap();
    let _: () = c
        .hset_multiple("kg:{p}:meta", &[("cnt:active", "2"), ("cnt:cooling", "2")])
        .unwrap();
    let _: () = c.hset("kg:{p}:meta", "layout", "cls3").unwrap();

    redis_store(&server, "kg").sync(&sp).await.unwrap();
    let counts: HashMap<String, i64> = c.hgetall("kg:{p}:clsn:stable").unwrap();
    assert_eq!(counts, exact);
    assert_eq!(
        counts,
        HashMap::from([("0".into(), 2), ("1".into(), 1), ("total".into(), 5)])
    );
    let members: Vec<String> = c.zrange("kg:{p}:cls:stable:0", 0, -1).unwrap();
    assert_eq!(members, ["a", "b"]);
    assert_eq!(meta_counts(&mut c), [4, 0, 1]);
    let layout: String = c.hget("kg:{p}:meta", "layout").unwrap();
    assert_eq!(layout, "cls4");

    // Every active stable key is drawn again.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..200u64 {
        let req = SelectRequest {
            route: Route::Stable,
            exclude: &[],
            rand: i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11,
            now_ms: None,
            tokens: 0,
        };
        if let Selection::Key(ch) = store.select("p", &req).await.unwrap() {
            seen.insert(ch.key.as_str().to_string());
        }
    }
    assert_eq!(
        seen,
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    );
}
