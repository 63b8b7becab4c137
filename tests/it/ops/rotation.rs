//! Guarded key rotation end to end: three replicas as processes on one real Redis, a real mock
//! upstream, steady client load through every replica, and the plan driven by whichever replica
//! holds the lease.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::mock::Behavior;
use keygate::mock::MockUpstream;
use serde_json::{json, Value};

use crate::harness::gateway::{config_toml, key, TestKey, CLIENT_TOKEN};
use crate::harness::processes::KeygateProcess;
use crate::harness::redis_server::signal_quiet;
use crate::harness::{wait_until_or_explain, RedisServer};

const ADMIN: &str = "rotation-test-admin-token-0123456789abcdef";
const OLD: TestKey = key("old", "sk-rot-old-1111");
const SPARE: TestKey = key("spare", "sk-rot-spare-2222");
const NEW: TestKey = TestKey {
    id: "new",
    secret: "sk-rot-new-3333",
    weight: 1,
    group: "canary",
};

struct Rig {
    _redis: RedisServer,
    mock: MockUpstream,
    replicas: Vec<KeygateProcess>,
    http: reqwest::Client,
}

/// A rotation section with short times, so a whole plan runs in seconds. The latency guard
/// gets 5 s of slack: on a loaded machine one slow canary request would roll a plan back, and
/// no test here is about latency (`rotation/guards.rs` tests that guard).
fn rotation_section(eval_ms: u64, lease_ms: u64, dwell_s: u64) -> String {
    format!(
        "[pools.canary]\ngroup = \"canary\"\npercent = 0\n\n\
         [pools.rotation]\nsteps = [5, 25, 50, 100]\nmin_requests = 5\nmin_dwell_s = {dwell_s}\n\
         eval_interval_ms = {eval_ms}\nlease_ms = {lease_ms}\ndrain_wait_ms = 500\n\
         p99_slack_ms = 5000\n"
    )
}

impl Rig {
    async fn start(section: &str) -> Rig {
        let redis = RedisServer::start();
        let mock = MockUpstream::start().await;
        // A loaded CI machine: store calls get more than the harness's usual 200 ms.
        let toml = config_toml(
            Some(&redis.url()),
            &mock.base_url(),
            &[OLD, SPARE, NEW],
            section,
        )
        .replace("timeout_ms = 200", "timeout_ms = 1000");
        let env = [("KEYGATE_ADMIN_TOKEN", ADMIN)];
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(KeygateProcess::start(&toml, &env).await);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Rig {
            _redis: redis,
            mock,
            replicas,
            http,
        }
    }

    /// `GET /admin/pools/p/{what}` through `replica`, which must answer 200.
    async fn admin_get(&self, replica: usize, what: &str) -> Value {
        let url = self.replicas[replica].url(&format!("/admin/pools/p/{what}"));
        let r = self.http.get(url).bearer_auth(ADMIN).send().await;
        let r = r.expect(what);
        assert_eq!(r.status(), 200, "{what}");
        r.json().await.expect(what)
    }

    /// The pool's rotation status through `replica`.
    async fn status(&self, replica: usize) -> Value {
        self.admin_get(replica, "rotation").await
    }

    /// The pool's keys and canary percent through `replica`.
    async fn keys(&self, replica: usize) -> Value {
        self.admin_get(replica, "keys").await
    }

    async fn start_plan(&self, old: &[&str]) -> Value {
        let url = self.replicas[0].url("/admin/pools/p/rotation");
        let body = json!({"new_keys": ["new"], "old_keys": old});
        let r = self
            .http
            .post(url)
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .expect("start");
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        r.json().await.expect("start json")
    }

