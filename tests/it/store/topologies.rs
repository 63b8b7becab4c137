//! Redis Sentinel and Redis Cluster with real processes: a gateway follows two Sentinel
//! failovers (forced, then a killed master), and on a 3-master Cluster pools spread over slots
//! on different nodes while every store operation runs without `CROSSSLOT`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keygate::config::hash_token;
use keygate::mock::{Behavior, MockUpstream};
use keygate::pool::{KeyState, Outcome};
use keygate::store::redis::RedisStore;
use keygate::store::{
    AdminState, Endpoint, KeyStore, KeyStoreExt, Report, Route, SelectRequest, Selection,
    SyncReceipt,
};
use tokio::task::block_in_place;

use super::failover::{gateway_toml, KEYS};
use crate::harness::gateway::{chat, TestGateway, CLIENT_TOKEN};
use crate::harness::load::{failed, quantile, warmed_up, Load, TIMING};
use crate::harness::topology::{query, RedisCluster, SentinelGroup, MASTER_NAME};
use crate::harness::{kid, spec, wait_until};

/// Sum of the `successes` counters of pool `p`'s keys on the server at `port`.
fn successes_on(port: u16) -> u64 {
    KEYS.iter()
        .map(|k| {
            let v: Option<String> = query(
                port,
                redis::cmd("HGET")
                    .arg(format!("kg:{{p}}:key:{}", k.id))
                    .arg("successes"),
            );
            v.and_then(|s| s.parse().ok()).unwrap_or(0)
        })
        .sum()
}

