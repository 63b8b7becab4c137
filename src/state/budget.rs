//! Budgets that keep one client (or a crowd) from exhausting the process: request body bytes
//! buffered in flight, across the process (`server.max_buffered_bytes`, over it 503
//! `server_busy`) and per client (`client_max_buffered_bytes` or the client's own
//! `max_buffered_bytes`, over it 429 `client_busy`), and requests in flight per client
//! (`[[clients]] max_concurrent`, over it 429 `client_concurrency_exceeded`).
//!
//! Bytes are reserved before they are buffered (the whole Content-Length up front when it is
//! declared, each growth of the buffer otherwise) and released by dropping the guard; so the
//! counters never run below what is really held, and an early return cannot leak a reservation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use prometheus::{IntCounterVec, IntGauge};
use rustc_hash::FxHashMap;

use crate::error::ApiError;
use crate::state::ClientAuth;

/// What is in use, process-wide and per client; lives as long as the process (across reloads).
#[derive(Default)]
pub struct Budgets {
    process_bytes: Arc<AtomicUsize>,
    /// By client name; as many entries as clients ever configured.
    clients: Mutex<FxHashMap<String, Arc<ClientUse>>>,
}

#[derive(Default)]
struct ClientUse {
    bytes: AtomicUsize,
    in_flight: AtomicUsize,
}

/// Adds `n` to `counter` unless that would pass `max`.
fn try_add(counter: &AtomicUsize, n: usize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(n).filter(|total| *total <= max)
        })
        .is_ok()
}

impl Budgets {
    /// One more request of `client` in flight, or 429 past its `max_concurrent`. The returned
    /// [`Admission`] holds the place (and any bytes reserved through it) until dropped.
    pub fn admit(
        &self,
        client: &ClientAuth,
        process_max_bytes: usize,
        metrics: (&IntGauge, &IntCounterVec),
    ) -> Result<Admission, ApiError> {
        let usage = {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            match clients.get(&client.name) {
                Some(usage) => usage.clone(),
                None => clients.entry(client.name.clone()).or_default().clone(),
            }
        };
        let max_concurrent = client.max_concurrent.unwrap_or(usize::MAX);
        if !try_add(&usage.in_flight, 1, max_concurrent) {
            metrics
                .1
                .with_label_values(&["client_concurrency_exceeded"])
                .inc();
            return Err(busy(
                StatusCode::TOO_MANY_REQUESTS,
                "client_concurrency_exceeded",
                format!("This client already has {max_concurrent} requests in flight, its limit; retry when one has finished."),
            ));
        }
        Ok(Admission {
            process: self.process_bytes.clone(),
            client: usage,
            process_max: process_max_bytes,
            client_max: client.max_buffered_bytes,
            reserved: 0,
            gauge: metrics.0.clone(),
            refusals: metrics.1.clone(),
        })
    }

    /// Bytes reserved across the process right now.
    pub fn buffered_bytes(&self) -> usize {
        self.process_bytes.load(Ordering::Acquire)
    }
}

fn busy(status: StatusCode, code: &'static str, message: String) -> ApiError {
    let kind = if status == StatusCode::TOO_MANY_REQUESTS {
        "rate_limit_error"
    } else {
        "service_unavailable"
    };
    ApiError {
        retry_after_s: Some(1),
        ..ApiError::new(status, kind, code, message)
    }
}

/// One request's place in its client's concurrency limit and its reserved body bytes.
pub struct Admission {
    process: Arc<AtomicUsize>,
    client: Arc<ClientUse>,
    process_max: usize,
    client_max: usize,
    reserved: usize,
    gauge: IntGauge,
    refusals: IntCounterVec,
}

impl Admission {
    /// Grows the reservation to `total` bytes: 429 `client_busy` past the client's budget, 503
    /// `server_busy` past the process's. A refused growth leaves the reservation as it was.
    pub fn reserve(&mut self, total: usize) -> Result<(), ApiError> {
        let Some(more) = total.checked_sub(self.reserved).filter(|n| *n > 0) else {
            return Ok(());
        };
        if !try_add(&self.client.bytes, more, self.client_max) {
            self.refusals.with_label_values(&["client_busy"]).inc();
            return Err(busy(
                StatusCode::TOO_MANY_REQUESTS,
                "client_busy",
                format!("This client has too many request bytes in flight (its limit is {} bytes); retry when earlier requests have finished.", self.client_max),
            ));
        }
        if !try_add(&self.process, more, self.process_max) {
            self.client.bytes.fetch_sub(more, Ordering::AcqRel);
            self.refusals.with_label_values(&["server_busy"]).inc();
            return Err(busy(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                "keygate is holding as many request bytes as it may; retry shortly.".to_string(),
            ));
        }
        self.reserved = total;
        self.gauge.add(more as i64);
        Ok(())
    }

    /// Gives the reserved bytes back (the body is no longer held); the request keeps its place.
    pub fn release_bytes(&mut self) {
        self.client.bytes.fetch_sub(self.reserved, Ordering::AcqRel);
        self.process.fetch_sub(self.reserved, Ordering::AcqRel);
        self.gauge.sub(self.reserved as i64);
        self.reserved = 0;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.release_bytes();
        self.client.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(max_buffered_bytes: usize, max_concurrent: Option<usize>) -> ClientAuth {
        ClientAuth {
            name: "c".into(),
            token_sha256: [0; 32],
            pools: vec![],
            max_buffered_bytes,
            max_concurrent,
        }
    }

    fn metrics() -> (IntGauge, IntCounterVec) {
        let g = IntGauge::new("g", "g").unwrap();
        let c = IntCounterVec::new(prometheus::Opts::new("c", "c"), &["reason"]).unwrap();
        (g, c)
    }

    #[test]
    fn bytes_are_refused_past_either_budget_and_released_on_drop() {
        let budgets = Budgets::default();
        let (g, c) = metrics();
        let mut a = budgets.admit(&client(100, None), 150, (&g, &c)).unwrap();
        a.reserve(60).unwrap();
        let e = a.reserve(101).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (429, "client_busy"));
        let other = client(100, None);
        let mut b = budgets
            .admit(
                &ClientAuth {
                    name: "d".into(),
                    ..other
                },
                150,
                (&g, &c),
            )
            .unwrap();
        b.reserve(80).unwrap();
        let e = b.reserve(91).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (503, "server_busy"));
        assert_eq!(budgets.buffered_bytes(), 140);
        assert_eq!(g.get(), 140);
        drop(a);
        drop(b);
        assert_eq!(budgets.buffered_bytes(), 0);
        assert_eq!(g.get(), 0);
    }

    #[test]
    fn concurrency_is_refused_past_the_client_limit() {
        let budgets = Budgets::default();
        let (g, c) = metrics();
        let limited = client(100, Some(2));
        let first = budgets.admit(&limited, 100, (&g, &c)).unwrap();
        let _second = budgets.admit(&limited, 100, (&g, &c)).unwrap();
        let e = budgets.admit(&limited, 100, (&g, &c)).err().unwrap();
        assert_eq!(
            (e.status.as_u16(), e.code),
            (429, "client_concurrency_exceeded")
        );
        drop(first);
        assert!(budgets.admit(&limited, 100, (&g, &c)).is_ok());
    }
}
