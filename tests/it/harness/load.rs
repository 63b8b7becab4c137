//! Steady client load through whole gateways, and what it measured: per-request latency and
//! status, the store wait the gateway timed. Shared by the store outage and topology tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::mock::MockUpstream;
use tokio::task::JoinHandle;

use super::gateway::{chat, TestGateway, CLIENT_TOKEN};
use super::wait_until;

/// Latency-sensitive tests run one at a time, so they do not measure each other's load.
pub static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One client request: when it started, how long it took, its status (0: no answer).
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    pub latency: Duration,
    pub status: u16,
}

/// Steady client load: `per_gateway` workers per gateway, each sending one chat request
/// after another with a short pause (so two cores are not saturated and latency means
/// something).
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(gateways: &[&TestGateway], per_gateway: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut workers = Vec::new();
        for gw in gateways {
            for _ in 0..per_gateway {
                let (stop, client) = (stop.clone(), client.clone());
                let url = gw.url("/v1/chat/completions");
                workers.push(tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let body = chat("m", false);
                    while !stop.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        let r = client
                            .post(&url)
                            .bearer_auth(CLIENT_TOKEN)
                            .json(&body)
                            .send()
                            .await;
                        let status = match r {
                            Ok(r) => {
                                let s = r.status().as_u16();
                                let _ = r.bytes().await;
                                s
                            }
                            Err(_) => 0,
                        };
                        samples.push(Sample {
                            at,
                            latency: at.elapsed(),
                            status,
                        });
                        tokio::time::sleep(Duration::from_millis(8)).await;
                    }
                    samples
                }));
            }
        }
        Load { stop, workers }
    }

    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for w in self.workers {
            all.extend(w.await.unwrap());
        }
        all.sort_by_key(|s| s.at);
        all
    }
}

/// The `q` quantile of the latencies of `samples`.
pub fn quantile(samples: &[Sample], q: f64) -> Duration {
    let mut l: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    l.sort();
    if l.is_empty() {
        return Duration::ZERO;
    }
    l[((l.len() - 1) as f64 * q).round() as usize]
}

pub fn between(samples: &[Sample], from: Instant, to: Instant) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .copied()
        .collect()
}

pub fn failed(samples: &[Sample]) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| s.status != 200)
        .copied()
        .collect()
}

/// How many `op` store calls `gw` timed, and how many of them took longer than `bound_s`
/// (a bucket bound of `keygate_store_duration_seconds`).
pub fn store_waits_over(gw: &TestGateway, op: &str, bound_s: f64) -> (u64, u64) {
    use prometheus::core::Metric;
    let m = gw
        .state
        .metrics
        .store_duration
        .with_label_values(&[op])
        .metric();
    let h = m.get_histogram();
    let within = h
        .get_bucket()
        .iter()
        .find(|b| (b.upper_bound() - bound_s).abs() < 1e-9)
        .map(|b| b.cumulative_count())
        .expect("a bucket at the bound");
    (h.get_sample_count(), h.get_sample_count() - within)
}

/// Waits until the first requests went through (connections are open), and returns when.
pub async fn warmed_up(mock: &MockUpstream) -> Instant {
    wait_until(Duration::from_secs(10), "warm-up traffic", || async {
        mock.total_requests() >= 50
    })
    .await;
    Instant::now()
}