    /// Steady load: `tasks` loops, each request through the next replica, with varied
    /// `X-User-Id`s so the canary percent splits traffic. Counts answers that were not 2xx.
    fn load(&self, tasks: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let urls: Vec<String> = self
            .replicas
            .iter()
            .map(|r| r.url("/v1/chat/completions"))
            .collect();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let (stop, ok, failed, urls, http) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                urls.clone(),
                self.http.clone(),
            );
            let killed = killed.clone();
            handles.push(tokio::spawn(async move {
                // Each task walks the replicas in turn, skipping a killed one.
                let mut n = t;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let target = n % urls.len();
                    if target == killed.load(Ordering::Relaxed) {
                        continue;
                    }
                    let i = n * tasks + t;
                    let r = http
                        .post(&urls[target])
                        .bearer_auth(CLIENT_TOKEN)
                        .header("x-user-id", format!("user-{i}"))
                        .json(
                            &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
                        )
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) if target == killed.load(Ordering::Relaxed) => 0,
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        Load {
            stop,
            killed,
            ok,
            failed,
            handles,
        }
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    /// The replica this test killed (usize::MAX: none): no longer sent to, as a load balancer
    /// would stop sending to it; its requests cut off by the kill are not the gateway's failures.
    killed: Arc<std::sync::atomic::AtomicUsize>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Stops the load and returns (succeeded, failed).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.await;
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn plan_state(s: &Value) -> &str {
    s["plan"]["state"].as_str().unwrap_or("none")
}

fn plan_step(s: &Value) -> u64 {
    s["plan"]["step"].as_u64().unwrap_or(0)
}

fn key_of<'a>(view: &'a Value, id: &str) -> &'a Value {
    view["keys"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["id"] == id))
        .unwrap_or(&Value::Null)
}

/// Polls the status through `replica` until `cond` holds; returns that status.
async fn wait_status(
    rig: &Rig,
    replica: usize,
    limit: Duration,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    wait_until_or_explain(
        limit,
        what,
        || async {
            let s = rig.status(replica).await;
            let hit = cond(&s);
            *last.lock().unwrap() = s;
            hit
        },
        || format!("last status: {:#}", last.lock().unwrap()),
    )
    .await;
    let s = last.lock().unwrap().clone();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_new_key_is_ramped_to_100_percent_and_the_old_key_drained_with_no_failed_request()
{
    let rig = Rig::start(&rotation_section(200, 3000, 1)).await;
    let load = rig.load(6);
    let started = rig.start_plan(&["old"]).await;
    assert_eq!(plan_state(&started), "running");
    assert_eq!(started["plan"]["spec"]["steps"], json!([5, 25, 50, 100]));
    let done = wait_status(&rig, 1, Duration::from_secs(90), "the plan is done", |s| {
        plan_state(s) == "done"
    })
    .await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{ok} requests succeeded, {failed} failed");
    assert!(ok > 100, "only {ok} requests during the rotation");
    // Every step was taken in order, by fenced writes, then finish and done.
    let events: Vec<String> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|h| {
            format!(
                "{} {}",
                h["event"].as_str().unwrap(),
                h["detail"].as_str().unwrap()
            )
        })
        .collect();
    let advances: Vec<&String> = events.iter().filter(|e| e.starts_with("advance")).collect();
    assert_eq!(advances.len(), 3, "{events:#?}");
    for (a, pct) in advances.iter().zip(["25%", "50%", "100%"]) {
        assert!(a.starts_with(&format!("advance to {pct}")), "{a}");
    }
    assert!(
        events.iter().any(|e| e.starts_with("finish")),
        "{events:#?}"
    );
    // The new key serves stable traffic; the old key is drained; the canary percent is back to 0.
    let view = rig.keys(2).await;
    assert_eq!(key_of(&view, "new")["group"], "stable", "{view:#}");
    assert_eq!(key_of(&view, "old")["state"], "draining", "{view:#}");
    assert_eq!(view["canary_percent"], 0, "{view:#}");
    assert!(rig.mock.requests(NEW.secret) > 0);
}

