//! A TCP fault proxy for the fault-injection tests: it listens on `127.0.0.1:0`, forwards every
//! connection to a target (the mock upstream, a redis-server), and can be switched at runtime
//! between [`Fault`]s. Put its address where keygate expects the real service (`base_url`,
//! `redis_url`) and flip the fault while traffic runs.
//!
//! Each connection is one task owning both sockets, so a fault can act on the connection as a
//! whole (a reset sends RST to keygate, not a polite FIN). Faults act on data as it arrives: an
//! idle pooled connection is hit by a new fault with its next request. Every task stops when
//! the proxy is dropped.
//!
//! Besides the fault for all traffic, a rule can target one upstream key: a connection whose
//! request carries the rule's bytes (the key's secret in `Authorization`) gets the rule's fault
//! until its next request head, so "k1's traffic hangs" while the other keys are served.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does to traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything unchanged.
    Pass,
    /// Hold every chunk, in either direction, this long before forwarding it.
    Latency(Duration),
    /// A black hole: accept connections but forward nothing either way until the fault changes.
    Hang,
    /// Close with RST (`SO_LINGER` 0): new connections at once, open ones at their next chunk.
    Reset,
    /// Forward at most `after` bytes of the target's answer, then send FIN towards keygate while
    /// keeping the socket open: keygate reads EOF where (the rest of) the answer should be.
    /// `after: 0` answers nothing at all (new connections are half-closed at once).
    HalfClose { after: usize },
    /// Trickle the target's bytes back: `bytes` at a time, `every` apart (requests pass).
    SlowBody { bytes: usize, every: Duration },
}

/// Faults for requests carrying given bytes; a std mutex held only to scan a chunk.
type Rules = Arc<Mutex<Vec<(Vec<u8>, Fault)>>>;

/// Counters of what went through.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    /// Connections accepted and not yet closed (by either side, or by a fault).
    pub open: AtomicU64,
    /// Bytes keygate sent towards the target (forwarded or not).
    pub bytes_up: AtomicU64,
    /// Bytes forwarded from the target to keygate.
    pub bytes_down: AtomicU64,
    pub resets: AtomicU64,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    rules: Rules,
    pub stats: Arc<ProxyStats>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// A proxy in front of `target`, starting in [`Fault::Pass`].
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fault proxy bind");
        let addr = listener.local_addr().expect("fault proxy addr");
        let (fault, _) = watch::channel(Fault::Pass);
        let proxy = FaultProxy {
            addr,
            fault,
            rules: Rules::default(),
            stats: Arc::default(),
            stop: CancellationToken::new(),
        };
        let conn = Shared {
            target,
            faults: proxy.fault.subscribe(),
            rules: proxy.rules.clone(),
            stats: proxy.stats.clone(),
        };
        tokio::spawn(accept_loop(listener, conn, proxy.stop.clone()));
        proxy
    }

    /// Requests containing `pattern` (and the rest of their connection until the next request
    /// head) get `fault` instead of the proxy-wide one.
    pub fn target(&self, pattern: &str, fault: Fault) {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules.retain(|(p, _)| p != pattern.as_bytes());
        rules.push((pattern.as_bytes().to_vec(), fault));
    }

    /// Switches the fault for every connection, open or new.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// `http://ADDR/v1`: a `base_url` through the proxy.
    pub fn http_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `redis://ADDR/0`: a `redis_url` through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What every connection task shares.
#[derive(Clone)]
struct Shared {
    target: SocketAddr,
    faults: watch::Receiver<Fault>,
    rules: Rules,
    stats: Arc<ProxyStats>,
}

impl Shared {
    /// The rule matching a chunk keygate sent, if any.
    fn rule_for(&self, chunk: &[u8]) -> Option<Fault> {
        let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules
            .iter()
            .find(|(p, _)| !p.is_empty() && chunk.windows(p.len()).any(|w| w == p.as_slice()))
            .map(|(_, f)| *f)
    }
}

