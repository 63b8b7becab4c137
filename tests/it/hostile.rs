//! Hostile input: malformed bodies, slow and oversized requests, request
//! smuggling shapes, header injection, path tricks, bad tokens, and every way of steering a
//! pool key to another host. Each case gets a clear 4xx (or a closed connection for protocol
//! abuse), causes no panic, changes no key state, and the gateway keeps serving.
//!
//! The gateway and the mocks run on their own runtime whose threads carry a name unique to the
//! test, so a panic hook can count the gateway's panics without seeing the test's own asserts
//! or other tests. A second mock plays the "evil" host: it must never receive a request.

mod admin;
mod blame;
mod bodies;
mod budgets;
mod connections;
mod model_allowlist;
mod raw;
mod smuggling;
mod steering;
mod surfaces;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use keygate::config::Config;
use keygate::mock::MockUpstream;
use keygate::store::KeyRecord;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::gateway::{
    chat, config_toml, http, key, post_chat, TestGateway, TestKey, CLIENT_TOKEN,
};
use crate::harness::{wait_until, RedisServer};
use raw::{chat_body, raw, raw_all, raw_post, read_reply, WAIT};

const KEYS: [TestKey; 2] = [
    key("h1", "sk-hostile-one-1111"),
    key("h2", "sk-hostile-two-2222"),
];

/// The admin API is on in every hostile test: its token check is part of the surface.
const ADMIN_TOKEN: &str = "hostile-admin-token-7c1e5a9b3d2f4e60";

/// Short protocol timeouts so slow clients are cut quickly.
const HEADER_READ_TIMEOUT_MS: u64 = 500;
const BODY_READ_TIMEOUT_MS: u64 = 500;
const MAX_HEADER_BYTES: usize = 8192;
const MAX_BODY_BYTES: usize = 65536;

// ---------------------------------------------------------------------------------------------
// Panics on the gateway's own threads.

static PANIC_HOOK: Once = Once::new();
static PANICS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
static NEXT_RUNTIME: AtomicU64 = AtomicU64::new(0);

/// Counts panics per thread name (then lets the previous hook print them as usual).
fn install_panic_counter() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(name) = std::thread::current().name() {
                if name.starts_with("kg-isolated-") {
                    let mut p = PANICS.lock().unwrap_or_else(|e| e.into_inner());
                    *p.get_or_insert_with(HashMap::new)
                        .entry(name.to_string())
                        .or_default() += 1;
                }
            }
            previous(info);
        }));
    });
}

fn panics_on(thread_name: &str) -> u64 {
    let p = PANICS.lock().unwrap_or_else(|e| e.into_inner());
    p.as_ref()
        .and_then(|m| m.get(thread_name).copied())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The gateway under attack.

pub(crate) struct Isolated {
    /// Kept alive for the gateway's store.
    _redis: RedisServer,
    pub mock: Option<MockUpstream>,
    pub evil: Option<MockUpstream>,
    pub gw: Option<TestGateway>,
    rt: Option<tokio::runtime::Runtime>,
    thread_name: String,
}

impl Isolated {
    /// A gateway (Redis store, the real mock as its only upstream) plus an unrelated "evil"
    /// mock, all on a runtime of their own. `tweak` edits the config text.
    pub async fn start(tweak: impl FnOnce(String) -> String + Send + 'static) -> Isolated {
        install_panic_counter();
        let thread_name = format!(
            "kg-isolated-{}",
            NEXT_RUNTIME.fetch_add(1, Ordering::Relaxed)
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(&thread_name)
            .enable_all()
            .build()
            .unwrap();
        let redis = RedisServer::start();
        let redis_url = redis.url();
        let (mock, evil, gw) = rt
            .spawn(async move {
                let mock = MockUpstream::start().await;
                let evil = MockUpstream::start().await;
                let toml = tweak(config_toml(Some(&redis_url), &mock.base_url(), &KEYS, ""));
                let env = |name: &str| (name == "KEYGATE_ADMIN_TOKEN").then(|| ADMIN_TOKEN.into());
                let config = Config::from_toml_str(&toml, &env, Path::new(".")).unwrap();
                let gw = TestGateway::start_config(config).await;
                (mock, evil, gw)
            })
            .await
            .unwrap();
        Isolated {
            _redis: redis,
            mock: Some(mock),
            evil: Some(evil),
            gw: Some(gw),
            rt: Some(rt),
            thread_name,
        }
    }

    pub fn gw(&self) -> &TestGateway {
        self.gw.as_ref().unwrap()
    }

    pub fn mock(&self) -> &MockUpstream {
        self.mock.as_ref().unwrap()
    }

    pub fn evil(&self) -> &MockUpstream {
        self.evil.as_ref().unwrap()
    }

    pub fn addr(&self) -> SocketAddr {
        self.gw().addr
    }

    pub fn panics(&self) -> u64 {
        panics_on(&self.thread_name)
    }

    pub async fn keys(&self) -> Vec<KeyRecord> {
        self.gw()
            .state
            .store
            .snapshot("p", None)
            .await
            .unwrap()
            .keys
    }

    /// No panic, the evil host untouched, the gateway still serving on the configured upstream.
    pub async fn assert_still_serving(&self) {
        assert_eq!(self.panics(), 0, "the gateway panicked");
        assert_eq!(
            self.evil().total_requests(),
            0,
            "a request reached the evil host"
        );
        let r = post_chat(&http(), self.gw(), &chat("m", false), &[]).await;
        assert_eq!(r.status(), 200, "the gateway stopped serving");
        assert_eq!(
            self.mock().last_request_host().as_deref(),
            Some(self.mock().addr.to_string().as_str())
        );
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        drop(self.gw.take());
        drop(self.mock.take());
        drop(self.evil.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The config with short protocol limits.
fn strict_limits(toml: String) -> String {
    toml.replace(
        "shutdown_grace_s = 5\n",
        &format!(
            "shutdown_grace_s = 5\nheader_read_timeout_ms = {HEADER_READ_TIMEOUT_MS}\n\
             body_read_timeout_ms = {BODY_READ_TIMEOUT_MS}\nmax_header_bytes = {MAX_HEADER_BYTES}\n"
        ),
    )
}

/// The parts of each key's record that refused traffic must not change: everything but the
/// success counters and timestamps (which legitimate requests in a test move).
fn states(keys: &[KeyRecord]) -> Vec<String> {
    keys.iter()
        .map(|r| {
            format!(
                "{} {} {} w{} {} e{} s{} c{} f{}",
                r.id,
                r.status.as_str(),
                r.reason,
                r.weight,
                r.group,
                r.errors,
                r.strikes,
                r.cooldown_until_ms,
                r.failures
            )
        })
        .collect()
}

/// The text of a `/metrics` page.
async fn scrape(c: &reqwest::Client, url: &str) -> String {
    let r = c.get(url).send().await.expect("metrics request");
    r.text().await.expect("metrics text")
}
