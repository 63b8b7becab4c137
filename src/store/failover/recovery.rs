//! The background side of the failover store: probing Redis while degraded, writing back what
//! memory learned, and keeping the last-known snapshots fresh while healthy. None of its Redis
//! calls counts towards degraded mode (only callers' calls do, through `Shared::on_redis`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::writeback::{self, system_now_ms};
use super::{lock, Shared};
use crate::store::reload_bus::ALIVE_WITHIN;
use crate::store::{KeyStore, StoreError};

/// Every `probe_interval` (or at once when woken): probe and recover while degraded, else
/// write back and refresh snapshots.
pub(super) async fn background(shared: Weak<Shared>, wake: Arc<Notify>, cancel: CancellationToken) {
    let mut last_refresh: Option<Instant> = None;
    loop {
        let Some(interval) = shared.upgrade().map(|s| s.opts.probe_interval) else {
            return;
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
        }
        let Some(s) = shared.upgrade() else { return };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = s.tick(&mut last_refresh) => {}
        }
    }
}

impl Shared {
    async fn tick(&self, last_refresh: &mut Option<Instant>) {
        if self.confirm_wanted.swap(false, Ordering::AcqRel) {
            self.confirm_outage().await;
        }
        if let Err(e) = self.redis.check_topology().await {
            tracing::debug!(error = %e, "topology check failed");
        }
        if self.is_degraded() {
            if self.try_recover().await.is_ok() {
                *last_refresh = Some(Instant::now());
            }
            return;
        }
        if self.write_back(false).await.is_err() {
            return;
        }
        if last_refresh.is_none_or(|t| t.elapsed() >= self.opts.snapshot_interval) {
            *last_refresh = Some(Instant::now());
            match self.redis.live_replicas(ALIVE_WITHIN).await {
                Ok(n) => self.replicas.store(n.max(1), Ordering::Release),
                Err(e) => tracing::debug!(error = %e, "live replica count failed"),
            }
            for spec in self.all_specs() {
                if self.refresh_snapshot(&spec.name).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Takes a new paged snapshot of `pool` if its change counter moved since the kept one (one
    /// `HMGET`), or the kept one is older than `snapshot_max_age`, or there is none. A failed
    /// refresh does not count towards degraded mode: requests detect real outages.
    async fn refresh_snapshot(&self, pool: &str) -> Result<(), StoreError> {
        let kept = lock(&self.kept_version).get(pool).copied();
        if let Some((ver, taken)) = kept.filter(|(_, t)| t.elapsed() < self.opts.snapshot_max_age) {
            match self.redis.pool_version(pool).await {
                Ok(Some(now)) if now == ver => {
                    tracing::trace!(pool, ver, age = ?taken.elapsed(), "snapshot current");
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) if e.is_outage() => {
                    tracing::debug!(pool, error = %e, "change counter read failed");
                    return Err(e);
                }
                Err(_) => {}
            }
        }
        match self.redis.snapshot_versioned(pool, None).await {
            Ok((s, ver)) => {
                self.remember(pool, s, ver);
                Ok(())
            }
            Err(e) if e.is_outage() => {
                tracing::debug!(pool, error = %e, "snapshot refresh failed");
                Err(e)
            }
            Err(_) => Ok(()),
        }
    }

    /// Replays the journal, then writes back pools Redis lost (from memory when `from_memory`,
    /// else from the last Redis snapshot). Stops at the first outage error, keeping the rest.
    async fn write_back(&self, from_memory: bool) -> Result<(), StoreError> {
        let now = system_now_ms();
        loop {
            let Some((pool, op)) = lock(&self.journal).pop_front() else {
                break;
            };
            if let Err(e) = op.replay(&self.redis, &pool, now).await {
                lock(&self.journal).push_front((pool, op));
                return Err(e);
            }
        }
        let recreated: Vec<String> = lock(&self.recreated).iter().cloned().collect();
        for pool in recreated {
            let known = if from_memory {
                self.memory.snapshot(&pool, None).await.ok()
            } else {
                lock(&self.last_seen).get(&pool).cloned()
            };
            if let (Some(spec), Some(known)) = (self.spec(&pool), known) {
                let n = writeback::restore(&self.redis, &spec, &known).await?;
                tracing::info!(pool = %pool, writes = n, "pool re-created in Redis; wrote back its last known state");
            }
            lock(&self.recreated).remove(&pool);
        }
        Ok(())
    }

    /// Probes Redis; when it answers, writes back and leaves degraded mode.
    async fn try_recover(&self) -> Result<(), StoreError> {
        self.redis.ping_redis().await?;
        for spec in self.all_specs() {
            self.redis.sync(&spec).await?;
        }
        self.write_back(true).await?;
        let specs = self.all_specs();
        for spec in &specs {
            // A pool too large to snapshot within the timeout keeps memory's view for now.
            match self.redis.snapshot_versioned(&spec.name, None).await {
                Ok((s, ver)) => self.store_snapshot(&spec.name, s, ver),
                Err(e) => tracing::debug!(pool = %spec.name, error = %e, "no fresh snapshot"),
            }
        }
        self.failures.store(0, Ordering::Release);
        self.failing_since.store(0, Ordering::Release);
        self.pinged.store(false, Ordering::Release);
        self.degraded.store(false, Ordering::Release);
        if let Some(m) = &self.metrics {
            m.store_degraded.set(0);
        }
        let since = lock(&self.degraded_since).take();
        tracing::info!(
            degraded_for_ms = since.map(|t| t.elapsed().as_millis() as u64),
            pools = specs.len(),
            "Redis reachable again: wrote back what memory learned; leaving degraded mode"
        );
        Ok(())
    }
}
