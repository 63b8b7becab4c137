//! What the secret hygiene test searches, collected: the test thread's logs at every level,
//! every command sent to Redis, and every value stored in it.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Commands;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use crate::harness::RedisServer;

/// A TRACE subscriber for the current thread writing text and JSON lines into a buffer;
/// logging stays captured while this lives.
pub(super) struct LogCapture {
    buf: Captured,
    _guard: tracing::subscriber::DefaultGuard,
    _inert: tracing::Dispatch,
}

impl LogCapture {
    /// tracing-core computes the interest of a callsite first hit on another thread from that
    /// thread's dispatcher while only one dispatcher is registered, and caches "never": events
    /// the gateway logs here would be lost if another test hit their callsite first. A second,
    /// inert dispatcher makes it ask every registered dispatcher instead.
    pub(super) fn start() -> LogCapture {
        let inert = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let buf = Captured::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::TRACE)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(buf.clone())
                    .with_ansi(false),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(buf.clone()),
            );
        LogCapture {
            buf,
            _guard: tracing::subscriber::set_default(subscriber),
            _inert: inert,
        }
    }

    pub(super) fn text(&self) -> String {
        self.buf.text()
    }
}

/// Everything the test thread logs, as bytes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

struct CapturedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = CapturedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CapturedWriter(self.0.clone())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Redis `MONITOR`: every command any client sends, as Redis itself prints it.
pub(super) struct Monitor {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u8>>,
}

impl Monitor {
    pub(super) fn start(port: u16) -> Monitor {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"MONITOR\r\n").unwrap();
        let mut ok = [0u8; 5];
        s.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"+OK\r\n");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                    Err(_) if flag.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            seen
        });
        Monitor { stop, thread }
    }

    pub(super) fn finish(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        String::from_utf8_lossy(&self.thread.join().unwrap()).into_owned()
    }
}

/// Every key in Redis with its value read by type, plus its `DUMP` bytes.
pub(super) fn redis_contents(redis: &RedisServer) -> String {
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    assert!(!keys.is_empty(), "the gateway wrote nothing to Redis");
    let mut out = String::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE").arg(&k).query(&mut c).unwrap();
        let value = match kind.as_str() {
            "string" => format!("{:?}", c.get::<_, Vec<u8>>(&k).unwrap()),
            // Values read as bytes: some are binary (meta's `sel`, budget entries), and their
            // text shows as itself.
            "hash" => {
                let fields: Vec<(String, Vec<u8>)> = c.hgetall(&k).unwrap();
                let fields: Vec<(String, String)> = fields
                    .into_iter()
                    .map(|(f, v)| (f, String::from_utf8_lossy(&v).into_owned()))
                    .collect();
                format!("{fields:?}")
            }
            "zset" => format!(
                "{:?}",
                c.zrange_withscores::<_, Vec<(String, f64)>>(&k, 0, -1)
                    .unwrap()
            ),
            "set" => format!("{:?}", c.smembers::<_, Vec<String>>(&k).unwrap()),
            "list" => format!("{:?}", c.lrange::<_, Vec<String>>(&k, 0, -1).unwrap()),
            other => format!("<{other}>"),
        };
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&k).query(&mut c).unwrap();
        out.push_str(&format!(
            "{k} {kind} {value} {}\n",
            String::from_utf8_lossy(&dump)
        ));
    }
    out
}
