//! Hot reload: re-read the config file and swap the running [`Gateway`] whole, without a restart
//! and without dropping a request. Triggered by SIGHUP ([`spawn_sighup_reloader`], started by
//! `gateway::run`), by a change of the file itself (`watch.rs`), by `POST /admin/reload` on this
//! replica, which reaches every replica sharing its Redis ([`reload_cluster`], through
//! `crate::store::reload_bus`), and by such a reload asked of another replica.
//!
//! 1. `Config::load` re-reads `AppState::config_path`; an invalid file is rejected with every
//!    problem logged and returned, and the running config stays.
//! 2. Settings only a restart can apply (the listener, connection limits, the whole `[store]`
//!    section) keep their running values; each one changed is logged as needing a restart.
//! 3. The new pools are synced to the store: new keys join; keys no longer configured go to
//!    `draining` (reason `removed`); weights, groups, policies and the canary follow the config.
//! 4. The new `Gateway` replaces the old one in one atomic swap. Requests in flight hold their
//!    own `Arc` of the old one, so they finish with the secrets and settings they started with.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::state::{AppState, Gateway};
pub use crate::store::reload_bus::ReplicaAnswer;

pub mod watch;

/// One reload at a time (SIGHUP and the admin API may race): otherwise an older config could be
/// swapped in after a newer one was synced to the store. Process-wide is fine: reloads are rare.
static RELOADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a reload changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub config_path: String,
    /// Short SHA-256 of the file read (replicas compare it).
    #[serde(default)]
    pub config_hash: String,
    pub pools: Vec<PoolChange>,
    /// Pools no longer configured (their keys stay in the store; no client can reach them).
    pub pools_removed: Vec<String>,
    /// Changed settings only a restart applies; their running values were kept.
    pub restart_needed: Vec<String>,
    /// Every replica's answer (this one's included) when the reload went cluster-wide.
    #[serde(default)]
    pub replicas: Vec<ReplicaAnswer>,
}

/// The first 16 hex digits of the SHA-256 of the file at `path`; empty when it cannot be read.
pub fn file_hash(path: &std::path::Path) -> String {
    use sha2::Digest;
    match std::fs::read(path) {
        Ok(bytes) => hex::encode(sha2::Sha256::digest(&bytes))[..16].to_string(),
        Err(_) => String::new(),
    }
}

/// Reloads this replica, then asks every replica sharing its Redis to re-read its own file and
/// collects their answers (`POST /admin/reload`). An invalid file here is refused before any
/// other replica is asked. A Redis that cannot be reached leaves the others unasked; the report
/// then lists this replica alone, with that error.
pub async fn reload_cluster(state: &AppState) -> Result<ReloadReport, String> {
    let mut report = reload(state).await?;
    let Some(bus) = &state.reload_bus else {
        return Ok(report);
    };
    let own = ReplicaAnswer {
        replica: bus.replica.clone(),
        config_hash: report.config_hash.clone(),
        ok: true,
        error: None,
        differs_from_requester: false,
    };
    report.replicas = match bus.reload_everywhere(own.clone()).await {
        Ok(answers) => answers,
        Err(e) => {
            tracing::warn!(error = %e, "cluster-wide reload: Redis unreachable; only this replica reloaded");
            let error = Some(format!("the other replicas were not asked: Redis: {e}"));
            vec![ReplicaAnswer { error, ..own }]
        }
    };
    Ok(report)
}

/// One pool of the new config and how its key list changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolChange {
    pub pool: String,
    /// The pool did not exist before this reload.
    pub new: bool,
    pub keys: usize,
    pub keys_added: Vec<String>,
    /// Now draining with reason `removed`.
    pub keys_removed: Vec<String>,
}

/// The pools' key changes for the log, e.g. `p: 3 keys +k4 -k2; q (new): 2 keys`.
fn change_summary(pools: &[PoolChange]) -> String {
    let one = |p: &PoolChange| {
        let mut line = format!(
            "{}{}: {} keys",
            p.pool,
            if p.new { " (new)" } else { "" },
            p.keys
        );
        p.keys_added
            .iter()
            .for_each(|k| line.push_str(&format!(" +{k}")));
        p.keys_removed
            .iter()
            .for_each(|k| line.push_str(&format!(" -{k}")));
        line
    };
    pools.iter().map(one).collect::<Vec<_>>().join("; ")
}

