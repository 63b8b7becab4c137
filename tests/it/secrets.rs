//! Secret hygiene: distinctive secrets in the config (upstream keys given
//! inline, by environment variable and by file; the client token; the admin token; the Redis
//! password), every endpoint and error path exercised with logs captured at TRACE, then every
//! output searched: logs, `/metrics`, admin answers, every response body and header, every
//! value in Redis and every command sent to it (`MONITOR`). A secret may show its last four
//! characters (fingerprints) and nothing more: no five consecutive characters of any secret
//! may appear anywhere.
//!
//! Logs are captured with a thread-local subscriber on a current-thread runtime: the gateway's
//! tasks all run on the test's thread, other tests' logs never mix in, and other tests are not
//! slowed down. The mock upstream runs on a runtime of its own so that its logs (it is the
//! provider, not keygate) stay out of the capture. Dependencies that log through the `log`
//! crate rather than `tracing` (reqwest, redis-rs) are not captured.

mod answers;
mod capture;
mod exercise;

use keygate::config::{hash_token, Config};
use keygate::mock::MockUpstream;

use crate::harness::gateway::{http, TestGateway};
use crate::harness::RedisServer;
use capture::{redis_contents, LogCapture, Monitor};
use exercise::Run;

pub(super) const SECRET_A: &str = "sk-Zq8XvP3mKt7RwLb2YhN4"; // inline
pub(super) const SECRET_B: &str = "sk-Jd5GsW9cFe2TuQy6VaR8"; // secret_env
pub(super) const SECRET_C: &str = "sk-Hn3MbX7kLp1ZwE4rYt9U"; // secret_file
pub(super) const SECRET_D: &str = "Qw7Er5Ty3Ui1Op9As6Df4Gh"; // inline, no known prefix
pub(super) const CLIENT_TOKEN: &str = "kgc-Vb8Nm2Kj6Hg4Fd1Sa9Lp";
pub(super) const ADMIN_TOKEN: &str = "kga-Xc5Zr8Tq2Wy7Ue3Io6Pm4Lk9Jh1Gf";
pub(super) const REDIS_PASSWORD: &str = "rpw-Gt4Hy9Ju2Ki7Lo3Ne8Bv";

const SECRETS: [&str; 7] = [
    SECRET_A,
    SECRET_B,
    SECRET_C,
    SECRET_D,
    CLIENT_TOKEN,
    ADMIN_TOKEN,
    REDIS_PASSWORD,
];

/// Every answer the test received.
#[derive(Default)]
pub(super) struct Seen {
    /// Every answer: status, headers and body.
    answers: String,
    statuses: Vec<u16>,
}

impl Seen {
    pub(super) async fn record(&mut self, what: &str, r: reqwest::Response) -> u16 {
        let status = r.status().as_u16();
        // Header values as text (their Debug form escapes non-ASCII bytes into look-alikes).
        let headers: String = (r.headers().iter())
            .map(|(n, v)| format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        let body = match r.bytes().await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => format!("<body error {e}>"),
        };
        self.answers
            .push_str(&format!("== {what}: {status}\n{headers}\n{body}\n"));
        self.statuses.push(status);
        status
    }
}

/// Windows of five characters of `secret` found in `text`, if any.
pub(super) fn leaks(secret: &str, text: &str) -> Vec<String> {
    let chars: Vec<char> = secret.chars().collect();
    chars
        .windows(5)
        .map(|w| w.iter().collect::<String>())
        .filter(|w| text.contains(w.as_str()))
        .collect()
}

fn assert_no_leak(place: &str, text: &str) {
    for s in SECRETS {
        let found = leaks(s, text);
        let context = found.first().and_then(|w| text.find(w.as_str())).map(|at| {
            let before: String = text[..at].chars().rev().take(300).collect();
            let after: String = text[at..].chars().take(300).collect();
            format!("{}{after}", before.chars().rev().collect::<String>())
        });
        assert!(
            found.is_empty(),
            "{place} reveals more than 4 characters of a secret ({found:?}) in: {context:?}"
        );
    }
}

