//! Child processes for the process-level tests: `keygate serve` and `keygate mock-upstream` (the
//! binary cargo built for this test run) and nginx from a rendered
//! `deploy/nginx.local.conf.template`. Each runs in its own temp dir with its output in a log
//! file there, is ready only once it answers HTTP (polled, never slept on), and is killed when
//! dropped, also when the test panics (the log tail is printed then).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{dies_with_test, free_port};

/// How long a process gets to answer its readiness URL.
const READY_LIMIT: Duration = Duration::from_secs(15);
/// Tries with a fresh port when the one picked was taken between `free_port` and the bind.
const BIND_TRIES: usize = 3;

/// A program on `PATH` (or in the usual system dirs), or a panic that names it and how to get it.
pub fn find_binary(name: &str, install_hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    dirs.map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("this test needs `{name}`, which is not installed: {install_hint}")
        })
}

/// The `keygate` binary cargo built for this test run.
pub fn keygate_binary() -> &'static str {
    env!("CARGO_BIN_EXE_keygate")
}

/// How long a process asked to stop with a signal gets before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// One child process with its temp dir and log; stopped on drop.
pub struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
    dir: tempfile::TempDir,
    /// Sent first on drop (SIGKILL follows if it is ignored); `None` kills at once. nginx needs
    /// one: a killed master leaves its workers serving.
    stop_signal: Option<&'static str>,
}

