//! The operator commands (`keygate keys ...`, `keygate canary set`, `keygate reload`): one admin
//! API call each, the answer printed for humans.
//!
//! The token comes from the environment (`KEYGATE_ADMIN_TOKEN`, or the variable named by
//! `--token-env`), never from an argument. Exit codes: 0 done; 1 the gateway refused or failed
//! (its message is printed); 2 the command could not run (no token, bad `--url`, gateway
//! unreachable, an answer that is not the admin API's).

use std::process::ExitCode;
use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::table::pool_section;
use super::{AdminTarget, CanaryCommand, KeysCommand, RotateCommand};
use crate::admin::views::ActionReceipt;
use crate::admin::{PoolList, PoolView};
use crate::reload::ReloadReport;

/// How long one admin call may take (a reload syncs every pool to the store).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a command failed; printed to stderr by [`Failure::exit`].
#[derive(Debug)]
enum Failure {
    /// The gateway answered with an error.
    Refused { status: u16, message: String },
    /// The command could not get an answer.
    Local(String),
}

impl Failure {
    fn exit(self) -> ExitCode {
        match self {
            Failure::Refused { status, message } => {
                eprintln!("keygate: {message} (HTTP {status})");
                ExitCode::FAILURE
            }
            Failure::Local(message) => {
                eprintln!("keygate: {message}");
                ExitCode::from(2)
            }
        }
    }
}

struct AdminClient {
    http: reqwest::Client,
    base: url::Url,
    token: String,
}

impl AdminClient {
    fn new(target: &AdminTarget) -> Result<AdminClient, Failure> {
        let token = std::env::var(&target.token_env)
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Failure::Local(format!(
                    "set {} to the gateway's admin token",
                    target.token_env
                ))
            })?;
        let base = replica_base(&target.url).ok_or_else(|| {
            Failure::Local(format!("--url {:?} is not an http(s) URL", target.url))
        })?;
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| Failure::Local(format!("cannot build an HTTP client: {e}")))?;
        Ok(AdminClient { http, base, token })
    }

    /// `<base>/admin/<segments...>`, each segment percent-encoded (an id cannot add a path step).
    fn url(&self, segments: &[&str]) -> Result<url::Url, Failure> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Failure::Local("--url cannot take a path".into()))?
            .pop_if_empty()
            .push("admin")
            .extend(segments);
        Ok(url)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<T, Failure> {
        let url = self.url(segments)?;
        let mut request = self
            .http
            .request(method, url.clone())
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            let why = unreachable_cause(&e);
            Failure::Local(format!("cannot reach {}: {why}", self.base))
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| Failure::Local(format!("reading the answer from {url}: {e}")))?;
        if !status.is_success() {
            return Err(refusal(status.as_u16(), &text, &self.base));
        }
        serde_json::from_str(&text)
            .map_err(|e| Failure::Local(format!("unexpected answer from {url}: {e}")))
    }
}

/// The replica's base URL from `--url`/`KEYGATE_URL`: an http(s) URL, with a trailing `/v1`
/// (the URL applications are given) dropped, so `http://host:8080/v1` reaches `/admin`.
fn replica_base(text: &str) -> Option<url::Url> {
    let mut url = url::Url::parse(text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())?;
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix("/v1").unwrap_or(path).to_string();
    url.set_path(&path);
    Some(url)
}

/// Why a request got no answer, in words: the connection refused, the name not resolved, the
/// deadline passed, else the innermost error's own text.
fn unreachable_cause(error: &reqwest::Error) -> String {
    let mut innermost: &dyn std::error::Error = error;
    let mut chain = vec![error.to_string()];
    while let Some(source) = innermost.source() {
        chain.push(source.to_string());
        innermost = source;
    }
    let io_kind = chain_io_kind(error);
    let said = |words: &str| chain.iter().any(|c| c.to_ascii_lowercase().contains(words));
    if error.is_timeout() {
        format!("no answer within {} s (timed out)", CALL_TIMEOUT.as_secs())
    } else if io_kind == Some(std::io::ErrorKind::ConnectionRefused) {
        "connection refused (is `keygate serve` running there, on that port?)".into()
    } else if said("dns error") || said("failed to lookup address") {
        format!("the host name could not be resolved (DNS): {innermost}")
    } else {
        innermost.to_string()
    }
}

/// The kind of the first I/O error in `error`'s source chain.
fn chain_io_kind(error: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = e.source();
    }
    None
}

/// The gateway's refusal, in its own words (a replica started without an admin token says so:
/// code `admin_disabled`); an answer that is not JSON (another server, a proxy) says where it
/// came from.
fn refusal(status: u16, body: &str, base: &url::Url) -> Failure {
    let error = serde_json::from_str::<serde_json::Value>(body).ok();
    let said = error.and_then(|v| v["error"]["message"].as_str().map(str::to_string));
    let message = match said {
        Some(message) => message,
        None => format!(
            "{base} did not answer as keygate's admin API: {}",
            body.chars().take(200).collect::<String>()
        ),
    };
    Failure::Refused { status, message }
}