/// The new key turns bad once the plan is at 25%; the driver rolls back within one evaluation
/// period (plus the one-second flush of the replicas' counts) and no client request fails.
async fn a_new_key_that_turns_bad_at_25_percent_is_rolled_back(bad: Behavior, why: &str) {
    let eval_ms = 1000;
    let rig = Rig::start(&rotation_section(eval_ms, 3000, 2)).await;
    let load = rig.load(6);
    rig.start_plan(&["old"]).await;
    wait_status(
        &rig,
        0,
        Duration::from_secs(60),
        "the plan reaches 25%",
        |s| plan_step(s) == 1,
    )
    .await;
    rig.mock.set_steady(NEW.secret, bad);
    let turned = Instant::now();
    let rolled = wait_status(
        &rig,
        2,
        Duration::from_secs(30),
        "the plan is rolled back",
        |s| plan_state(s) == "rolled_back",
    )
    .await;
    let took = turned.elapsed();
    // One evaluation period, one tick for the replicas to send their counts, one for the
    // driver's own: a bound on the mechanism, not a performance figure.
    let bound = Duration::from_millis(eval_ms + 2000 + 1500);
    assert!(took <= bound, "rollback took {took:?}, more than {bound:?}");
    assert_eq!(plan_step(&rolled), 1, "rolled back from the 25% step");
    assert!(
        rolled["plan"]["reason"].as_str().unwrap().contains(why),
        "{:#}",
        rolled["plan"]
    );
    // Client requests keep succeeding (retried on a stable key) while the load goes on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{ok} requests succeeded, {failed} failed");
    let view = rig.keys(1).await;
    assert_eq!(view["canary_percent"], 0, "{view:#}");
    assert_ne!(key_of(&view, "new")["state"], "active", "{view:#}");
    assert_eq!(key_of(&view, "old")["state"], "active", "{view:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_answering_500_at_25_percent_is_rolled_back_within_one_evaluation_period() {
    let bad = Behavior::ServerError(500);
    a_new_key_that_turns_bad_at_25_percent_is_rolled_back(bad, "error ratio").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_answering_401_at_25_percent_is_rolled_back_within_one_evaluation_period() {
    let bad = Behavior::Unauthorized;
    a_new_key_that_turns_bad_at_25_percent_is_rolled_back(bad, "unauthorized").await;
}

fn pid_of(holder: &str) -> u32 {
    holder
        .rsplit('-')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_driver_is_killed_another_replica_continues_from_the_same_step_within_the_lease() {
    let lease_ms = 2000;
    let rig = Rig::start(&rotation_section(200, lease_ms, 3)).await;
    let load = rig.load(6);
    rig.start_plan(&["old"]).await;
    let s = wait_status(
        &rig,
        0,
        Duration::from_secs(60),
        "a driver at the 25% step",
        |s| plan_step(s) == 1 && !s["lease"]["holder"].as_str().unwrap_or("").is_empty(),
    )
    .await;
    let holder = s["lease"]["holder"].as_str().unwrap().to_string();
    let fence = s["lease"]["fence"].as_u64().unwrap();
    let victim = rig
        .replicas
        .iter()
        .position(|r| r.proc.pid() == pid_of(&holder))
        .expect("the holder is one of the replicas");
    load.killed.store(victim, Ordering::Relaxed);
    signal_quiet(rig.replicas[victim].proc.pid(), "-KILL");
    let killed = Instant::now();
    let other = (victim + 1) % 3;
    let s = wait_status(
        &rig,
        other,
        Duration::from_secs(20),
        "another replica holds the lease",
        |s| s["lease"]["holder"].as_str().is_some_and(|h| h != holder),
    )
    .await;
    let took = killed.elapsed();
    let bound = Duration::from_millis(lease_ms + 2500);
    assert!(took <= bound, "takeover took {took:?}, more than {bound:?}");
    assert_eq!(s["lease"]["fence"].as_u64().unwrap(), fence + 1);
    assert!(plan_step(&s) >= 1, "the step went back: {:#}", s["plan"]);
    let done = wait_status(
        &rig,
        other,
        Duration::from_secs(90),
        "the plan is done",
        |s| plan_state(s) == "done",
    )
    .await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{ok} succeeded, {failed} failed");
    // The new driver continued from the step the plan was at: its first advance left that step.
    let new_driver = done["lease"]["holder"].as_str().unwrap();
    let first = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|h| h["replica"] == new_driver && h["event"] == "advance")
        .expect("an advance by the new driver");
    let from_step = plan_step(&s) as usize;
    let next = [5, 25, 50, 100][from_step + 1];
    assert!(
        first["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("to {next}%")),
        "{first:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_paused_past_its_lease_cannot_write_when_it_resumes() {
    let lease_ms = 1500;
    // Long dwell: the plan stays at one step while the driver changes hands.
    let rig = Rig::start(&rotation_section(200, lease_ms, 60)).await;
    let load = rig.load(3);
    rig.start_plan(&["old"]).await;
    let s = wait_status(&rig, 0, Duration::from_secs(20), "a driver", |s| {
        !s["lease"]["holder"].as_str().unwrap_or("").is_empty()
    })
    .await;
    let holder = s["lease"]["holder"].as_str().unwrap().to_string();
    let fence = s["lease"]["fence"].as_u64().unwrap();
    let paused = rig
        .replicas
        .iter()
        .position(|r| r.proc.pid() == pid_of(&holder))
        .expect("the holder is one of the replicas");
    let pid = rig.replicas[paused].proc.pid();
    signal_quiet(pid, "-STOP");
    let other = (paused + 1) % 3;
    wait_status(
        &rig,
        other,
        Duration::from_secs(20),
        "another replica takes the lease",
        |s| s["lease"]["fence"].as_u64().unwrap_or(0) > fence,
    )
    .await;
    signal_quiet(pid, "-CONT");
    // The former driver's next write (its lease renewal) carries the stale fence: refused, and
    // the refusal is in the plan's history.
    let s = wait_status(
        &rig,
        other,
        Duration::from_secs(20),
        "the stale driver's refused write",
        |s| {
            s["history"].as_array().into_iter().flatten().any(|h| {
                h["replica"] == holder
                    && h["event"] == "refused"
                    && h["fence"].as_u64() == Some(fence)
            })
        },
    )
    .await;
    let (_, failed) = load.finish().await;
    assert_eq!(failed, 0);
    // The lease stayed with the new driver, and the plan was not written with the old fence
    // after the takeover.
    assert_ne!(s["lease"]["holder"], holder.as_str());
    let history = s["history"].as_array().unwrap();
    let takeover = history
        .iter()
        .find(|h| h["event"] == "lease" && h["fence"].as_u64() == Some(fence + 1))
        .expect("the takeover");
    let takeover_at = takeover["at_ms"].as_u64().unwrap();
    assert!(
        !history
            .iter()
            .any(|h| h["at_ms"].as_u64().unwrap() >= takeover_at
                && h["fence"].as_u64() == Some(fence)
                && h["event"] != "refused"),
        "{history:#?}"
    );
    assert_eq!(plan_state(&s), "running");
}

/// `keygate rotate ...` against a replica: a dry run changes nothing, start/pause/resume/abort
/// change the plan, and status prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotate_cli_dry_runs_starts_pauses_resumes_and_aborts_a_plan() {
    let rig = Rig::start(&rotation_section(200, 3000, 60)).await;
    let url = rig.replicas[1].url("");
    let rotate = |args: &[&str]| {
        let out = std::process::Command::new(crate::harness::processes::keygate_binary())
            .arg("rotate")
            .args(args)
            .args(["--url", &url])
            .env("KEYGATE_ADMIN_TOKEN", ADMIN)
            .output()
            .expect("run keygate rotate");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, out) = rotate(&[
        "start",
        "p",
        "--new",
        "new",
        "--old",
        "old",
        "--steps",
        "10,100",
        "--dry-run",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    assert!(out.contains("steps [10,100]"), "{out}");
    assert_eq!(
        plan_state(&rig.status(0).await),
        "none",
        "a dry run started nothing"
    );
    let (code, out) = rotate(&[
        "start", "p", "--new", "new", "--old", "old", "--steps", "10,100",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("running at step 1 of 2 (10%)"), "{out}");
    let (code, out) = rotate(&["start", "p", "--new", "new", "--old", "old"]);
    assert_eq!(code, Some(1), "a second plan is refused: {out}");
    assert!(out.contains("already running"), "{out}");
    let (code, out) = rotate(&["pause", "p", "--reason", "looking"]);
    assert_eq!((code, out.contains("paused")), (Some(0), true), "{out}");
    let (code, out) = rotate(&["resume", "p"]);
    assert_eq!((code, out.contains("running")), (Some(0), true), "{out}");
    let (code, out) = rotate(&["abort", "p", "--reason", "changed my mind"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("aborted"), "{out}");
    let s = rig.status(2).await;
    assert_eq!(plan_state(&s), "aborted");
    assert_eq!(s["plan"]["reason"], "changed my mind");
    let (code, out) = rotate(&["status", "p"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("admin abort: changed my mind"), "{out}");
}