async fn accept_loop(listener: TcpListener, shared: Shared, stop: CancellationToken) {
    loop {
        let client = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
        shared.stats.open.fetch_add(1, Ordering::Relaxed);
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            let stats = shared.stats.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection(client, shared) => {}
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Closes `s` with RST instead of FIN.
fn reset(s: TcpStream, stats: &ProxyStats) {
    // Deprecated because a non-zero linger blocks the thread in `close`; zero never blocks.
    #[allow(deprecated)]
    let _ = s.set_linger(Some(Duration::ZERO));
    stats.resets.fetch_add(1, Ordering::Relaxed);
    drop(s);
}

/// Sends FIN to keygate and swallows whatever it still sends, never answering.
async fn half_close(mut client: TcpStream) {
    let _ = client.shutdown().await;
    let mut buf = [0u8; 4096];
    while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Waits while the proxy-wide fault is [`Fault::Hang`], then returns the new one.
async fn wait_out_hang(faults: &mut watch::Receiver<Fault>) -> Fault {
    let next = faults.wait_for(|f| *f != Fault::Hang).await.map(|f| *f);
    match next {
        Ok(f) => f,
        // The proxy is gone: hang until the task is cancelled.
        Err(_) => std::future::pending().await,
    }
}

async fn connection(client: TcpStream, mut shared: Shared) {
    let _ = client.set_nodelay(true);
    let mut fault = *shared.faults.borrow_and_update();
    if fault == Fault::Hang {
        fault = wait_out_hang(&mut shared.faults).await;
    }
    match fault {
        Fault::Reset => return reset(client, &shared.stats),
        Fault::HalfClose { after: 0 } => return half_close(client).await,
        _ => {}
    }
    let Ok(upstream) = TcpStream::connect(shared.target).await else {
        return reset(client, &shared.stats);
    };
    let _ = upstream.set_nodelay(true);
    pump(client, upstream, shared).await;
}

/// Whether a chunk keygate sent starts a new HTTP/1 request.
fn is_request_head(chunk: &[u8]) -> bool {
    chunk.windows(11).any(|w| w == b" HTTP/1.1\r\n")
}

/// Moves chunks both ways, applying the fault current when each chunk arrives.
async fn pump(mut client: TcpStream, mut upstream: TcpStream, mut shared: Shared) {
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    // The targeted fault of this connection's current request, if a rule matched it.
    let mut targeted: Option<Fault> = None;
    // Bytes of the answer forwarded since the last request head (for `HalfClose { after }`).
    let mut answered = 0usize;
    loop {
        // Both reads are cancel-safe: the losing one has consumed nothing.
        let (from_client, n) = tokio::select! {
            r = client.read(&mut up) => (true, r.unwrap_or(0)),
            r = upstream.read(&mut down) => (false, r.unwrap_or(0)),
        };
        if n == 0 {
            // One side closed: pass the close on (FIN) and stop.
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
            return;
        }
        if from_client {
            shared.stats.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
            let rule = shared.rule_for(&up[..n]);
            if rule.is_some() || is_request_head(&up[..n]) {
                targeted = rule;
                answered = 0;
            }
        }
        let mut fault = *shared.faults.borrow_and_update();
        if fault == Fault::Hang && targeted.is_none() {
            fault = wait_out_hang(&mut shared.faults).await;
        }
        let fault = targeted.unwrap_or(fault);
        let (chunk, dst) = if from_client {
            (&up[..n], &mut upstream)
        } else {
            (&down[..n], &mut client)
        };
        let written = match fault {
            Fault::Pass => dst.write_all(chunk).await,
            // A targeted hang: hold this connection until the proxy goes away.
            Fault::Hang => std::future::pending().await,
            Fault::Latency(d) => {
                tokio::time::sleep(d).await;
                dst.write_all(chunk).await
            }
            Fault::SlowBody { bytes, every } if !from_client => {
                trickle(dst, chunk, bytes.max(1), every).await
            }
            Fault::SlowBody { .. } => dst.write_all(chunk).await,
            Fault::Reset => return reset(client, &shared.stats),
            Fault::HalfClose { .. } if from_client => dst.write_all(chunk).await,
            Fault::HalfClose { after } => {
                let keep = after.saturating_sub(answered).min(chunk.len());
                answered += keep;
                let r = dst.write_all(&chunk[..keep]).await;
                if keep < chunk.len() {
                    shared
                        .stats
                        .bytes_down
                        .fetch_add(keep as u64, Ordering::Relaxed);
                    drop(upstream);
                    return half_close(client).await;
                }
                r
            }
        };
        if written.is_err() {
            return reset(client, &shared.stats);
        }
        if !from_client {
            shared
                .stats
                .bytes_down
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}
async fn trickle(
    dst: &mut TcpStream,
    chunk: &[u8],
    bytes: usize,
    every: Duration,
) -> std::io::Result<()> {
    for piece in chunk.chunks(bytes) {
        tokio::time::sleep(every).await;
        dst.write_all(piece).await?;
        dst.flush().await?;
    }
    Ok(())
}