fn finish(result: Result<String, Failure>) -> ExitCode {
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(f) => f.exit(),
    }
}

/// `keygate keys ...`.
pub async fn run_keys(target: &AdminTarget, command: KeysCommand) -> ExitCode {
    finish(keys(target, command).await)
}

async fn keys(target: &AdminTarget, command: KeysCommand) -> Result<String, Failure> {
    let client = AdminClient::new(target)?;
    let (pool, key, action, body) = match command {
        KeysCommand::List { pool: Some(pool) } => {
            let view: PoolView =
                (client.call(Method::GET, &["pools", &pool, "keys"], None)).await?;
            return Ok(pool_section(&view));
        }
        KeysCommand::List { pool: None } => {
            let list: PoolList = client.call(Method::GET, &["pools"], None).await?;
            let sections: Vec<String> = list.pools.iter().map(pool_section).collect();
            return Ok(sections.join("\n"));
        }
        KeysCommand::Enable { pool, key } => (pool, key, "enable", None),
        KeysCommand::Disable { pool, key } => (pool, key, "disable", None),
        KeysCommand::Drain { pool, key } => (pool, key, "drain", None),
        KeysCommand::Reset { pool, key } => (pool, key, "reset", None),
        KeysCommand::Weight { pool, key, weight } => {
            (pool, key, "weight", Some(json!({ "weight": weight })))
        }
        KeysCommand::Group { pool, key, group } => {
            (pool, key, "group", Some(json!({ "group": group })))
        }
    };
    let method = if body.is_some() {
        Method::PUT
    } else {
        Method::POST
    };
    let path = ["pools", pool.as_str(), "keys", key.as_str(), action];
    let receipt: ActionReceipt = client.call(method, &path, body).await?;
    Ok(describe(&receipt))
}

/// One line saying what a change did, e.g. `p/k1: draining`.
fn describe(r: &ActionReceipt) -> String {
    let target = match &r.key {
        Some(k) => format!("{}/{k}", r.pool),
        None => r.pool.clone(),
    };
    let what = match (&r.state, r.weight, &r.group, r.canary_percent) {
        (Some(state), ..) => state.clone(),
        (_, Some(w), ..) => format!("weight {w}"),
        (_, _, Some(g), _) => format!("group {g}"),
        (.., Some(p)) => format!("canary {p}%"),
        _ if r.action == "reset" => "counters reset".to_string(),
        _ => format!("{} done", r.action),
    };
    format!("{target}: {what}\n")
}

/// `keygate canary set POOL PERCENT`.
pub async fn run_canary(target: &AdminTarget, command: CanaryCommand) -> ExitCode {
    finish(canary(target, command).await)
}

async fn canary(target: &AdminTarget, command: CanaryCommand) -> Result<String, Failure> {
    let client = AdminClient::new(target)?;
    let CanaryCommand::Set { pool, percent } = command;
    let body = json!({ "percent": percent });
    let path = ["pools", pool.as_str(), "canary"];
    let receipt: ActionReceipt = client.call(Method::PUT, &path, Some(body)).await?;
    Ok(describe(&receipt))
}

/// `keygate reload`.
pub async fn run_reload(target: &AdminTarget) -> ExitCode {
    finish(reload(target).await)
}

async fn reload(target: &AdminTarget) -> Result<String, Failure> {
    let client = AdminClient::new(target)?;
    let report: ReloadReport = client.call(Method::POST, &["reload"], None).await?;
    let mut out = format!("config reloaded from {}\n", report.config_path);
    for p in &report.pools {
        out.push_str(&format!(
            "  pool {}{}: {} keys",
            p.pool,
            if p.new { " (new)" } else { "" },
            p.keys
        ));
        if !p.keys_added.is_empty() {
            out.push_str(&format!(", added {}", p.keys_added.join(" ")));
        }
        if !p.keys_removed.is_empty() {
            out.push_str(&format!(", draining {}", p.keys_removed.join(" ")));
        }
        out.push('\n');
    }
    for p in &report.pools_removed {
        out.push_str(&format!("  pool {p}: removed from the config\n"));
    }
    for s in &report.restart_needed {
        out.push_str(&format!(
            "  {s} changed: needs a restart (running value kept)\n"
        ));
    }
    for r in &report.replicas {
        let verdict = match &r.error {
            Some(e) => format!("error: {e}"),
            None => "ok".to_string(),
        };
        let differs = if r.differs_from_requester {
            " (its file differs)"
        } else {
            ""
        };
        out.push_str(&format!(
            "  replica {} config {}: {verdict}{differs}\n",
            r.replica, r.config_hash
        ));
    }
    Ok(out)
}

/// `keygate rotate ...`.
pub async fn run_rotate(target: &AdminTarget, command: RotateCommand) -> ExitCode {
    finish(rotate(target, command).await)
}

