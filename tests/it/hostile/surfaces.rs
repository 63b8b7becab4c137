//! Operator surfaces: `/admin` on a listener of its own, admin refusals logged with the peer
//! and counted, short admin tokens refused at start, and `check-config` warnings about how
//! secrets are kept.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use super::*;
use crate::harness::processes::{keygate_binary, KeygateProcess};
use crate::harness::redis_server::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_on_its_own_listener_is_not_on_the_public_port() {
    let port = free_port();
    let env =
        Isolated::start(move |toml| format!("{toml}\n[admin]\nlisten = \"127.0.0.1:{port}\"\n"))
            .await;
    let c = http();
    let admin_url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    wait_until(Duration::from_secs(5), "the admin listener up", || async {
        let r = c
            .get(admin_url("/admin/pools"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await;
        matches!(r, Ok(r) if r.status() == 200)
    })
    .await;
    let public = c
        .get(env.gw().url("/admin/pools"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await;
    assert_eq!(
        public.unwrap().status(),
        404,
        "/admin must not be on the public port"
    );
    for path in ["/v1/chat/completions", "/metrics", "/healthz"] {
        let r = c.get(admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} on the admin listener");
    }
    env.assert_still_serving().await;
}

const PROCESS_ADMIN_TOKEN: &str = "process-admin-token-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_refusal_is_logged_with_the_peer_and_counted_never_with_the_token() {
    let mock = MockUpstream::start().await;
    let toml = config_toml(None, &mock.base_url(), &KEYS, "");
    let kp = KeygateProcess::start(&toml, &[("KEYGATE_ADMIN_TOKEN", PROCESS_ADMIN_TOKEN)]).await;
    let c = http();
    let guess = "guessed-admin-token-that-must-not-be-logged";
    let r = c
        .get(kp.url("/admin/pools"))
        .bearer_auth(guess)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    wait_until(Duration::from_secs(5), "the refusal logged", || async {
        kp.proc.log().contains("admin request refused")
    })
    .await;
    let log = kp.proc.log();
    let line = log
        .lines()
        .find(|l| l.contains("admin request refused"))
        .unwrap();
    assert!(line.contains("127.0.0.1"), "the peer address: {line}");
    assert!(
        !log.contains(guess) && !log.contains(PROCESS_ADMIN_TOKEN),
        "{log}"
    );
    let metrics = scrape(&c, &kp.url("/metrics")).await;
    assert!(
        metrics.contains("keygate_admin_auth_failures_total 1"),
        "{metrics}"
    );
    let ok = c
        .get(kp.url("/admin/pools"))
        .bearer_auth(PROCESS_ADMIN_TOKEN)
        .send()
        .await;
    assert_eq!(ok.unwrap().status(), 200);
}

#[tokio::test]
async fn a_short_admin_token_is_refused_at_start_naming_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keygate.toml");
    std::fs::write(&file, config_toml(None, "http://127.0.0.1:9/v1", &KEYS, "")).unwrap();
    let short = "short-admin-token-1234";
    let out = Command::new(keygate_binary())
        .args(["serve", "--config"])
        .arg(&file)
        .env("KEYGATE_ADMIN_TOKEN", short)
        .env(
            "KEYGATE_SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("KEYGATE_ADMIN_TOKEN is 22 characters"),
        "{stderr}"
    );
    assert!(stderr.contains("at least 32"), "{stderr}");
    assert!(!stderr.contains(short), "{stderr}");
}

#[test]
fn check_config_warns_on_inline_secrets_and_readable_or_symlinked_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, secret: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, secret).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write("private.key", "sk-private-file-1111", 0o600);
    write("readable.key", "sk-readable-file-2222", 0o644);
    std::os::unix::fs::symlink(dir.path().join("private.key"), dir.path().join("link.key"))
        .unwrap();
    let mut toml = config_toml(
        None,
        "http://127.0.0.1:9/v1",
        &[key("inline", "sk-inline-3333")],
        "",
    );
    for (id, file) in [
        ("private", "private.key"),
        ("readable", "readable.key"),
        ("link", "link.key"),
    ] {
        toml.push_str(&format!(
            "[[pools.keys]]\nid = \"{id}\"\nsecret_file = \"{file}\"\n\n"
        ));
    }
    let file = dir.path().join("keygate.toml");
    std::fs::write(&file, toml).unwrap();
    let out = Command::new(keygate_binary())
        .arg("check-config")
        .arg(&file)
        .env_remove("KEYGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "warnings are not errors: {stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 3, "{stderr}");
    let about = |id: &str, what: &str| {
        warnings
            .iter()
            .any(|w| w.contains(&format!("pools.p.keys.{id}:")) && w.contains(what))
    };
    assert!(about("inline", "inline"), "{stderr}");
    assert!(about("readable", "mode 644"), "{stderr}");
    assert!(about("link", "symlink"), "{stderr}");
    for secret in [
        "sk-private-file-1111",
        "sk-readable-file-2222",
        "sk-inline-3333",
    ] {
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "{secret} shown"
        );
    }
}
