//! A real `redis-server` on a free loopback port in a temp dir, killed on drop
//! (the pattern of redis-rs's `redis-test`). No test ever uses the machine's shared Redis.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

pub fn redis_server_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("redis-server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the tests need the `redis-server` binary on PATH (Debian: apt-get install \
             redis-server); .ci/run installs it"
        )
    })
}

/// Makes the process `cmd` starts die with the thread that starts it (Linux
/// `PR_SET_PDEATHSIG`): a test binary killed with SIGKILL runs no destructor, and its servers
/// would otherwise live on. Every test starts and drops its processes on its own thread (or its
/// runtime's), which outlives them.
pub fn dies_with_test(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only calls prctl and getppid, both
    // async-signal-safe, and allocates nothing.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect: nothing would ever signal us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        })
    }
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments (e.g. `--replicaof`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        // Another test may grab the same free port between `free_port()` and redis binding it;
        // then our child exits and a PING would reach the other test's server. So the server
        // that answers must report our child's pid; otherwise retry on a new port.
        for _ in 0..5 {
            let child = dies_with_test(&mut Command::new(redis_server_binary()))
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .args(&self.extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            let pid = child.id();
            self.child = Some(child);
            if self.wait_ready_pid(pid) {
                return;
            }
            self.kill();
            self.port = free_port();
        }
        panic!("redis-server could not start on a free port");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis client")
    }

    /// A blocking connection for assertions and set-up.
    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().expect("redis connection")
    }

    /// Waits until the server on our port answers and is our child (by pid).
    fn wait_ready_pid(&mut self, pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if !matches!(c.try_wait(), Ok(None)) {
                    return false; // exited: the port was taken
                }
            }
            let info = self
                .client()
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c));
            if let Ok(info) = info {
                return info.contains(&format!("process_id:{pid}\r\n"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// SIGSTOP: a hung Redis that keeps its connections open.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill, then start again empty on the same port.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Start again after `kill` (empty: no persistence).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    /// Whether the process runs (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `FLUSHALL`: every key gone, scripts kept.
    pub fn flushall(&self) {
        let _: () = redis::cmd("FLUSHALL")
            .query(&mut self.conn())
            .expect("FLUSHALL");
    }

    /// Logs every command from now on (a SLOWLOG threshold of 0, up to 100,000 entries).
    pub fn log_all_commands(&self) {
        let mut c = self.conn();
        for (name, value) in [("slowlog-log-slower-than", 0), ("slowlog-max-len", 100_000)] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(value)
                .query(&mut c)
                .expect("CONFIG SET");
        }
        let _: () = redis::cmd("SLOWLOG")
            .arg("RESET")
            .query(&mut c)
            .expect("SLOWLOG RESET");
    }

    /// The commands logged since [`RedisServer::log_all_commands`], each as its arguments
    /// (SLOWLOG keeps the first 32 and says how many more there were).
    pub fn logged_commands(&self) -> Vec<Vec<String>> {
        let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(-1)
            .query(&mut self.conn())
            .expect("SLOWLOG GET");
        log.iter()
            .filter_map(|entry| {
                let redis::Value::Array(fields) = entry else {
                    return None;
                };
                let Some(redis::Value::Array(args)) = fields.get(3) else {
                    return None;
                };
                Some(
                    args.iter()
                        .filter_map(|a| redis::from_redis_value::<String>(a.clone()).ok())
                        .collect(),
                )
            })
            .collect()
    }

    /// How many calls of `lua/<file>` were logged: `FCALL`s of its function, or `EVALSHA`s of
    /// it on a Redis without Functions (see [`script_sha`]).
    pub fn logged_script_calls(&self, file: &str) -> usize {
        let (function, sha) = (script_function(file), script_sha(file));
        self.logged_commands()
            .iter()
            .filter(|c| {
                let cmd = c.first().map(|c| c.to_ascii_lowercase());
                match cmd.as_deref() {
                    Some("fcall") => c.get(1) == Some(&function),
                    Some("evalsha") => c.get(1) == Some(&sha),
                    _ => false,
                }
            })
            .count()
    }

    /// How many `EVALSHA`s (of any script) were logged.
    pub fn logged_evalshas(&self) -> usize {
        self.logged_commands()
            .iter()
            .filter(|c| c.first().is_some_and(|c| c.eq_ignore_ascii_case("evalsha")))
            .count()
    }

    /// `FUNCTION FLUSH`: every function library gone, keys kept.
    pub fn function_flush(&self) {
        let _: () = redis::cmd("FUNCTION")
            .arg("FLUSH")
            .query(&mut self.conn())
            .expect("FUNCTION FLUSH");
    }

    /// `SCRIPT FLUSH`: every cached script gone, keys kept.
    pub fn script_flush(&self) {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut self.conn())
            .expect("SCRIPT FLUSH");
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid} failed");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            signal_quiet(c.id(), "-CONT");
        }
        self.kill();
    }
}

/// `kill SIG PID`, for cleanup: a process already gone is not an error.
pub fn signal_quiet(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// The SHA1 Redis knows `lua/<file>` by for `EVALSHA`, as `src/store/scripts.rs` builds it.
pub fn script_sha(file: &str) -> String {
    keygate::store::sha_of(file).expect("a script of lua/")
}

/// The function `FCALL` runs `lua/<file>` by.
pub fn script_function(file: &str) -> String {
    keygate::store::function_of(file).expect("a script of lua/")
}
