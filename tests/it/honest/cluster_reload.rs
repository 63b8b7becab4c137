//! A reload asked of one replica reaches every replica sharing its Redis (each re-reads its own
//! file and says whether it differs from the asking replica's), and a replica notices a change
//! of its own config file, a ConfigMap-style symlink swap included. Real `keygate serve`
//! processes.

use std::path::Path;
use std::time::Duration;

use keygate::mock::MockUpstream;
use redis::Commands;
use serde_json::Value;

use crate::admin::cli::keygate_cli;
use crate::admin::{ADMIN_TOKEN, K3};
use crate::harness::gateway::{config_toml, http, CLIENT_TOKEN};
use crate::harness::processes::KeygateProcess;
use crate::harness::{wait_until, RedisServer};

fn with_models(redis: Option<&str>, upstream: &str, models: &[&str]) -> String {
    let list: Vec<String> = models.iter().map(|m| format!("\"{m}\"")).collect();
    config_toml(
        redis,
        upstream,
        &K3,
        &format!("models = [{}]\n", list.join(", ")),
    )
}

/// The model ids `GET /v1/models` lists on `gw` (the pool's allowlist, answered by keygate).
async fn models_of(c: &reqwest::Client, gw: &KeygateProcess) -> Vec<String> {
    let r = c
        .get(gw.url("/v1/models"))
        .bearer_auth(CLIENT_TOKEN)
        .send()
        .await
        .expect("models");
    let body: Value = r.json().await.expect("JSON");
    (body["data"].as_array().cloned().unwrap_or_default())
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect()
}

fn rewrite(gw: &KeygateProcess, text: &str) {
    std::fs::write(gw.proc.dir().join("keygate.toml"), text).expect("rewrite config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_asked_of_one_replica_reaches_all_and_lists_each_answer() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let url = redis.url();
    let before = with_models(Some(&url), &mock.base_url(), &["m1"]);
    // Only the cluster-wide reload may change a config here, not each file's own watch.
    let env = [
        ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("KEYGATE_SERVER__CONFIG_WATCH_MS", "0"),
    ];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(KeygateProcess::start(&before, &env).await);
    }
    let mut conn = redis.conn();
    wait_until(
        Duration::from_secs(10),
        "three replicas announce themselves",
        || {
            let n: usize = conn.zcard("kg:replicas").unwrap_or(0);
            async move { n >= 3 }
        },
    )
    .await;
    let same = with_models(Some(&url), &mock.base_url(), &["m1", "m2"]);
    let different = with_models(Some(&url), &mock.base_url(), &["m1", "m3"]);
    rewrite(&replicas[0], &same);
    rewrite(&replicas[1], &same);
    rewrite(&replicas[2], &different);

    let run = keygate_cli(
        &replicas[0].url(""),
        &[("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
        &["reload"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout.matches("  replica ").count(),
        3,
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("(its file differs)"), "{}", run.stdout);

    let c = http();
    let r = c
        .post(replicas[0].url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.expect("JSON");
    let answers = report["replicas"].as_array().expect("replicas").clone();
    assert_eq!(answers.len(), 3, "{report}");
    for (i, gw) in replicas.iter().enumerate() {
        let suffix = format!("-{}", gw.proc.pid());
        let answer = (answers.iter())
            .find(|a| {
                a["replica"]
                    .as_str()
                    .is_some_and(|id| id.ends_with(&suffix))
            })
            .unwrap_or_else(|| panic!("no answer of replica {i}: {report}"));
        assert_eq!(answer["ok"], true, "{answer}");
        assert_eq!(answer["differs_from_requester"], i == 2, "{answer}");
    }
    assert_eq!(models_of(&c, &replicas[1]).await, ["m1", "m2"]);
    assert_eq!(models_of(&c, &replicas[2]).await, ["m1", "m3"]);
    assert!(
        replicas[2]
            .proc
            .log()
            .contains("differs from the one of the replica that asked"),
        "{}",
        replicas[2].proc.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reloads_by_itself_when_a_configmap_symlink_swap_changes_its_file() {
    let mock = MockUpstream::start().await;
    let before = with_models(None, &mock.base_url(), &["m1"]);
    let gw = KeygateProcess::start(&before, &[("KEYGATE_SERVER__CONFIG_WATCH_MS", "100")]).await;
    let c = http();
    assert_eq!(models_of(&c, &gw).await, ["m1"]);
    // What the kubelet does: the new content in a new directory, then one rename of a symlink.
    let dir: &Path = gw.proc.dir();
    std::fs::create_dir(dir.join("v2")).expect("v2");
    let after = with_models(None, &mock.base_url(), &["m1", "m2"]);
    std::fs::write(dir.join("v2/keygate.toml"), after).expect("write v2");
    std::os::unix::fs::symlink("v2/keygate.toml", dir.join("next")).expect("symlink");
    std::fs::rename(dir.join("next"), dir.join("keygate.toml")).expect("swap");
    wait_until(
        Duration::from_secs(10),
        "the new allowlist is served",
        || async { models_of(&c, &gw).await == ["m1", "m2"] },
    )
    .await;
}
