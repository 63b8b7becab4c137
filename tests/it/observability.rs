//! Observability: a live `/metrics` passes `promtool check metrics` and
//! carries every metric of README.md ("Metrics, dashboards and alerts") with its documented labels; key state is the
//! cluster's truth (read on a replica that served nothing); no secret leaks; the deploy files
//! pass `promtool check config|rules` and `docker-compose config`; and every metric a Grafana
//! panel or an alert rule queries is one a live gateway exports.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use keygate::config::hash_token;
use keygate::mock::{Behavior, MockUpstream};

use crate::harness::exposition::Exposition;
use crate::harness::gateway::{chat, http, key, post_chat, TestGateway, TestKey, CLIENT_TOKEN};
use crate::harness::processes::{find_binary, keygate_binary};
use crate::harness::redis_server::free_port;
use crate::harness::{wait_until, RedisServer};

mod queries;

use queries::{alert_queries, dashboard_queries, selectors, Selector};

const OK: TestKey = key("k1", "sk-obs-ok-aaaa1111");
/// Answers its first request 429 `Retry-After: 30`: cooling for the whole test.
const LIMITED: TestKey = key("k2", "sk-obs-limited-bbbb2222");
/// Always 401: disabled after its first request.
const REVOKED: TestKey = key("k3", "sk-obs-revoked-cccc3333");
/// Answers its first request 500, then ok.
const FLAKY: TestKey = key("k4", "sk-obs-flaky-dddd4444");
const CANARY: TestKey = TestKey {
    group: "canary",
    ..key("c1", "sk-obs-canary-eeee5555")
};
/// The only key of pool `dead`; always 401, so its second request finds no key.
const DEAD: TestKey = key("d1", "sk-obs-dead-ffff6666");

/// Every metric README.md lists ("Metrics, dashboards and alerts"): name, Prometheus type, labels.
const DOCUMENTED: [(&str, &str, &[&str]); 13] = [
    (
        "keygate_requests_total",
        "counter",
        &["pool", "key", "group", "outcome"],
    ),
    (
        "keygate_upstream_duration_seconds",
        "histogram",
        &["pool", "key"],
    ),
    ("keygate_key_state", "gauge", &["pool", "key", "state"]),
    ("keygate_key_cooldown_seconds", "gauge", &["pool", "key"]),
    ("keygate_key_weight", "gauge", &["pool", "key"]),
    (
        "keygate_cooldowns_total",
        "counter",
        &["pool", "key", "reason"],
    ),
    ("keygate_retries_total", "counter", &["pool", "reason"]),
    ("keygate_no_key_available_total", "counter", &["pool"]),
    ("keygate_store_duration_seconds", "histogram", &["op"]),
    ("keygate_store_errors_total", "counter", &["op"]),
    ("keygate_store_degraded", "gauge", &[]),
    (
        "keygate_tokens_total",
        "counter",
        &["pool", "key", "model", "kind"],
    ),
    (
        "keygate_canary_requests_total",
        "counter",
        &["pool", "group", "fallback"],
    ),
];

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn pool_toml(name: &str, upstream: &str, keys: &[TestKey], extra: &str) -> String {
    let mut t = format!(
        "[[pools]]\nname = \"{name}\"\nbase_url = \"{upstream}\"\nmax_attempts = 3\n{extra}\n"
    );
    for k in keys {
        t.push_str(&format!(
            "[[pools.keys]]\nid = \"{}\"\nsecret = \"{}\"\nweight = {}\ngroup = \"{}\"\n\n",
            k.id, k.secret, k.weight, k.group
        ));
    }
    t
}

/// Pools `p` (four stable keys and a canary key at 0%) and `dead` (one key), on `redis_url`.
fn config(redis_url: &str, upstream: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [store]\nredis_url = \"{redis_url}\"\ntimeout_ms = 200\nsnapshot_cache_ms = 200\n\n\
         [[clients]]\nname = \"tester\"\ntoken_sha256 = \"{}\"\npools = [\"p\", \"dead\"]\n\n{}{}",
        hash_token(CLIENT_TOKEN),
        pool_toml(
            "p",
            upstream,
            &[OK, LIMITED, REVOKED, FLAKY, CANARY],
            "[pools.canary]\ngroup = \"canary\"\npercent = 0\n",
        ),
        // Budgets that never bind, so the budget families are exported; `d1` expires (far
        // ahead), so its `keygate_key_expiry_seconds` sample exists.
        pool_toml(
            "dead",
            upstream,
            &[DEAD],
            "[pools.limits]\nrpm = 100000\ntpm = 100000000\n",
        )
        .replace("id = \"d1\"\n", "id = \"d1\"\nexpires = \"2099-01-01\"\n"),
    )
}

