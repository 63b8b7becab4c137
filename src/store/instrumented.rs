//! A [`KeyStore`] decorator that times every call into `keygate_store_duration_seconds{op}` and
//! counts failures in `keygate_store_errors_total{op}`; an operation's label is [`Op::name`].

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{
    KeyStore, Op, PoolSnapshot, PoolSpec, Receipt, SelectRequest, Selection, StoreError,
    SyncReceipt,
};
use crate::metrics::Metrics;

pub struct InstrumentedStore {
    inner: Arc<dyn KeyStore>,
    metrics: Arc<Metrics>,
}

impl InstrumentedStore {
    pub fn new(inner: Arc<dyn KeyStore>, metrics: Arc<Metrics>) -> InstrumentedStore {
        InstrumentedStore { inner, metrics }
    }

    async fn timed<T>(
        &self,
        op: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let r = call.await;
        self.metrics
            .store_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &r {
            if e.is_outage() {
                self.metrics.store_errors.with_label_values(&[op]).inc();
            }
        }
        r
    }
}

#[async_trait]
impl KeyStore for InstrumentedStore {
    async fn select(&self, pool: &str, req: &SelectRequest<'_>) -> Result<Selection, StoreError> {
        self.timed("select", self.inner.select(pool, req)).await
    }

    async fn apply(&self, pool: &str, op: Op<'_>) -> Result<Receipt, StoreError> {
        let name = op.name();
        self.timed(name, self.inner.apply(pool, op)).await
    }

    async fn snapshot(&self, pool: &str, now_ms: Option<u64>) -> Result<PoolSnapshot, StoreError> {
        self.timed("snapshot", self.inner.snapshot(pool, now_ms))
            .await
    }

    async fn sync(&self, spec: &PoolSpec) -> Result<SyncReceipt, StoreError> {
        self.timed("sync", self.inner.sync(spec)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }

    fn degraded(&self) -> bool {
        self.inner.degraded()
    }
}
