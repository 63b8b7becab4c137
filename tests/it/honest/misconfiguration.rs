//! Misconfiguration is loud: a Redis never reached keeps `/readyz` at 503 with a start-up
//! warning, a `--mock-upstream` no pool uses is warned about, and every shipped config file
//! passes `keygate check-config` run as its own header says.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::admin::K3;
use crate::harness::gateway::{config_toml, http};
use crate::harness::processes::KeygateProcess;
use crate::harness::redis_server::free_port;
use crate::harness::{wait_until, RedisServer};

async fn readyz(c: &reqwest::Client, gw: &KeygateProcess) -> (u16, String) {
    let r = c.get(gw.url("/readyz")).send().await.expect("GET /readyz");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_stays_503_until_the_configured_redis_answers_once() {
    let mut redis = RedisServer::start();
    redis.kill();
    let toml = config_toml(Some(&redis.url()), "http://127.0.0.1:9/v1", &K3, "");
    let gw = KeygateProcess::start(&toml, &[]).await;
    let c = http();
    let (status, body) = readyz(&c, &gw).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("has not been reached"), "{body}");
    assert!(
        gw.proc.log().contains("does not answer at start-up"),
        "{}",
        gw.proc.log()
    );
    redis.start_again();
    wait_until(
        Duration::from_secs(10),
        "/readyz ready once Redis answers",
        || async { readyz(&c, &gw).await.0 == 200 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mock_upstream_that_no_pool_uses_is_warned_about() {
    let pool_port = free_port();
    let mock_addr = format!("127.0.0.1:{}", free_port());
    let toml = config_toml(None, &format!("http://127.0.0.1:{pool_port}/v1"), &K3, "");
    let gw = KeygateProcess::start_with_args(&toml, &[], &["--mock-upstream", &mock_addr]).await;
    assert!(
        gw.proc.log().contains("--mock-upstream serves no pool"),
        "{}",
        gw.proc.log()
    );
    // The pool that does name the mock's address: no warning.
    let toml = config_toml(None, &format!("http://{mock_addr}/v1"), &K3, "");
    drop(gw);
    let gw = KeygateProcess::start_with_args(&toml, &[], &["--mock-upstream", &mock_addr]).await;
    assert!(
        !gw.proc.log().contains("serves no pool"),
        "{}",
        gw.proc.log()
    );
}

/// Every `*.toml` under `dir`.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// The `keygate check-config` command a config file's header documents, as environment
/// assignments and arguments; the plain command when the header names none.
fn documented_check(root: &Path, file: &Path) -> (Vec<(String, String)>, Vec<String>) {
    let text = std::fs::read_to_string(file).expect("read config");
    let relative = file
        .strip_prefix(root)
        .expect("under the root")
        .display()
        .to_string();
    let line = (text.lines())
        .take_while(|l| l.starts_with('#'))
        .find(|l| l.contains("keygate check-config"));
    let Some(line) = line else {
        return (Vec::new(), vec!["check-config".to_string(), relative]);
    };
    let words: Vec<&str> = line.trim_start_matches('#').split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "keygate")
        .expect("the command");
    let env = (words[..at].iter())
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (env, words[at + 1..].iter().map(|w| w.to_string()).collect())
}

#[test]
fn every_shipped_config_passes_check_config_as_its_header_documents() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files: Vec<PathBuf> = ["examples", "deploy"]
        .iter()
        .flat_map(|d| toml_files(&root.join(d)))
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        let (env, args) = documented_check(root, &file);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .current_dir(root)
            .args(&args)
            .env_clear()
            .envs(env)
            .output()
            .expect("run keygate check-config");
        assert!(
            out.status.success(),
            "{}: `keygate {}` failed:\n{}",
            file.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
