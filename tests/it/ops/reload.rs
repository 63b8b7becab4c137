//! Hot reload: the `reload` function on an in-process gateway under a steady request
//! stream, invalid files, settings that need a restart, and SIGHUP / `keygate reload` on a real
//! `keygate serve` process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keygate::config::Config;
use keygate::mock::MockUpstream;
use keygate::reload::reload;
use reqwest::Method;
use serde_json::Value;

use crate::admin::cli::keygate_cli;
use crate::admin::{admin, admin_config, key_of, pool_view, ADMIN_TOKEN, K3};
use crate::harness::gateway::{chat, config_toml, http, key, TestGateway, TestKey, CLIENT_TOKEN};
use crate::harness::processes::KeygateProcess;
use crate::harness::{wait_until, RedisServer};

const K4: TestKey = key("k4", "sk-test-four-4444");

/// A config file in a temp dir (kept alive by the returned guard).
fn config_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// A gateway serving `config`, which it reloads from `path`.
async fn start_from_file(config: Config, path: &std::path::Path) -> TestGateway {
    let state = keygate::gateway::build_state(config, Some(path.to_path_buf()))
        .await
        .expect("gateway state");
    TestGateway::start_state(state).await
}

/// One finished request of the steady stream.
struct Served {
    started_after_reload: bool,
    status: u16,
    key: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_adds_a_key_and_drains_a_removed_one_without_failing_a_request() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    mock.set_delay_ms(5); // requests are in flight while the gateway is swapped
    let toml = config_toml(Some(&redis.url()), &mock.base_url(), &K3, "");
    let (_dir, path) = config_file(&toml);
    let gw = start_from_file(Config::load(&path).unwrap(), &path).await;
    let before = gw.state.gateway();

