//! The command line: `serve`, `check-config`, `hash-token`, `mock-upstream`, and the operator
//! commands `keys`, `canary` and `reload`, which talk to a running replica's admin API
//! (`admin_client`, tables in `table`).

pub mod admin_client;
pub mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "keygate",
    version,
    about = "Share a pool of upstream LLM API keys across gateway replicas"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub admin: AdminTarget,
}

/// Where the operator commands send their requests, and where their token comes from.
#[derive(Args, Debug, Clone)]
pub struct AdminTarget {
    /// Base URL of a keygate replica (operator commands).
    #[arg(
        long,
        global = true,
        env = "KEYGATE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// The environment variable holding the admin token. The token itself is never an
    /// argument, so it does not show in `ps`.
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        default_value = crate::config::DEFAULT_ADMIN_TOKEN_ENV
    )]
    pub token_env: String,
}

#[derive(Clone, Copy, Debug, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Also run the bundled mock provider on this address (demos: no provider key needed).
        #[arg(long, value_name = "ADDR")]
        mock_upstream: Option<std::net::SocketAddr>,
    },
    /// Validate a config file and print every problem with its path.
    CheckConfig { file: PathBuf },
    /// Print the SHA-256 of a client token, for `[[clients]] token_sha256`.
    HashToken { token: String },
    /// Run the OpenAI-compatible mock provider (demos, tests, benchmarks).
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        /// Delay before every answer, in ms.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Scripted keys: SECRET=ok|429|429:5|401|quota|500|delay:200|remaining0:1s
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// Inspect and change the keys of a running gateway (admin API).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Change a pool's canary share on a running gateway (admin API).
    #[command(subcommand)]
    Canary(CanaryCommand),
    /// Make a running gateway re-read its config file (admin API).
    Reload,
    /// Rotate keys: ramp new keys to 100% step by step, roll back by itself when they do worse
    /// than the stable keys, then retire the old keys (admin API; README, "Rotating keys").
    #[command(subcommand)]
    Rotate(RotateCommand),
}

#[derive(Subcommand, Debug, Clone)]
pub enum RotateCommand {
    /// Start a rotation plan (fields not given come from the pool's `[pools.rotation]`).
    Start {
        pool: String,
        /// The new key ids, comma-separated (in the pool's canary group).
        #[arg(long = "new", value_delimiter = ',', required = true)]
        new_keys: Vec<String>,
        /// The old key ids to retire at 100%, comma-separated.
        #[arg(long = "old", value_delimiter = ',')]
        old_keys: Vec<String>,
        /// Canary percents, comma-separated, ending at 100 (e.g. 5,25,50,100).
        #[arg(long, value_delimiter = ',')]
        steps: Option<Vec<u8>>,
        /// Canary requests a step needs before it may advance.
        #[arg(long)]
        min_requests: Option<u64>,
        /// Seconds each step lasts at least.
        #[arg(long)]
        min_dwell_s: Option<u64>,
        /// Print the plan and the guards' evaluation without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the plan, its step, the guards' figures, the driving replica and the history.
    Status { pool: String },
    /// Stop advancing (the canary percent stays).
    Pause {
        pool: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Continue a paused plan (the step's dwell time starts again).
    Resume { pool: String },
    /// Stop the plan: canary percent 0, new keys drained.
    Abort {
        pool: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum KeysCommand {
    /// Print every key with its state, weight, group, errors and cooldown.
    List {
        /// Only this pool (default: every pool).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Put a key back into service (clears its errors and deadlines).
    Enable { pool: String, key: String },
    /// Take a key out of service until enabled again.
    Disable { pool: String, key: String },
    /// Stop selecting a key; requests already using it finish.
    Drain { pool: String, key: String },
    /// Reset a key's counters (errors, strikes, successes, failures).
    Reset { pool: String, key: String },
    /// Set a key's share of selections, 0..=1000 (0: on standby).
    Weight {
        pool: String,
        key: String,
        weight: u32,
    },
    /// Move a key to `stable` or to the pool's canary group.
    Group {
        pool: String,
        key: String,
        group: String,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum CanaryCommand {
    /// Send PERCENT (0..=100) of a pool's unforced traffic to its canary group.
    Set { pool: String, percent: u8 },
}

/// Installs the tracing subscriber (`RUST_LOG` filters; default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => builder.init(),
    }
}

/// `keygate mock-upstream`: serves until SIGTERM/ctrl-c.
pub async fn run_mock(listen: std::net::SocketAddr, delay_ms: u64, keys: Vec<String>) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = crate::mock::MockOptions {
        delay_ms,
        keys,
        ..Default::default()
    };
    match crate::mock::run(opts, listener, crate::server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-upstream: {e}");
            ExitCode::from(2)
        }
    }
}

/// `keygate serve`: load the config, build the state, serve until SIGTERM/ctrl-c.
pub async fn run_serve(
    config: PathBuf,
    log_format: LogFormat,
    mock_upstream: Option<std::net::SocketAddr>,
) -> ExitCode {
    init_logging(log_format);
    if let Some(addr) = mock_upstream {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "bundled mock provider serving /v1");
                let opts = crate::mock::MockOptions::default();
                tokio::spawn(crate::mock::run(opts, l, crate::server::shutdown_signal()));
            }
            Err(e) => {
                eprintln!("keygate: cannot listen on {addr} for the mock provider: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let cfg = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: invalid config:\n{e}", config.display());
            return ExitCode::from(2);
        }
    };
    let listen = cfg.server.listen;
    let state = match crate::gateway::build_state(cfg, Some(config)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keygate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("keygate: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(%listen, "keygate serving");
    let ignored = crate::app::ignored_proxy_env(|v| std::env::var(v).ok());
    if !ignored.is_empty() {
        tracing::warn!(variables = ?ignored, "upstream requests go direct: keygate does not use proxy environment variables");
    }
    crate::gateway::run(state, listener, crate::server::shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// `keygate check-config FILE`.
pub fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(c) => {
            println!(
                "{}: ok ({} pools, {} clients)",
                file.display(),
                c.pools.len(),
                c.clients.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