/// Waits until writes through the gateway land on `port` (its success counters grow by 20).
async fn writes_reach(port: u16, what: &str) {
    let base = successes_on(port);
    wait_until(Duration::from_secs(15), what, || async move {
        successes_on(port) >= base + 20
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sentinel_failover_and_a_killed_master_the_gateway_writes_to_the_new_master_within_seconds(
) {
    let _serial = TIMING.lock().await;
    let mut group = block_in_place(|| SentinelGroup::start(3));
    let mock = MockUpstream::start().await;
    let sentinels: Vec<String> = group
        .sentinel_addrs()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let store = format!(
        "sentinels = [{}]\nsentinel_master = \"{MASTER_NAME}\"\ntimeout_ms = 50",
        sentinels.join(", ")
    );
    let gw = TestGateway::start(&gateway_toml(&store, &mock.base_url())).await;
    let load = Load::start(&[&gw], 2);
    warmed_up(&mock).await;
    let first = group.master_port();
    writes_reach(first, "writes on the first master").await;

    // 1. SENTINEL FAILOVER: the replica is promoted, the old master becomes its replica.
    let t1 = Instant::now();
    block_in_place(|| group.force_failover());
    let second = block_in_place(|| group.wait_new_master(first, Duration::from_secs(15)));
    let promoted1 = t1.elapsed();
    writes_reach(second, "writes on the master promoted by SENTINEL FAILOVER").await;
    let writes1 = t1.elapsed();

    // 2. The master is killed: Sentinel notices (500 ms) and promotes the other node. First
    // the old master rejoins as a replica (as an operator would; Sentinel itself waits about
    // 8 s before it reconfigures a demoted master that still answers).
    let _: Option<String> = query(first, redis::cmd("REPLICAOF").arg("127.0.0.1").arg(second));
    block_in_place(|| group.wait_settled(Duration::from_secs(30)));
    let t2 = Instant::now();
    block_in_place(|| group.server_mut(second).kill());
    let third = block_in_place(|| group.wait_new_master(second, Duration::from_secs(20)));
    let promoted2 = t2.elapsed();
    writes_reach(third, "writes on the master promoted after a kill").await;
    let writes2 = t2.elapsed();
    wait_until(Duration::from_secs(5), "gateway back on Redis", || async {
        !gw.state.store.degraded()
    })
    .await;
    let samples = load.finish().await;
    eprintln!(
        "FIGURES sentinel: {} requests, {} failed, p99 {:?}, max {:?}; SENTINEL FAILOVER: new \
         master named after {promoted1:?}, gateway writing to it after {writes1:?}; killed \
         master: new master named after {promoted2:?}, gateway writing to it after {writes2:?}",
        samples.len(),
        failed(&samples).len(),
        quantile(&samples, 0.99),
        quantile(&samples, 1.0),
    );
    assert_eq!(third, first, "the original master came back as the master");
    assert!(
        writes1 < Duration::from_secs(5),
        "SENTINEL FAILOVER: {writes1:?}"
    );
    assert!(
        writes2 < Duration::from_secs(8),
        "killed master: {writes2:?}"
    );
    assert!(failed(&samples).is_empty(), "{:?}", failed(&samples));
}

/// Pool names whose bases `kg:{name}` live on three different nodes of `cluster`.
fn pools_on_every_node(cluster: &RedisCluster) -> Vec<String> {
    let (mut names, mut nodes) = (Vec::new(), BTreeSet::new());
    for i in 0..200 {
        let name = format!("pool{i}");
        if nodes.insert(cluster.node_of(&format!("kg:{{{name}}}:meta")).port) {
            names.push(name);
        }
        if names.len() == cluster.nodes.len() {
            break;
        }
    }
    names
}

/// A gateway config with one pool per name, two keys each, every pool open to the client.
fn cluster_toml(seeds: &[String], upstream: &str, pools: &[String]) -> String {
    let quoted = |v: &[String]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut t = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\ncluster_nodes = [{}]\ntimeout_ms = 100\n\n\
         [[clients]]\nname = \"tester\"\ntoken_sha256 = \"{}\"\npools = [{}]\n\n",
        quoted(seeds),
        hash_token(CLIENT_TOKEN),
        quoted(pools)
    );
    for p in pools {
        t.push_str(&format!(
            "[[pools]]\nname = \"{p}\"\nbase_url = \"{upstream}\"\nmax_attempts = 3\n\n"
        ));
        for k in ["a", "b"] {
            t.push_str(&format!(
                "[[pools.keys]]\nid = \"{p}-{k}\"\nsecret = \"sk-{p}-{k}\"\n\n"
            ));
        }
    }
    t
}

/// Every store operation on one pool, straight on the Cluster store (no fallback to hide an
/// error).
async fn every_operation(store: &RedisStore, pool: &str) {
    let sp = spec(pool, &[("k1", 1, "stable"), ("k2", 1, "stable")]);
    assert!(matches!(
        store.sync(&sp).await.unwrap(),
        SyncReceipt::Synced { created: 2, .. }
    ));
    let req = SelectRequest {
        route: Route::Bucket(50),
        exclude: &[],
        rand: 7,
        now_ms: None,
        tokens: 0,
    };
    assert!(matches!(
        store.select(pool, &req).await.unwrap(),
        Selection::Key(_)
    ));
    let k1 = kid("k1");
    let r = Report {
        key: &k1,
        outcome: Outcome::RateLimited,
        cooldown_ms: Some(60_000),
        http_status: 429,
        probe: false,
        now_ms: None,
    };
    assert_eq!(
        store.report(pool, &r).await.unwrap().state,
        KeyState::Cooling
    );
    let k2 = kid("k2");
    let state = store.set_state(pool, &k2, AdminState::Drain).await.unwrap();
    assert_eq!(state, KeyState::Draining);
    store
        .set_state(pool, &k2, AdminState::Enable)
        .await
        .unwrap();
    store.set_weight(pool, &k2, 5).await.unwrap();
    store.set_group(pool, &k2, "canary").await.unwrap();
    store.set_canary(pool, 30).await.unwrap();
    store.reset_counters(pool, &k1).await.unwrap();
    let snap = store.snapshot(pool, None).await.unwrap();
    assert_eq!(snap.canary_percent, 30);
    let k2_rec = snap.keys.iter().find(|k| k.id == "k2").unwrap();
    assert_eq!((k2_rec.weight, k2_rec.group.as_str()), (5, "canary"));
    assert_eq!(
        snap.keys.iter().find(|k| k.id == "k1").unwrap().status,
        KeyState::Cooling
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_master_cluster_pools_spread_over_slots_and_every_operation_runs_without_crossslot(
) {
    let cluster = block_in_place(|| RedisCluster::start(3));
    let pools = block_in_place(|| pools_on_every_node(&cluster));
    assert_eq!(pools.len(), 3, "pools on three nodes");
    let slots: BTreeSet<u16> = pools
        .iter()
        .map(|p| cluster.keyslot(&format!("kg:{{{p}}}")))
        .collect();
    assert_eq!(slots.len(), 3, "three different slots");

    // The store itself: every operation on every pool, then again after FUNCTION FLUSH and
    // SCRIPT FLUSH on every node (the library is loaded again on every master).
    let endpoint = Endpoint::Cluster {
        nodes: cluster.seeds(),
    };
    let store = RedisStore::connect_to(
        &endpoint,
        "direct",
        Duration::from_millis(500),
        Duration::from_millis(500),
    )
    .unwrap();
    store.ping_redis().await.unwrap();
    for p in &pools {
        every_operation(&store, p).await;
        let node = cluster.node_of(&format!("direct:{{{p}}}:key:k1"));
        let status: Option<String> = query(
            node.port,
            redis::cmd("HGET")
                .arg(format!("direct:{{{p}}}:key:k1"))
                .arg("status"),
        );
        assert_eq!(
            status.as_deref(),
            Some("cooling"),
            "pool {p} on node {}",
            node.port
        );
    }
    for n in &cluster.nodes {
        block_in_place(|| {
            n.function_flush();
            n.script_flush();
        });
    }
    // k1 cools, k2 went to the canary group: a canary selection finds k2.
    let req = SelectRequest {
        route: Route::Canary,
        exclude: &[],
        rand: 1,
        now_ms: None,
        tokens: 0,
    };
    for p in &pools {
        assert!(matches!(
            store.select(p, &req).await.unwrap(),
            Selection::Key(_)
        ));
    }

    // A gateway on the Cluster: traffic to every pool, one key of each rate-limited.
    let mock = MockUpstream::start().await;
    for p in &pools {
        mock.set_steady(
            &format!("sk-{p}-a"),
            Behavior::RateLimited {
                retry_after: Some("30".into()),
            },
        );
    }
    let gw = TestGateway::start(&cluster_toml(&cluster.seeds(), &mock.base_url(), &pools)).await;
    let c = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..60 {
        let pool = &pools[i % pools.len()];
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_TOKEN)
            .header("X-Keygate-Pool", pool.as_str())
            .json(&chat("m", false))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    for p in &pools {
        let snap = gw.state.store.snapshot(p, None).await.unwrap();
        let a = snap.keys.iter().find(|k| k.id == format!("{p}-a")).unwrap();
        assert_eq!(a.status, KeyState::Cooling, "{p}: {a:?}");
    }
    let errors: u64 = ["select", "report", "snapshot", "sync", "ping"]
        .iter()
        .map(|op| gw.state.metrics.store_errors.with_label_values(&[op]).get())
        .sum();
    eprintln!(
        "FIGURES cluster: 3 masters, pools {pools:?} on slots {slots:?}; {} requests, {} not 200, \
         {errors} store errors, degraded {}",
        statuses.len(),
        statuses.iter().filter(|s| **s != 200).count(),
        gw.state.store.degraded()
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(errors, 0, "a store call failed on the Cluster");
    assert!(!gw.state.store.degraded());
}