/// Re-reads the config file and applies it (see the module docs). `Err` carries every problem,
/// one per line; the running config is then unchanged.
pub async fn reload(state: &AppState) -> Result<ReloadReport, String> {
    let _one_at_a_time = RELOADING.lock().await;
    let Some(path) = &state.config_path else {
        let message = "this gateway was not started from a config file; nothing to reload";
        tracing::warn!("config reload refused: {message}");
        return Err(message.to_string());
    };
    let config_hash = file_hash(path);
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(path = %path.display(), problems = e.problems.len(), "config reload rejected; keeping the running config:\n{e}");
            return Err(e.to_string());
        }
    };
    let old = state.gateway();
    let restart_needed = keep_restart_only_settings(&mut config, &old.config);
    for setting in &restart_needed {
        tracing::warn!(setting = %setting, "config reload: this setting changed but only applies after a restart; keeping the running value");
    }
    let new = match Gateway::from_config(config) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "config reload rejected; keeping the running config");
            return Err(e);
        }
    };
    let report = ReloadReport {
        config_path: path.display().to_string(),
        config_hash,
        pools: pool_changes(&old, &new),
        pools_removed: removed_pools(&old, &new),
        restart_needed,
        replicas: Vec::new(),
    };
    state.metrics.initialise_pools(&new.config.pools);
    crate::state::sync_pools(&*state.store, &new).await;
    (state.metrics).init_clients(new.clients.iter().map(|c| c.name.as_str()));
    state.gateway.store(Arc::new(new));
    tracing::info!(path = %report.config_path, config_hash = %report.config_hash, pools = report.pools.len(), changes = %change_summary(&report.pools), "config reloaded");
    Ok(report)
}

/// Puts back the running values of settings a live process cannot change, naming each one
/// that differed.
fn keep_restart_only_settings(new: &mut Config, running: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let (n, r) = (&mut new.server, &running.server);
    keep("server.listen", &mut n.listen, r.listen, &mut changed);
    keep(
        "server.metrics_listen",
        &mut n.metrics_listen,
        r.metrics_listen,
        &mut changed,
    );
    keep(
        "server.header_read_timeout_ms",
        &mut n.header_read_timeout_ms,
        r.header_read_timeout_ms,
        &mut changed,
    );
    keep(
        "server.max_header_bytes",
        &mut n.max_header_bytes,
        r.max_header_bytes,
        &mut changed,
    );
    keep(
        "server.shutdown_grace_s",
        &mut n.shutdown_grace_s,
        r.shutdown_grace_s,
        &mut changed,
    );
    keep(
        "server.idle_timeout_ms",
        &mut n.idle_timeout_ms,
        r.idle_timeout_ms,
        &mut changed,
    );
    keep("server.http2", &mut n.http2, r.http2, &mut changed);
    keep(
        "server.max_connections",
        &mut n.max_connections,
        r.max_connections,
        &mut changed,
    );
    keep(
        "admin.listen",
        &mut new.admin.listen,
        running.admin.listen,
        &mut changed,
    );
    if new.store != running.store {
        new.store = running.store.clone();
        changed.push("store".to_string());
    }
    changed
}

fn keep<T: PartialEq + Copy>(name: &str, new: &mut T, running: T, changed: &mut Vec<String>) {
    if *new != running {
        *new = running;
        changed.push(name.to_string());
    }
}

fn pool_changes(old: &Gateway, new: &Gateway) -> Vec<PoolChange> {
    let mut changes: Vec<PoolChange> = (new.config.pools.iter())
        .map(|pool| {
            let now: HashSet<&str> = pool.keys.iter().map(|k| k.id.as_str()).collect();
            let before: HashSet<&str> = (old.config.pool(&pool.name))
                .map(|p| p.keys.iter().map(|k| k.id.as_str()).collect())
                .unwrap_or_default();
            let mut keys_added: Vec<String> =
                now.difference(&before).map(|s| s.to_string()).collect();
            let mut keys_removed: Vec<String> =
                before.difference(&now).map(|s| s.to_string()).collect();
            keys_added.sort();
            keys_removed.sort();
            PoolChange {
                pool: pool.name.clone(),
                new: old.config.pool(&pool.name).is_none(),
                keys: pool.keys.len(),
                keys_added,
                keys_removed,
            }
        })
        .collect();
    changes.sort_by(|a, b| a.pool.cmp(&b.pool));
    changes
}

fn removed_pools(old: &Gateway, new: &Gateway) -> Vec<String> {
    let mut removed: Vec<String> = (old.pools.keys())
        .filter(|p| !new.pools.contains_key(*p))
        .cloned()
        .collect();
    removed.sort();
    removed
}

/// Reloads on every SIGHUP until `stop` completes; a reload in progress finishes first. The
/// handler is installed before this returns, so a SIGHUP sent once the server answers never
/// meets the default (fatal) disposition. `None` when there is no SIGHUP to listen for.
pub fn spawn_sighup_reloader(
    state: Arc<AppState>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Option<JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload through the admin API");
                return None;
            }
        };
        Some(tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    got = hangups.recv() => {
                        if got.is_none() {
                            return;
                        }
                        tracing::info!("SIGHUP: reloading the config");
                        // Success and failure are both logged by `reload`.
                        let _ = reload(&state).await;
                    }
                }
            }
        }))
    }
    #[cfg(not(unix))]
    {
        let _ = (state, stop);
        None
    }
}