async fn rotate(target: &AdminTarget, command: RotateCommand) -> Result<String, Failure> {
    let client = AdminClient::new(target)?;
    let (pool, status): (String, serde_json::Value) = match command {
        RotateCommand::Start {
            pool,
            new_keys,
            old_keys,
            steps,
            min_requests,
            min_dwell_s,
            max_error_increase_pct,
            max_p99_ratio_pct,
            p99_slack_ms,
            dry_run,
        } => {
            let body = json!({
                "new_keys": new_keys, "old_keys": old_keys, "steps": steps,
                "min_requests": min_requests, "min_dwell_s": min_dwell_s,
                "max_error_increase_pct": max_error_increase_pct,
                "max_p99_ratio_pct": max_p99_ratio_pct, "p99_slack_ms": p99_slack_ms,
                "dry_run": dry_run,
            });
            let path = ["pools", pool.as_str(), "rotation"];
            let status = client.call(Method::POST, &path, Some(body)).await?;
            (pool, status)
        }
        RotateCommand::Status { pool } => {
            let path = ["pools", pool.as_str(), "rotation"];
            let status = client.call(Method::GET, &path, None).await?;
            (pool, status)
        }
        RotateCommand::Pause { pool, reason } => control(&client, pool, "pause", reason).await?,
        RotateCommand::Resume { pool } => control(&client, pool, "resume", String::new()).await?,
        RotateCommand::Abort { pool, reason } => control(&client, pool, "abort", reason).await?,
    };
    Ok(describe_rotation(&pool, &status))
}

async fn control(
    client: &AdminClient,
    pool: String,
    action: &str,
    reason: String,
) -> Result<(String, serde_json::Value), Failure> {
    let path = ["pools", pool.as_str(), "rotation", action];
    let body = Some(json!({ "reason": reason }));
    let status = client.call(Method::POST, &path, body).await?;
    Ok((pool, status))
}

/// The admin API's rotation status, for humans.
fn describe_rotation(pool: &str, s: &serde_json::Value) -> String {
    let mut out = String::new();
    if let Some(spec) = s.get("dry_run").filter(|v| !v.is_null()) {
        out.push_str(&format!("dry run: nothing was changed on pool {pool}\n"));
        out.push_str(&format!(
            "  would start: new {} old {} steps {} (min {} canary requests and {} s per step; canary error ratio at most +{} over stable; p99 at most {}x stable + {} ms)\n",
            spec["new_keys"], spec["old_keys"], spec["steps"], spec["min_requests"],
            spec["min_dwell_ms"].as_u64().unwrap_or(0) / 1000, spec["max_error_increase"],
            spec["max_p99_ratio"], spec["p99_slack_ms"]
        ));
    }
    match s.get("plan").filter(|p| !p.is_null()) {
        None => out.push_str(&format!("pool {pool}: no rotation plan\n")),
        Some(plan) => {
            let steps = plan["spec"]["steps"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let step = plan["step"].as_u64().unwrap_or(0) as usize;
            let at = steps
                .get(step)
                .map_or("draining old keys".to_string(), |p| format!("{p}%"));
            out.push_str(&format!(
                "pool {pool}: plan {} {} at step {} of {} ({at}); new {} old {}\n",
                plan["spec"]["id"].as_str().unwrap_or(""),
                plan["state"].as_str().unwrap_or("?"),
                (step + 1).min(steps.len()),
                steps.len(),
                plan["spec"]["new_keys"],
                plan["spec"]["old_keys"],
            ));
            if let Some(r) = plan["reason"].as_str().filter(|r| !r.is_empty()) {
                out.push_str(&format!("  reason: {r}\n"));
            }
        }
    }
    for group in ["canary", "stable"] {
        if let Some(g) = s.get(group).filter(|g| !g.is_null()) {
            out.push_str(&format!(
                "  {group}: {} requests, {} errors (ratio {:.3}), {} auth errors, p99 {} ms\n",
                g["requests"],
                g["errors"],
                g["error_ratio"].as_f64().unwrap_or(0.0),
                g["auth_errors"],
                g["p99_ms"]
            ));
        }
    }
    if let Some(v) = s["verdict"].as_str() {
        out.push_str(&format!("  guards: {v}\n"));
    }
    let lease = &s["lease"];
    if lease["holder"].as_str().is_some_and(|h| !h.is_empty()) {
        out.push_str(&format!(
            "  driver: {} (fence {})\n",
            lease["holder"].as_str().unwrap_or(""),
            lease["fence"]
        ));
    }
    for h in s["history"].as_array().into_iter().flatten().take(10) {
        out.push_str(&format!(
            "  {} fence {} {} {}: {}\n",
            h["at_ms"],
            h["fence"],
            h["replica"].as_str().unwrap_or(""),
            h["event"].as_str().unwrap_or(""),
            h["detail"].as_str().unwrap_or("")
        ));
    }
    out
}