/// Two replicas on one Redis after traffic that creates every label set, and a third replica
/// whose Redis is gone (the only way to see `keygate_store_errors_total` without an outage of
/// the other two).
struct Scene {
    /// Served every request.
    served: Exposition,
    /// Served nothing: its key gauges come from the store alone.
    other: Exposition,
    /// Points at a closed port.
    no_redis: Exposition,
}

impl Scene {
    fn all(&self) -> [(&str, &Exposition); 3] {
        [
            ("the serving replica", &self.served),
            ("the idle replica", &self.other),
            ("the replica without Redis", &self.no_redis),
        ]
    }

    /// The metric families the gateways export, together.
    fn families(&self) -> BTreeSet<&str> {
        self.all().iter().flat_map(|(_, e)| e.families()).collect()
    }
}

async fn scene() -> Scene {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    mock.script(
        LIMITED.secret,
        vec![Behavior::RateLimited {
            retry_after: Some("30".into()),
        }],
    );
    mock.set_steady(REVOKED.secret, Behavior::Unauthorized);
    mock.script(FLAKY.secret, vec![Behavior::ServerError(500)]);
    mock.set_steady(DEAD.secret, Behavior::Unauthorized);
    let toml = config(&redis.url(), &mock.base_url());
    let (a, b) = (
        TestGateway::start(&toml).await,
        TestGateway::start(&toml).await,
    );
    let c = http();
    drive(&c, &a, &mock).await;

    let tokens_counted = || async {
        let e = Exposition::scrape(&c, &a.url("/metrics")).await;
        let wanted = [("model", "gpt-stream"), ("kind", "completion")];
        e.sum("keygate_tokens_total", &wanted) == 5.0
    };
    wait_until(
        Duration::from_secs(5),
        "the streamed completion's 5 tokens in keygate_tokens_total",
        tokens_counted,
    )
    .await;
    let states_seen = || async {
        let e = Exposition::scrape(&c, &b.url("/metrics")).await;
        let state = |k: &str, s: &str| {
            e.value(
                "keygate_key_state",
                &[("pool", "p"), ("key", k), ("state", s)],
            )
        };
        state(LIMITED.id, "cooling") == Some(1.0) && state(REVOKED.id, "disabled") == Some(1.0)
    };
    wait_until(
        Duration::from_secs(5),
        "the idle replica's /metrics to show k2 cooling and k3 disabled",
        states_seen,
    )
    .await;

    let no_redis_url = format!("redis://127.0.0.1:{}/0", free_port());
    let gone = TestGateway::start(&config(&no_redis_url, &mock.base_url())).await;
    // Whatever it answers (503 now; a degraded mode may serve it), the store call failed.
    let r = post_chat(&c, &gone, &chat("gpt-obs", false), &[]).await;
    r.bytes().await.expect("body");

    Scene {
        served: Exposition::scrape(&c, &a.url("/metrics")).await,
        other: Exposition::scrape(&c, &b.url("/metrics")).await,
        no_redis: Exposition::scrape(&c, &gone.url("/metrics")).await,
    }
}