impl ChildProcess {
    /// Starts `cmd` with stdout and stderr going to `<dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, dir: tempfile::TempDir) -> ChildProcess {
        let log = dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = dies_with_test(&mut cmd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        ChildProcess {
            name: name.to_string(),
            child,
            log,
            dir,
            stop_signal: None,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Some` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Polls `url` until it answers 2xx. `Err(log)` when the process exits first; a panic
    /// (with the log) when it neither answers nor exits within [`READY_LIMIT`].
    pub async fn wait_ready(&mut self, url: &str) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .expect("client");
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited ({status}) before {url} answered:\n{}",
                    self.name,
                    self.log()
                ));
            }
            let ok = client.get(url).send().await;
            if ok.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer {url} within {READY_LIMIT:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Some(signal) = self.stop_signal {
            let _ = Command::new("kill")
                .args([signal, &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + STOP_LIMIT;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            self.print_log_tails();
        }
    }
}

impl ChildProcess {
    /// The end of every `*.log` in the process's dir (its output; nginx's error and access logs).
    fn print_log_tails(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_none_or(|x| x != "log") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- last lines of {} ({}):", self.name, path.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Starts a process listening on a fresh free port; retries with another port when the process
/// exits before answering (someone else took the port between the pick and the bind).
async fn start_on_free_port(
    name: &str,
    ready_path: &str,
    stop_signal: Option<&'static str>,
    mut command_for: impl FnMut(SocketAddr, &Path) -> Command,
) -> (SocketAddr, ChildProcess) {
    let mut last_error = String::new();
    for _ in 0..BIND_TRIES {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let dir = tempfile::tempdir().expect("temp dir");
        let cmd = command_for(addr, dir.path());
        let mut proc = ChildProcess::spawn(name, cmd, dir);
        proc.stop_signal = stop_signal;
        match proc.wait_ready(&format!("http://{addr}{ready_path}")).await {
            Ok(()) => return (addr, proc),
            Err(log) => last_error = log,
        }
    }
    panic!("{name} did not start in {BIND_TRIES} tries; last: {last_error}");
}

/// `keygate serve` with a config file of its own, on a free port.
pub struct KeygateProcess {
    pub addr: SocketAddr,
    pub proc: ChildProcess,
}

impl KeygateProcess {
    /// Writes `config` to a temp dir and serves it. The listen address comes from
    /// `KEYGATE_SERVER__LISTEN` (whatever `config` says), secrets from `env`.
    pub async fn start(config: &str, env: &[(&str, &str)]) -> KeygateProcess {
        KeygateProcess::start_with_args(config, env, &[]).await
    }

    /// [`KeygateProcess::start`] with more `serve` arguments (e.g. `--mock-upstream ADDR`).
    pub async fn start_with_args(
        config: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> KeygateProcess {
        let (addr, proc) = start_on_free_port("keygate", "/healthz", None, |addr, dir| {
            let file = dir.join("keygate.toml");
            std::fs::write(&file, config).expect("write config");
            let mut cmd = Command::new(keygate_binary());
            cmd.arg("serve")
                .arg("--config")
                .arg(&file)
                .args(args)
                .env("KEYGATE_SERVER__LISTEN", addr.to_string())
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .envs(env.iter().copied());
            cmd
        })
        .await;
        KeygateProcess { addr, proc }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// `keygate mock-upstream` on a free port.
pub struct MockProcess {
    pub addr: SocketAddr,
    #[allow(dead_code)] // held for its Drop: the process stops with the handle
    pub proc: ChildProcess,
}

/// `GET /_mock/stats`.
#[derive(Debug, serde::Deserialize)]
pub struct MockStats {
    /// Requests per (mock) secret.
    pub keys: HashMap<String, u64>,
}

impl MockStats {
    pub fn requests(&self, secret: &str) -> u64 {
        self.keys.get(secret).copied().unwrap_or(0)
    }
}

impl MockProcess {
    /// `keys` are `--key` flags: `SECRET=B1,...,Bn`.
    pub async fn start(keys: &[&str]) -> MockProcess {
        let (addr, proc) = start_on_free_port("mock-upstream", "/_mock/stats", None, |addr, _| {
            let mut cmd = Command::new(keygate_binary());
            cmd.env("NO_COLOR", "1")
                .arg("mock-upstream")
                .arg("--listen")
                .arg(addr.to_string());
            for k in keys {
                cmd.arg("--key").arg(k);
            }
            cmd
        })
        .await;
        MockProcess { addr, proc }
    }

    /// `http://ADDR/v1`, a pool's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub async fn stats(&self, client: &reqwest::Client) -> MockStats {
        client
            .get(format!("http://{}/_mock/stats", self.addr))
            .send()
            .await
            .expect("mock stats request")
            .json()
            .await
            .expect("mock stats body")
    }
}

/// nginx in front of `upstreams`, configured by `deploy/nginx.local.conf.template`.
pub struct NginxProcess {
    pub addr: SocketAddr,
    pub proc: ChildProcess,
}

/// The deploy template with its placeholders filled in.
pub fn render_nginx_template(
    prefix: &Path,
    listen: SocketAddr,
    upstreams: &[SocketAddr],
) -> String {
    let template_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.local.conf.template");
    let template = std::fs::read_to_string(&template_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", template_path.display()));
    for placeholder in ["__PREFIX__", "__LISTEN__", "__UPSTREAMS__"] {
        assert!(
            template.contains(placeholder),
            "{} lost its {placeholder} placeholder",
            template_path.display()
        );
    }
    let servers: Vec<String> = upstreams.iter().map(|a| format!("server {a};")).collect();
    template
        .replace("__PREFIX__", &prefix.display().to_string())
        .replace("__LISTEN__", &listen.to_string())
        .replace("__UPSTREAMS__", &servers.join("\n        "))
}

impl NginxProcess {
    /// Ready once `/healthz` answers through it (so at least one upstream is reachable).
    pub async fn start(upstreams: &[SocketAddr]) -> NginxProcess {
        let nginx = find_binary("nginx", "apt-get install nginx-light (.ci/run installs it)");
        // SIGTERM: a fast shutdown that takes the workers along.
        let (addr, proc) = start_on_free_port("nginx", "/healthz", Some("-TERM"), |addr, dir| {
            // When run as root, nginx's workers run as `nobody`: let them into the prefix.
            set_mode(dir, 0o755);
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, render_nginx_template(dir, addr, upstreams))
                .expect("write nginx.conf");
            let mut cmd = Command::new(&nginx);
            cmd.arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("error.log"));
            cmd
        })
        .await;
        NginxProcess { addr, proc }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// nginx's own error log (the process log holds only what it printed before reading it).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.proc.dir().join("error.log")).unwrap_or_default()
    }
}

fn set_mode(dir: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).expect("chmod temp dir");
}
