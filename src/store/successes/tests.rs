//! The batcher on the memory store: what it buffers, when it writes, and shutdown.

use std::sync::Arc;
use std::time::Duration;

use super::{SuccessBatcher, MAX_KEYS};
use crate::pool::KeyId;
use crate::store::memory::MemoryStore;
use crate::store::spec::SpecKey;
use crate::store::{KeyStore, PoolSpec, StorePolicy};

fn kid(id: &str) -> KeyId {
    KeyId::new(id).expect("valid id")
}

async fn store_with(keys: usize) -> Arc<dyn KeyStore> {
    let store = Arc::new(MemoryStore::new());
    let spec = PoolSpec {
        name: "p".into(),
        policy: StorePolicy::default(),
        canary_group: "canary".into(),
        canary_percent: 0,
        canary_fallback: true,
        keys: (0..keys)
            .map(|i| SpecKey {
                id: kid(&format!("k{i}")),
                weight: 1,
                group: "stable".into(),
                limits: Default::default(),
            })
            .collect(),
        budget: Default::default(),
    };
    store.sync(&spec).await.expect("sync");
    store
}

async fn successes(store: &dyn KeyStore) -> Vec<u64> {
    let snap = store.snapshot("p", None).await.expect("snapshot");
    snap.keys.iter().map(|k| k.successes).collect()
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_ticket_lands_by_flushing_its_batch_in_one_call() {
    let store = store_with(2).await;
    let batcher = SuccessBatcher::new(store.clone(), LONG);
    let mut tickets = Vec::new();
    for key in ["k0", "k0", "k1", "k0"] {
        tickets.push(batcher.record("p", &kid(key), 200, None).expect("buffered"));
    }
    assert_eq!(
        successes(&*store).await,
        [0, 0],
        "nothing written before its time"
    );
    tickets.remove(1).landed().await;
    assert_eq!(successes(&*store).await, [3, 1]);
    // The others were in the same batch: landing them writes nothing more.
    for t in tickets {
        t.landed().await;
    }
    assert_eq!(successes(&*store).await, [3, 1]);
}

#[tokio::test]
async fn a_buffer_is_written_when_its_interval_passes() {
    let store = store_with(1).await;
    let batcher = SuccessBatcher::new(store.clone(), Duration::from_millis(20));
    batcher
        .record("p", &kid("k0"), 200, None)
        .expect("buffered");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while successes(&*store).await != [1] {
        assert!(std::time::Instant::now() < deadline, "never flushed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_full_buffer_is_written_before_its_interval() {
    let store = store_with(MAX_KEYS).await;
    let batcher = SuccessBatcher::new(store.clone(), LONG);
    for i in 0..MAX_KEYS {
        batcher.record("p", &kid(&format!("k{i}")), 200, None);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while successes(&*store).await.iter().sum::<u64>() < MAX_KEYS as u64 {
        assert!(std::time::Instant::now() < deadline, "a full buffer waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn shutdown_writes_what_is_left_and_refuses_later_successes() {
    let store = store_with(1).await;
    let batcher = SuccessBatcher::new(store.clone(), LONG);
    for _ in 0..5 {
        batcher
            .record("p", &kid("k0"), 200, None)
            .expect("buffered");
    }
    batcher.shutdown().await;
    assert_eq!(successes(&*store).await, [5]);
    assert!(batcher.record("p", &kid("k0"), 200, None).is_none());
}

#[tokio::test]
async fn a_zero_interval_batches_nothing() {
    let batcher = SuccessBatcher::new(store_with(1).await, Duration::ZERO);
    assert!(batcher.record("p", &kid("k0"), 200, None).is_none());
}