fn config_text(redis_port: u16, upstream: &str, secret_file: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536
shutdown_grace_s = 5

[store]
redis_url = "redis://kg:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/0"
timeout_ms = 200

[admin]
token_env = "KEYGATE_ADMIN_TOKEN"

[[clients]]
name = "tester"
token_sha256 = "{}"
pools = ["p"]

[[pools]]
name = "p"
base_url = "{upstream}"
max_attempts = 3
models = ["m", "gone"]

[pools.timeouts]
connect_ms = 300
first_byte_ms = 300
total_ms = 5000

[pools.policy]
breaker_errors = 1000

[[pools.keys]]
id = "ka"
secret = "{SECRET_A}"

[[pools.keys]]
id = "kb"
secret_env = "KG_SECRET_B"

[[pools.keys]]
id = "kc"
secret_file = "{}"

[[pools.keys]]
id = "kd"
secret = "{SECRET_D}"
"#,
        hash_token(CLIENT_TOKEN),
        secret_file.display()
    )
}

fn env(name: &str) -> Option<String> {
    match name {
        "KG_SECRET_B" => Some(SECRET_B.to_string()),
        "KEYGATE_ADMIN_TOKEN" => Some(ADMIN_TOKEN.to_string()),
        _ => None,
    }
}

/// The config and its error output: `Debug` of a valid one, the problems of broken ones.
fn config_outputs(toml: &str, dir: &std::path::Path) -> String {
    let config = Config::from_toml_str(toml, &env, dir).unwrap();
    let mut out = format!("{config:?}\n");
    let broken = toml
        .replace("max_attempts = 3", "max_attempts = 0")
        .replace("id = \"kd\"", "id = \"k d\"");
    let problems = Config::from_toml_str(&broken, &env, dir).unwrap_err();
    out.push_str(&format!("{problems}\n{problems:?}\n"));
    let inline_admin = format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n");
    let with_token = toml.replace("[admin]\n", &inline_admin);
    if let Err(e) = Config::from_toml_str(&with_token, &env, dir) {
        out.push_str(&format!("{e}\n"));
    }
    out
}

#[tokio::test]
async fn no_secret_appears_in_logs_metrics_answers_or_redis() {
    let logs = LogCapture::start();
    // Redis with an ACL user whose password is a secret (the default user stays open for the
    // test's own reads).
    let acl = format!(">{REDIS_PASSWORD}");
    let mut redis = RedisServer::start_with(&["--user", "kg", "on", &acl, "~*", "&*", "+@all"]);
    let monitor = Monitor::start(redis.port);
    let mock_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = mock_rt.spawn(MockUpstream::start()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("key-c");
    std::fs::write(&secret_file, format!("{SECRET_C}\n")).unwrap();
    let toml = config_text(redis.port, &mock.base_url(), &secret_file);
    let config = Config::from_toml_str(&toml, &env, dir.path()).unwrap();
    assert!(config.admin.token.is_some(), "the admin API must be on");
    let gw = TestGateway::start_config(config).await;
    let mut run = Run {
        c: http(),
        gw: &gw,
        mock: &mock,
        seen: Seen::default(),
    };
    run.seen
        .answers
        .push_str(&config_outputs(&toml, dir.path()));
    run.proxy_answers().await;
    run.upstream_failures().await;
    run.client_errors().await;
    run.operator_endpoints().await;
    run.check_fingerprints().await;
    let stored = redis_contents(&redis);
    let commands = monitor.finish();
    assert!(commands.contains("EVALSHA"), "MONITOR saw no scripts");
    redis.kill();
    run.store_down().await;
    let metrics = run.c.get(gw.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let seen = run.seen;
    gw.shutdown().await;
    mock_rt.shutdown_background();

    let logs = logs.text();
    assert!(
        logs.contains("proxied") && logs.contains(" INFO "),
        "the log capture is not working"
    );
    assert!(logs.contains(" WARN "), "no error path was logged");
    for status in [200, 400, 401, 403, 404, 413, 415, 429, 502, 503, 504] {
        assert!(
            seen.statuses.contains(&status),
            "status {status} never exercised"
        );
    }
    assert_no_leak("the logs", &logs);
    assert_no_leak("/metrics", &metrics);
    assert_no_leak("an HTTP answer or the config's own output", &seen.answers);
    assert_no_leak("a Redis value", &stored);
    assert_no_leak("a command sent to Redis", &commands);
    println!(
        "FIGURES secrets: {} answers, {} log bytes, {} Redis bytes, {} MONITOR bytes searched; \
         0 leaks",
        seen.statuses.len(),
        logs.len(),
        stored.len(),
        commands.len()
    );
}
