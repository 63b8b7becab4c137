//! The command line as a newcomer meets it: the URL applications use works for the operator
//! commands, a replica without an admin API and an unreachable URL say why, each command's help
//! shows only its own options, `hash-token` reads stdin, completions print, and `serve`'s log
//! redirected to a file holds no colour codes and no Rust debug syntax.

use std::process::Stdio;
use std::time::Duration;

use keygate::config::hash_token;
use keygate::mock::MockUpstream;
use tokio::io::AsyncWriteExt;

use super::cli::{keygate_cli, Run};
use super::{start_admin, ADMIN_TOKEN, K3};
use crate::harness::gateway::{chat, config_toml, http, key, TestGateway, CLIENT_TOKEN};
use crate::harness::processes::{KeygateProcess, MockProcess};
use crate::harness::wait_until;

fn with_token() -> [(&'static str, &'static str); 1] {
    [("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)]
}

#[tokio::test]
async fn the_cli_accepts_the_v1_url_that_applications_use() {
    let mock = MockUpstream::start().await;
    let gw = start_admin(&config_toml(None, &mock.base_url(), &K3, "")).await;
    for url in [gw.url("/v1"), gw.url("/v1/"), gw.url("/")] {
        let run = keygate_cli(&url, &with_token(), &["keys", "list"]).await;
        assert_eq!(run.code, Some(0), "{url}: {}", run.stderr);
        assert!(run.stdout.starts_with("pool p "), "{url}: {}", run.stdout);
    }
}

#[tokio::test]
async fn a_replica_without_an_admin_token_says_how_to_enable_its_admin_api() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&config_toml(None, &mock.base_url(), &K3, "")).await;
    for args in [
        &["keys", "list"][..],
        &["reload"],
        &["canary", "set", "p", "5"],
    ] {
        let run = keygate_cli(&gw.url("/v1"), &with_token(), args).await;
        assert_eq!(run.code, Some(1), "{args:?}");
        assert!(
            run.stderr.contains("has no admin API")
                && run
                    .stderr
                    .contains("set KEYGATE_ADMIN_TOKEN on `keygate serve`")
                && !run.stderr.contains("Unknown path"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[tokio::test]
async fn an_unreachable_url_names_its_cause() {
    let refused = keygate_cli("http://127.0.0.1:1", &with_token(), &["keys", "list"]).await;
    assert_eq!(refused.code, Some(2));
    assert!(
        refused.stderr.contains("cannot reach http://127.0.0.1:1/")
            && refused.stderr.contains("connection refused"),
        "{}",
        refused.stderr
    );
    // `.invalid` never resolves (RFC 2606).
    let unknown = "http://no-such-replica.invalid:8080";
    let dns = keygate_cli(unknown, &with_token(), &["keys", "list"]).await;
    assert_eq!(dns.code, Some(2));
    assert!(
        dns.stderr.contains("no-such-replica.invalid") && dns.stderr.contains("(DNS)"),
        "{}",
        dns.stderr
    );
}

/// `keygate ARGS... --help` (no gateway involved).
async fn help(args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--help");
    let run: Run = keygate_cli("http://127.0.0.1:1", &[], &all).await;
    assert_eq!(run.code, Some(0), "{all:?}: {}", run.stderr);
    run.stdout
}

#[tokio::test]
async fn url_and_token_env_show_only_in_the_operator_commands_help() {
    for args in [
        &["serve"][..],
        &["check-config"],
        &["hash-token"],
        &["mock-upstream"],
    ] {
        let text = help(args).await;
        assert!(
            !text.contains("--url") && !text.contains("--token-env"),
            "{args:?}:\n{text}"
        );
    }
    for args in [
        &["keys"][..],
        &["keys", "list"],
        &["keys", "drain"],
        &["canary", "set"],
        &["reload"],
    ] {
        let text = help(args).await;
        assert!(
            text.contains("--url") && text.contains("--token-env") && text.contains("/v1"),
            "{args:?}:\n{text}"
        );
    }
}

#[tokio::test]
async fn config_file_and_token_arguments_have_help_text() {
    let serve = help(&["serve"]).await;
    assert!(
        serve.contains("--config <FILE>") && serve.contains("The config file"),
        "{serve}"
    );
    let check = help(&["check-config"]).await;
    assert!(
        check.contains("<FILE>") && check.contains("The config file to check"),
        "{check}"
    );
    let hash = help(&["hash-token"]).await;
    assert!(
        hash.contains("[TOKEN]") && hash.contains("standard input"),
        "{hash}"
    );
}

#[tokio::test]
async fn the_mock_key_help_lists_every_behaviour() {
    let text = help(&["mock-upstream"]).await;
    let behaviours = [
        "ok",
        "429:SECS",
        "401",
        "quota",
        "4xx",
        "5xx",
        "delay:MS",
        "remaining0:RESET",
        "slow:MS",
        "drop:EVENTS",
        "hang",
    ];
    for b in behaviours {
        assert!(text.contains(b), "{b} missing from:\n{text}");
    }
}

/// `keygate hash-token` with `input` on its standard input.
async fn hash_token_from_stdin(input: &str) -> (Option<i32>, String, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keygate");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn hash_token_reads_the_token_from_stdin_when_no_argument_is_given() {
    let expected = format!("{}\n", hash_token("dev-token"));
    let by_argument = keygate_cli("http://127.0.0.1:1", &[], &["hash-token", "dev-token"]).await;
    assert_eq!(by_argument.stdout, expected);
    for input in ["dev-token\n", "dev-token\r\n", "dev-token"] {
        let (code, stdout, stderr) = hash_token_from_stdin(input).await;
        assert_eq!(
            (code, stdout.as_str()),
            (Some(0), expected.as_str()),
            "{input:?}: {stderr}"
        );
    }
    let (code, stdout, stderr) = hash_token_from_stdin("").await;
    assert_eq!(code, Some(2));
    assert!(stdout.is_empty() && stderr.contains("no token"), "{stderr}");
}

#[tokio::test]
async fn completions_print_a_script_for_bash_zsh_and_fish() {
    let expected = [
        ("bash", "complete -F"),
        ("zsh", "#compdef keygate"),
        ("fish", "complete -c keygate"),
    ];
    for (shell, marker) in expected {
        let run = keygate_cli("http://127.0.0.1:1", &[], &["completions", shell]).await;
        assert_eq!(run.code, Some(0), "{shell}: {}", run.stderr);
        assert!(
            run.stdout.contains(marker) && run.stdout.contains("hash-token"),
            "{shell}: {}",
            run.stdout
        );
    }
    let unknown = keygate_cli("http://127.0.0.1:1", &[], &["completions", "tcsh"]).await;
    assert_eq!(unknown.code, Some(2));
}

#[tokio::test]
async fn a_redirected_serve_log_has_no_colour_codes_and_no_debug_syntax() {
    let mock = MockProcess::start(&["sk-bad-0001=500"]).await;
    let keys = [key("k1", "sk-bad-0001")];
    let config = config_toml(None, &mock.base_url(), &keys, "");
    // An empty NO_COLOR counts as unset: only the redirection turns colours off.
    let gw = KeygateProcess::start(&config, &[("NO_COLOR", "")]).await;
    let c = http();
    let response = c
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_TOKEN)
        .json(&chat("m", false))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_server_error(), "{}", response.status());
    let failure_logged = || async { gw.proc.log().contains("request failed upstream") };
    wait_until(
        Duration::from_secs(5),
        "the failure's log line",
        failure_logged,
    )
    .await;
    let log = gw.proc.log();
    let failure = log
        .lines()
        .find(|l| l.contains("request failed upstream"))
        .unwrap_or_default();
    assert!(failure.contains(" key=k1 "), "{failure}");
    assert!(log.contains("pool synced"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a redirected log:\n{log}"
    );
    assert!(
        !log.contains("Some(") && !log.contains("None"),
        "debug syntax:\n{log}"
    );
}

/// The `Max open files` soft and hard limits of process `pid`.
fn open_file_limits(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line["Max open files".len()..].split_whitespace();
    Some((values.next()?.to_string(), values.next()?.to_string()))
}

#[tokio::test]
async fn serve_raises_its_open_file_soft_limit_to_the_hard_limit() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keygate.toml");
    std::fs::write(&file, config_toml(None, &mock.base_url(), &K3, "")).unwrap();
    let script = format!(
        "ulimit -Sn 256 && ulimit -Hn 4096 && exec '{}' serve --config '{}'",
        env!("CARGO_BIN_EXE_keygate"),
        file.display()
    );
    let mut child = tokio::process::Command::new("bash")
        .args(["-c", &script])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run keygate serve under bash");
    let pid = child.id().expect("a pid");
    let raised = || async { open_file_limits(pid) == Some(("4096".into(), "4096".into())) };
    wait_until(
        Duration::from_secs(10),
        "the soft limit raised to 4096",
        raised,
    )
    .await;
    child.kill().await.unwrap();
}
