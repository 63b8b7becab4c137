//! The background task that reloads a replica without being asked directly: when another
//! replica asked for a cluster-wide reload (`crate::store::reload_bus`), and when its own config file changed
//! (`server.config_watch_ms`; a Kubernetes ConfigMap is swapped by a symlink under the running
//! pod, and the file's content is what is compared, so the swap is seen).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{file_hash, reload};
use crate::state::AppState;
use crate::store::reload_bus::{ReloadBus, ReplicaAnswer, POLL};

/// Starts the task, or returns `None` when there is nothing to watch (no config file).
pub fn spawn_reload_watcher(
    state: Arc<AppState>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Option<JoinHandle<()>> {
    let path = state.config_path.clone()?;
    let watch_ms = state.gateway().config.server.config_watch_ms;
    Some(tokio::spawn(async move {
        tokio::pin!(stop);
        let mut bus_tick = tokio::time::interval(POLL);
        bus_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // 0 turns the file check off (its branch below is never polled).
        let every = Duration::from_millis(watch_ms.max(1));
        let mut file_tick = tokio::time::interval(every);
        file_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut file = FileWatch {
            stamp: stamp(&path),
            hash: file_hash(&path),
            path,
        };
        let mut seen: Option<u64> = None;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = bus_tick.tick(), if state.reload_bus.is_some() => {
                    if let Some(bus) = &state.reload_bus {
                        seen = answer_new_requests(&state, bus, &file.path, seen).await;
                    }
                }
                _ = file_tick.tick(), if watch_ms > 0 => file.reload_if_changed(&state).await,
            }
        }
    }))
}

/// The config file, its size, modification time and inode at the last look, and its hash.
struct FileWatch {
    path: PathBuf,
    stamp: Option<Stamp>,
    hash: String,
}

type Stamp = (u64, std::time::SystemTime, u64);

/// What changes whenever the file's content does (also when a symlink is swapped to a new
/// target, as Kubernetes does with a ConfigMap): read on every tick instead of the whole file,
/// which for a 10,000-key pool is over a megabyte to read and hash.
fn stamp(path: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?, meta.ino()))
}

impl FileWatch {
    async fn reload_if_changed(&mut self, state: &AppState) {
        let stamp = stamp(&self.path);
        if stamp.is_some() && stamp == self.stamp {
            return;
        }
        self.stamp = stamp;
        let now = file_hash(&self.path);
        if now.is_empty() || now == self.hash {
            return;
        }
        tracing::info!(path = %self.path.display(), old = %self.hash, new = %now,
            "the config file changed; reloading");
        self.hash = now;
        // Success and failure are both logged by `reload`.
        let _ = reload(state).await;
    }
}

/// Says this replica is alive, and answers every cluster-wide reload newer than `seen`.
/// Returns the newest generation seen (unchanged when Redis did not answer).
async fn answer_new_requests(
    state: &AppState,
    bus: &ReloadBus,
    path: &std::path::Path,
    seen: Option<u64>,
) -> Option<u64> {
    let current = match bus.heartbeat().await {
        Ok(g) => g,
        Err(e) => {
            tracing::debug!(error = %e, "cluster reload poll: Redis did not answer");
            return seen;
        }
    };
    // The first look only learns where the counter stands: nothing to answer from before.
    let Some(last) = seen else {
        return Some(current);
    };
    // At most a few per poll: older requests expired anyway.
    for generation in current.saturating_sub(8).max(last) + 1..=current {
        let Ok(Some((from, asked_hash))) = bus.request(generation).await else {
            continue;
        };
        if from == bus.replica {
            continue;
        }
        tracing::info!(from = %from, generation, "cluster-wide reload asked by another replica");
        let result = reload(state).await;
        let config_hash = file_hash(path);
        let differs = config_hash != asked_hash;
        if differs {
            tracing::warn!(from = %from, their_hash = %asked_hash, our_hash = %config_hash,
                "this replica's config file differs from the one of the replica that asked for the reload");
        }
        let answer = ReplicaAnswer {
            replica: bus.replica.clone(),
            config_hash,
            ok: result.is_ok(),
            error: result.err(),
            differs_from_requester: differs,
        };
        if let Err(e) = bus.answer(generation, &answer).await {
            tracing::warn!(error = %e, generation, "could not write the reload answer to Redis");
        }
    }
    Some(current)
}