/// Successes, a 429, a 401, a 5xx, a streamed completion with usage, a canary request and a
/// request that finds no key, all through `gw`.
async fn drive(c: &reqwest::Client, gw: &TestGateway, mock: &MockUpstream) {
    let scripted = [LIMITED.secret, REVOKED.secret, FLAKY.secret];
    let mut sent = 0;
    while scripted.iter().any(|s| mock.requests(s) == 0) {
        let r = post_chat(c, gw, &chat("gpt-obs", false), &[]).await;
        r.bytes().await.expect("body");
        sent += 1;
        assert!(sent < 300, "the scripted keys were never all chosen");
    }
    for _ in 0..5 {
        let r = post_chat(c, gw, &chat("gpt-obs", false), &[]).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
    }
    let r = post_chat(c, gw, &chat("gpt-stream", true), &[]).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("stream");
    assert!(text.contains("data: [DONE]"), "stream incomplete: {text}");

    let r = post_chat(
        c,
        gw,
        &chat("gpt-obs", false),
        &[("x-gray-group", "treatment")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-keygate-key"], CANARY.id);

    for _ in 0..2 {
        let r = post_chat(
            c,
            gw,
            &chat("gpt-obs", false),
            &[("x-keygate-pool", "dead")],
        )
        .await;
        assert_ne!(r.status(), 200, "pool dead has no working key");
    }
}

/// Runs `program args` in the repo root with `stdin`, failing clearly when it is missing.
fn run_tool(program: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait")
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn promtool() -> PathBuf {
    find_binary(
        "promtool",
        "install Debian's `prometheus` package (apt-get install prometheus; .ci/run does)",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_and_carry_every_documented_metric_and_label() {
    let scene = scene().await;
    for (who, e) in scene.all() {
        let out = run_tool(&promtool(), &["check", "metrics"], &e.text);
        assert_success(&format!("promtool check metrics on {who}'s /metrics"), &out);
    }
    for (name, kind, labels) in DOCUMENTED {
        // Store errors exist only where the store failed.
        let e = if name == "keygate_store_errors_total" {
            &scene.no_redis
        } else {
            &scene.served
        };
        assert_eq!(
            e.types.get(name).map(String::as_str),
            Some(kind),
            "{name}: missing or not a {kind}"
        );
        let mut wanted: BTreeSet<&str> = labels.iter().copied().collect();
        let sample_name = if kind == "histogram" {
            wanted.insert("le");
            format!("{name}_bucket")
        } else {
            name.to_string()
        };
        let found: Vec<_> = e.find(&sample_name, &[]).collect();
        assert!(!found.is_empty(), "{sample_name}: no sample");
        for s in found {
            assert_eq!(s.label_names(), wanted, "{sample_name}: labels of {s:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_each_outcome_and_the_cluster_key_state_and_never_a_secret() {
    let scene = scene().await;
    let (a, b) = (&scene.served, &scene.other);
    for outcome in ["success", "rate_limited", "unauthorized", "server_error"] {
        let n = a.sum("keygate_requests_total", &[("outcome", outcome)]);
        assert!(n >= 1.0, "no request with outcome {outcome}");
    }
    let cooldowns = |k: &str, reason: &str| {
        a.value(
            "keygate_cooldowns_total",
            &[("pool", "p"), ("key", k), ("reason", reason)],
        )
    };
    assert_eq!(cooldowns(LIMITED.id, "rate_limited"), Some(1.0));
    assert_eq!(cooldowns(REVOKED.id, "unauthorized"), Some(1.0));
    assert!(a.sum("keygate_retries_total", &[("pool", "p")]) >= 1.0);
    assert!(a.sum("keygate_no_key_available_total", &[("pool", "dead")]) >= 1.0);
    let canary = [("pool", "p"), ("group", "canary"), ("fallback", "false")];
    assert_eq!(a.value("keygate_canary_requests_total", &canary), Some(1.0));
    let prompt = [("model", "gpt-stream"), ("kind", "prompt")];
    assert!(a.sum("keygate_tokens_total", &prompt) >= 1.0);
    assert!(scene.no_redis.sum("keygate_store_errors_total", &[]) >= 1.0);
    assert_eq!(a.value("keygate_store_degraded", &[]), Some(0.0));

    // The idle replica served nothing, yet knows every key's state: the store is the truth.
    assert_eq!(b.sum("keygate_requests_total", &[]), 0.0);
    let expected = [
        (OK.id, "active"),
        (LIMITED.id, "cooling"),
        (REVOKED.id, "disabled"),
        (FLAKY.id, "active"),
        (CANARY.id, "active"),
    ];
    for (k, state) in expected {
        let on = [("pool", "p"), ("key", k)];
        assert_eq!(
            b.value("keygate_key_state", &[on[0], on[1], ("state", state)]),
            Some(1.0),
            "{k} should be {state}"
        );
        assert_eq!(b.sum("keygate_key_state", &on), 1.0, "{k}: one state at 1");
        assert_eq!(b.value("keygate_key_weight", &on), Some(1.0));
    }
    let cooling_left = b
        .value("keygate_key_cooldown_seconds", &[("key", LIMITED.id)])
        .expect("k2's cooldown gauge");
    assert!(
        (20.0..=30.0).contains(&cooling_left),
        "k2's cooldown {cooling_left}s"
    );

    for (who, e) in scene.all() {
        for k in [OK, LIMITED, REVOKED, FLAKY, CANARY, DEAD] {
            assert!(
                !e.text.contains(k.secret),
                "{who}'s /metrics shows a secret"
            );
        }
        assert!(
            !e.text.contains("sk-obs"),
            "{who}'s /metrics shows a secret"
        );
        assert!(
            !e.text.contains(CLIENT_TOKEN),
            "{who}'s /metrics shows a token"
        );
    }
}

#[test]
fn the_prometheus_config_and_alert_rules_pass_promtool() {
    let out = run_tool(
        &promtool(),
        &["check", "config", "deploy/prometheus.yml"],
        "",
    );
    assert_success("promtool check config deploy/prometheus.yml", &out);
    let out = run_tool(&promtool(), &["check", "rules", "deploy/alerts.yml"], "");
    assert_success("promtool check rules deploy/alerts.yml", &out);
}

#[test]
fn docker_compose_validates_the_compose_file() {
    let compose = find_binary(
        "docker-compose",
        "install Debian's `docker-compose` package (apt-get install docker-compose)",
    );
    let out = run_tool(&compose, &["-f", "docker-compose.yml", "config", "-q"], "");
    assert_success("docker-compose -f docker-compose.yml config -q", &out);
}

#[test]
fn the_compose_demo_config_passes_check_config_with_the_compose_environment() {
    let out = Command::new(keygate_binary())
        .args(["check-config", "deploy/keygate.compose.toml"])
        .current_dir(repo_root())
        .envs([
            (
                "KEYGATE_ADMIN_TOKEN",
                "demo-admin-token-change-me-0123456789",
            ),
            ("DEMO_KEY_1", "sk-demo-aaaa1111"),
            ("DEMO_KEY_2", "sk-demo-bbbb2222"),
            ("DEMO_KEY_3", "sk-demo-cccc3333"),
            ("DEMO_KEY_4", "sk-demo-dddd4444"),
        ])
        .output()
        .expect("run keygate check-config");
    assert_success("keygate check-config deploy/keygate.compose.toml", &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_a_dashboard_panel_or_alert_queries_is_exported() {
    let scene = scene().await;
    let exported = scene.families();
    let mut queries = dashboard_queries();
    assert!(
        queries.len() >= 10,
        "too few dashboard queries: {queries:?}"
    );
    let alerts = alert_queries();
    assert!(alerts.len() >= 4, "too few alert expressions: {alerts:?}");
    queries.extend(alerts);

    let mut used = BTreeSet::new();
    for (source, expr) in &queries {
        for sel in selectors(expr) {
            let family = family_of(&sel.metric, &scene);
            assert!(
                exported.contains(family.as_str()),
                "{source} queries {} (in `{expr}`), which no live gateway exports",
                sel.metric
            );
            check_matchers(&sel, &family, &scene, source);
            used.insert(family);
        }
    }
    for must in ["keygate_requests_total", "keygate_key_state"] {
        assert!(used.contains(must), "no query uses {must}: parsing failed?");
    }
}

/// `keygate_x_bucket` → `keygate_x` when that is a histogram; otherwise the name itself.
fn family_of(metric: &str, scene: &Scene) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = metric.strip_suffix(suffix) {
            let histogram = scene
                .all()
                .iter()
                .any(|(_, e)| e.types.get(base).is_some_and(|t| t == "histogram"));
            if histogram {
                return base.to_string();
            }
        }
    }
    metric.to_string()
}

/// Every label a selector matches on is one the metric has; every `label="value"` names a
/// value some live sample carries (a typo in either would make a panel silently empty).
fn check_matchers(sel: &Selector, family: &str, scene: &Scene, source: &str) {
    let samples: Vec<_> = scene
        .all()
        .iter()
        .flat_map(|(_, e)| e.samples.iter())
        .filter(|s| s.name == sel.metric || s.name == format!("{family}_bucket"))
        .collect();
    for m in &sel.matchers {
        assert!(
            samples.iter().any(|s| s.labels.contains_key(&m.label)),
            "{source}: {} has no label {:?}",
            sel.metric,
            m.label
        );
        if m.op == "=" {
            assert!(
                samples
                    .iter()
                    .any(|s| s.labels.get(&m.label) == Some(&m.value)),
                "{source}: no live {} sample has {}={:?}",
                sel.metric,
                m.label,
                m.value
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_only_on_the_separate_metrics_listener_when_it_is_set() {
    let mock = MockUpstream::start().await;
    let port = free_port();
    let toml = crate::harness::gateway::config_toml(
        None,
        &mock.base_url(),
        &[key("k1", "sk-metrics-sep-1111")],
        "",
    )
    .replace(
        "shutdown_grace_s = 5\n",
        &format!("shutdown_grace_s = 5\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
    );
    let gw = TestGateway::start(&toml).await;
    assert_eq!(
        post_chat(&http(), &gw, &chat("m", false), &[])
            .await
            .status(),
        200
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_until(Duration::from_secs(5), "metrics listener up", || async {
        matches!(http().get(&url).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let text = http().get(&url).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("keygate_requests_total{"), "{text}");
    // Only /metrics there: the API stays on the main port, and /metrics is not on it.
    let r = http()
        .get(format!("http://127.0.0.1:{port}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let public = http().get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(
        public.status(),
        404,
        "/metrics must not be on the public port"
    );
    let body = public.text().await.unwrap();
    assert!(!body.contains("keygate_"), "{body}");
}
