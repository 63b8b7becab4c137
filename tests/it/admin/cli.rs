//! The operator CLI (`keygate keys ...`, `keygate canary set`, `keygate reload`) run as a
//! process against a live gateway, with the token in the environment.

use keygate::mock::MockUpstream;
use reqwest::Method;

use super::{admin, key_of, pool_view, start_admin, ADMIN_TOKEN, K3};
use crate::harness::gateway::{config_toml, http, TestGateway};
use crate::harness::RedisServer;

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `keygate` binary with `KEYGATE_URL` pointing at `url` and the given environment.
pub async fn keygate_cli(url: &str, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.args(args)
        .env("KEYGATE_URL", url)
        .env_remove("KEYGATE_ADMIN_TOKEN")
        .envs(env.iter().copied());
    let out = cmd.output().await.expect("run keygate");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn cli(gw: &TestGateway, args: &[&str]) -> Run {
    keygate_cli(&gw.url(""), &[("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)], args).await
}

async fn ok(gw: &TestGateway, args: &[&str]) -> String {
    let run = cli(gw, args).await;
    assert_eq!(run.code, Some(0), "keygate {args:?}: {}", run.stderr);
    run.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_and_changes_keys_of_a_live_gateway() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let gw = start_admin(&config_toml(Some(&redis.url()), &mock.base_url(), &K3, "")).await;
    let c = http();

    let out = ok(&gw, &["keys", "list"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("pool p  canary canary 0%  active 3"),
        "{out}"
    );
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    let columns = [
        "ID",
        "STATE",
        "REASON",
        "WEIGHT",
        "GROUP",
        "ERRORS",
        "COOLDOWN",
        "LAST",
        "FINGERPRINT",
        "BUDGET",
    ];
    assert_eq!(header, columns, "{out}");
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        row,
        [
            "k1",
            "active",
            "-",
            "1",
            "stable",
            "0",
            "-",
            "-",
            "sk-…1111",
            "-"
        ],
        "{out}"
    );
    // Aligned: every row's FINGERPRINT starts in the header's column (counted in characters).
    let col = lines[1].find("FINGERPRINT").unwrap();
    for line in &lines[2..5] {
        let prefix: String = line.chars().take(col).collect();
        assert!(
            prefix.ends_with("  ") && line.chars().nth(col) == Some('s'),
            "{out}"
        );
    }
    for k in &K3 {
        assert!(!out.contains(k.secret), "{out}");
    }

    assert_eq!(
        ok(&gw, &["keys", "drain", "p", "k2"]).await,
        "p/k2: draining\n"
    );
    assert_eq!(
        ok(&gw, &["keys", "weight", "p", "k1", "7"]).await,
        "p/k1: weight 7\n"
    );
    assert_eq!(
        ok(&gw, &["keys", "group", "p", "k3", "canary"]).await,
        "p/k3: group canary\n"
    );
    assert_eq!(
        ok(&gw, &["canary", "set", "p", "30"]).await,
        "p: canary 30%\n"
    );
    assert_eq!(
        ok(&gw, &["keys", "reset", "p", "k1"]).await,
        "p/k1: counters reset\n"
    );
    let view = pool_view(&c, &gw).await;
    let k2 = key_of(&view, "k2");
    assert_eq!(
        (k2.state.as_str(), k2.reason.as_str()),
        ("draining", "admin")
    );
    assert_eq!(
        (
            key_of(&view, "k1").weight,
            key_of(&view, "k3").group.as_str()
        ),
        (7, "canary")
    );
    assert_eq!(view.canary_percent, 30);
    let out = ok(&gw, &["keys", "list", "--pool", "p"]).await;
    let k2_row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("k2 "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&k2_row[..3], ["k2", "draining", "admin"], "{out}");
    assert_eq!(
        ok(&gw, &["keys", "disable", "p", "k2"]).await,
        "p/k2: disabled\n"
    );
    assert_eq!(
        ok(&gw, &["keys", "enable", "p", "k2"]).await,
        "p/k2: active\n"
    );
    // `--token-env` names another variable; `--url` overrides KEYGATE_URL.
    let env = [("OPS_TOKEN", ADMIN_TOKEN)];
    let run = keygate_cli(
        "http://127.0.0.1:1",
        &env,
        &[
            "keys",
            "list",
            "--token-env",
            "OPS_TOKEN",
            "--url",
            &gw.url(""),
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(admin(&c, &gw, Method::GET, "/pools", None).await.0, 200);
}

#[tokio::test]
async fn cli_errors_print_the_gateways_message_and_exit_non_zero() {
    let mock = MockUpstream::start().await;
    let gw = start_admin(&config_toml(None, &mock.base_url(), &K3, "")).await;
    let url = gw.url("");
    let refused = [
        (
            &["keys", "drain", "p", "nope"][..],
            "Unknown key `nope`",
            "HTTP 404",
        ),
        (
            &["keys", "enable", "nope", "k1"][..],
            "Unknown pool `nope`",
            "HTTP 404",
        ),
        (
            &["keys", "weight", "p", "k1", "5000"][..],
            "0..=1000",
            "HTTP 400",
        ),
        (
            &["keys", "group", "p", "k1", "blue"][..],
            "canary group",
            "HTTP 400",
        ),
        (
            &["keys", "drain", "p", "../k1"][..],
            "Invalid key id",
            "HTTP 400",
        ),
        (
            &["reload"][..],
            "not started from a config file",
            "HTTP 400",
        ),
    ];
    for (args, message, status) in refused {
        let run = cli(&gw, args).await;
        assert_eq!(run.code, Some(1), "{args:?}");
        assert!(
            run.stderr.contains(message) && run.stderr.contains(status),
            "{args:?}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty());
    }
    let wrong = keygate_cli(
        &url,
        &[("KEYGATE_ADMIN_TOKEN", "not-the-token")],
        &["keys", "list"],
    )
    .await;
    assert_eq!(wrong.code, Some(1));
    assert!(
        wrong.stderr.contains("Invalid or missing admin token")
            && wrong.stderr.contains("HTTP 401"),
        "{}",
        wrong.stderr
    );
    let no_token = keygate_cli(&url, &[], &["keys", "list"]).await;
    assert_eq!(no_token.code, Some(2));
    assert!(
        no_token.stderr.contains("KEYGATE_ADMIN_TOKEN"),
        "{}",
        no_token.stderr
    );
    let unreachable = keygate_cli(
        "http://127.0.0.1:1",
        &[("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
        &["keys", "list"],
    )
    .await;
    assert_eq!(unreachable.code, Some(2));
    assert!(
        unreachable.stderr.contains("cannot reach"),
        "{}",
        unreachable.stderr
    );
    let view = pool_view(&http(), &gw).await;
    assert!(view
        .keys
        .iter()
        .all(|k| k.state == "active" && k.weight == 1 && k.group == "stable"));
}