    let reloaded = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(Mutex::new(Vec::<Served>::new()));
    let mut streams = Vec::new();
    for _ in 0..4 {
        let (c, url) = (http(), gw.url("/v1/chat/completions"));
        let (reloaded, stop, served) = (reloaded.clone(), stop.clone(), served.clone());
        streams.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let after = reloaded.load(Ordering::SeqCst);
                let r = c
                    .post(&url)
                    .bearer_auth(CLIENT_TOKEN)
                    .json(&chat("m", false))
                    .send()
                    .await
                    .unwrap();
                let key = r
                    .headers()
                    .get("x-keygate-key")
                    .map(|v| v.to_str().unwrap().to_string());
                served.lock().unwrap().push(Served {
                    started_after_reload: after,
                    status: r.status().as_u16(),
                    key: key.unwrap_or_default(),
                });
            }
        }));
    }
    let count = |after: bool| {
        served
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.started_after_reload == after)
            .count()
    };
    wait_until(
        Duration::from_secs(10),
        "traffic before the reload",
        || async { count(false) >= 40 },
    )
    .await;

    let mut next = vec![K3[0].clone(), K3[2].clone(), K4];
    next[1].weight = 3;
    std::fs::write(
        &path,
        config_toml(Some(&redis.url()), &mock.base_url(), &next, ""),
    )
    .unwrap();
    let report = reload(&gw.state).await.expect("reload");
    reloaded.store(true, Ordering::SeqCst);
    assert_eq!(report.pools.len(), 1);
    assert_eq!(
        (
            report.pools[0].keys_added.clone(),
            report.pools[0].keys_removed.clone()
        ),
        (vec!["k4".to_string()], vec!["k2".to_string()])
    );
    assert!(report.restart_needed.is_empty(), "{report:?}");

    wait_until(
        Duration::from_secs(10),
        "k4 serving after the reload",
        || async { mock.requests(K4.secret) > 0 && count(true) >= 80 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for s in streams {
        s.await.unwrap();
    }
    let served = std::mem::take(&mut *served.lock().unwrap());
    let failed: Vec<u16> = served
        .iter()
        .map(|s| s.status)
        .filter(|s| *s != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        served.len()
    );
    let late_k2 = served
        .iter()
        .filter(|s| s.started_after_reload && s.key == "k2")
        .count();
    assert_eq!(late_k2, 0, "the removed key was selected after the reload");
    assert!(
        served
            .iter()
            .any(|s| !s.started_after_reload && s.key == "k2"),
        "k2 served before"
    );

    let snap = gw.state.store.snapshot("p", None).await.unwrap();
    let rec = |id: &str| snap.keys.iter().find(|k| k.id == id).unwrap().clone();
    assert_eq!(
        (rec("k2").status.as_str(), rec("k2").reason.as_str()),
        ("draining", "removed")
    );
    assert_eq!((rec("k4").status.as_str(), rec("k3").weight), ("active", 3));
    let after = gw.state.gateway();
    assert!(!Arc::ptr_eq(&before, &after), "the gateway was swapped");
    let ids: Vec<&str> = after.config.pools[0]
        .keys
        .iter()
        .map(|k| k.id.as_str())
        .collect();
    assert_eq!(ids, ["k1", "k3", "k4"]);
}

#[tokio::test]
async fn reloading_an_invalid_file_keeps_the_running_config_and_reports_every_problem() {
    let mock = MockUpstream::start().await;
    let toml = config_toml(None, &mock.base_url(), &K3, "");
    let (_dir, path) = config_file(&toml);
    let gw = start_from_file(admin_config(&toml), &path).await;
    let before = gw.state.gateway();
    let c = http();

    let invalid = toml
        .replace("max_attempts = 3", "max_attempts = 99")
        .replacen("weight = 1", "weight = 5000", 1)
        .replace(
            "shutdown_grace_s = 5",
            "shutdown_grace_s = 5\nbogus_field = 1",
        );
    std::fs::write(&path, &invalid).unwrap();
    let problems = reload(&gw.state).await.expect_err("invalid file accepted");
    for needle in ["max_attempts", "weight", "bogus_field"] {
        assert!(
            problems.contains(needle),
            "{needle} not reported: {problems}"
        );
    }
    let (status, body) = admin(&c, &gw, Method::POST, "/reload", None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_config");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("max_attempts") && message.contains("bogus_field"),
        "{message}"
    );

    for broken in ["[[pools]\nname = ", ""] {
        std::fs::write(&path, broken).unwrap();
        assert!(reload(&gw.state).await.is_err(), "{broken:?} accepted");
    }
    std::fs::remove_file(&path).unwrap();
    assert!(reload(&gw.state).await.unwrap_err().contains("cannot read"));

    assert!(
        Arc::ptr_eq(&before, &gw.state.gateway()),
        "the running config was replaced"
    );
    let view = pool_view(&c, &gw).await; // the admin API (and its token) still answer
    assert_eq!(view.keys.len(), 3);
    let r = crate::harness::gateway::post_chat(&c, &gw, &chat("m", false), &[]).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_changed_listen_address_or_store_section_is_kept_until_a_restart() {
    let mock = MockUpstream::start().await;
    let toml = config_toml(None, &mock.base_url(), &K3, "");
    let (_dir, path) = config_file(&toml);
    let gw = start_from_file(Config::load(&path).unwrap(), &path).await;
    let changed = toml
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"")
        .replace("max_body_bytes = 65536", "max_body_bytes = 1000")
        + "\n[store]\ntimeout_ms = 999\n";
    std::fs::write(&path, changed).unwrap();
    let report = reload(&gw.state).await.expect("reload");
    assert_eq!(report.restart_needed, ["server.listen", "store"]);
    let now = gw.state.gateway();
    assert_eq!(now.config.server.listen.to_string(), "127.0.0.1:0");
    assert_eq!(now.config.store.timeout_ms, 50);
    assert_eq!(
        now.config.server.max_body_bytes, 1000,
        "live settings apply"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_keygate_reload_make_a_running_process_reload_its_config_file() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let toml = |keys: &[TestKey]| config_toml(Some(&redis.url()), &mock.base_url(), keys, "");
    let kp = KeygateProcess::start(&toml(&K3), &[("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let file = kp.proc.dir().join("keygate.toml");
    let c = http();
    let keys_url = kp.url("/admin/pools/p/keys");
    let listed = |c: reqwest::Client, url: String| async move {
        let r = c.get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };

    // SIGHUP: k4 joins.
    let with_k4 = [K3[0].clone(), K3[1].clone(), K3[2].clone(), K4];
    std::fs::write(&file, toml(&with_k4)).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &kp.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // Listed with its fingerprint: the reload syncs the store before it swaps the runtime, so
    // a listing in between shows k4 (from the store) without one (the old config lacks it).
    wait_until(Duration::from_secs(10), "k4 listed after SIGHUP", || {
        let (c, url) = (c.clone(), keys_url.clone());
        async move {
            listed(c, url).await["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["id"] == "k4" && !k["fingerprint"].is_null())
        }
    })
    .await;
    let view: keygate::admin::PoolView =
        serde_json::from_value(listed(c.clone(), keys_url.clone()).await).unwrap();
    assert_eq!(key_of(&view, "k4").fingerprint.as_deref(), Some("sk-…4444"));
    let mut seen_k4 = false;
    for _ in 0..200 {
        let r = c
            .post(kp.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_TOKEN)
            .json(&chat("m", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if r.headers()["x-keygate-key"] == "k4" {
            seen_k4 = true;
            break;
        }
    }
    assert!(
        seen_k4,
        "the process never used the key it gained on SIGHUP"
    );

    // `keygate reload` (POST /admin/reload): k2 leaves and drains.
    let without_k2 = [K3[0].clone(), K3[2].clone(), K4];
    std::fs::write(&file, toml(&without_k2)).unwrap();
    let run = keygate_cli(
        &kp.url(""),
        &[("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
        &["reload"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.starts_with("config reloaded from "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("pool p: 3 keys, draining k2"),
        "{}",
        run.stdout
    );
    let view: keygate::admin::PoolView =
        serde_json::from_value(listed(c.clone(), keys_url).await).unwrap();
    let k2 = key_of(&view, "k2");
    assert_eq!(
        (
            k2.state.as_str(),
            k2.reason.as_str(),
            k2.fingerprint.as_deref()
        ),
        ("draining", "removed", None)
    );

    // An invalid file on SIGHUP: logged, the process keeps serving its config.
    std::fs::write(&file, "[[pools]]\nname = 3\n").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &kp.proc.pid().to_string()])
        .status()
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the rejected reload logged",
        || async { kp.proc.log().contains("config reload rejected") },
    )
    .await;
    let view: keygate::admin::PoolView =
        serde_json::from_value(listed(c.clone(), kp.url("/admin/pools/p/keys")).await).unwrap();
    assert_eq!(view.counts.active, 3);
    assert!(
        !kp.proc.log().contains(ADMIN_TOKEN),
        "the admin token reached the log"
    );
    for k in &with_k4 {
        assert!(
            !kp.proc.log().contains(k.secret),
            "a secret reached the log"
        );
    }
}

/// The file watch (`server.config_watch_ms`) sees a config swapped the way Kubernetes swaps a
/// ConfigMap, by pointing a symlink at a new file, and a file rewritten in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_watch_reloads_a_config_swapped_by_symlink_or_rewritten_in_place() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let toml = |keys: &[TestKey]| config_toml(Some(&redis.url()), &mock.base_url(), keys, "");
    let env = [
        ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("KEYGATE_SERVER__CONFIG_WATCH_MS", "100"),
    ];
    let kp = KeygateProcess::start(&toml(&K3), &env).await;
    let dir = kp.proc.dir();
    let file = dir.join("keygate.toml");
    let c = http();
    let keys_url = kp.url("/admin/pools/p/keys");
    let listed_ids = |c: reqwest::Client, url: String| async move {
        let r = c.get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        let keys = v["keys"].as_array().cloned().unwrap_or_default();
        keys.iter()
            .filter(|k| !k["fingerprint"].is_null())
            .map(|k| k["id"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<String>>()
    };

    // Swapped by symlink: the path becomes a link to a new file holding k4 as well.
    let with_k4 = [K3[0].clone(), K3[1].clone(), K3[2].clone(), K4];
    let next = dir.join("keygate.next.toml");
    std::fs::write(&next, toml(&with_k4)).unwrap();
    let link = dir.join("keygate.link");
    std::os::unix::fs::symlink(&next, &link).unwrap();
    std::fs::rename(&link, &file).unwrap();
    wait_until(Duration::from_secs(10), "k4 listed after the swap", || {
        let (c, url) = (c.clone(), keys_url.clone());
        async move { listed_ids(c, url).await.contains(&"k4".to_string()) }
    })
    .await;

    // Rewritten in place (through the link): k4 leaves again.
    std::fs::write(&next, toml(&K3)).unwrap();
    wait_until(Duration::from_secs(10), "k4 gone after the rewrite", || {
        let (c, url) = (c.clone(), keys_url.clone());
        async move { !listed_ids(c, url).await.contains(&"k4".to_string()) }
    })
    .await;
    assert_eq!(listed_ids(c.clone(), keys_url.clone()).await.len(), 3);
}
