//! The command line's shape (clap derive): every subcommand, its arguments and their help.
//!
//! `--url` and `--token-env` belong to the operator commands (`keys`, `canary`, `reload`) only,
//! so they show in those commands' help and nowhere else.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[cfg(feature = "mock")]
use crate::mock::MockOptions;

#[derive(Parser, Debug)]
#[command(
    name = "keygate",
    version,
    about = "Share a pool of upstream LLM API keys across gateway replicas"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the operator commands send their requests, and where their token comes from.
#[derive(Args, Debug, Clone)]
pub struct AdminTarget {
    /// A keygate replica's URL: its base (`http://host:8080`) or the one applications use
    /// (`http://host:8080/v1`; the trailing `/v1` is ignored).
    #[arg(
        long,
        global = true,
        env = "KEYGATE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// The environment variable holding the admin token (the replica's own, set on
    /// `keygate serve`). The token itself is never an argument, so it does not show in `ps`.
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
        /// The config file (TOML; README.md, "Configuration reference").
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Log lines as text (colours only on a terminal) or as one JSON object each.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Also run the bundled mock provider on this address (demos: no provider key needed).
        #[arg(long, value_name = "ADDR")]
        mock_upstream: Option<SocketAddr>,
    },
    /// Validate a config file and print every problem with its path.
    CheckConfig {
        /// The config file to check (the variables it names are read from the environment).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the SHA-256 of a client token, for `[[clients]] token_sha256`.
    HashToken {
        /// The client token. Omitted (or `-`): read from standard input, which keeps it out of
        /// the shell history and `ps`, e.g. `printf %s "$TOKEN" | keygate hash-token`.
        #[arg(value_name = "TOKEN")]
        token: Option<String>,
    },
    /// Run the OpenAI-compatible mock provider (demos, tests, benchmarks).
    #[cfg(feature = "mock")]
    MockUpstream {
        /// The address to serve on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        #[command(flatten)]
        options: MockOptions,
    },
    /// Inspect and change the keys of a running gateway (admin API).
    Keys(KeysArgs),
    /// Change a pool's canary share on a running gateway (admin API).
    Canary(CanaryArgs),
    /// Make a running gateway re-read its config file (admin API).
    Reload(ReloadArgs),
    /// Rotate keys: ramp new keys to 100% step by step, roll back by itself when they do worse
    /// than the stable keys, then retire the old keys (admin API; README, "Rotating keys").
    Rotate(RotateArgs),
    /// Print a shell completion script, e.g. `keygate completions bash > /etc/bash_completion.d/keygate`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug, Clone)]
pub struct KeysArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Args, Debug, Clone)]
pub struct CanaryArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    #[command(subcommand)]
    pub command: CanaryCommand,
}

#[derive(Args, Debug, Clone)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub target: AdminTarget,
}

#[derive(Args, Debug, Clone)]
pub struct RotateArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    #[command(subcommand)]
    pub command: RotateCommand,
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
        /// Percentage points the canary's error ratio may exceed stable's by.
        #[arg(long)]
        max_error_increase_pct: Option<u32>,
        /// The canary's p99 latency may be this percent of stable's (plus the slack).
        #[arg(long)]
        max_p99_ratio_pct: Option<u32>,
        /// Milliseconds added to the allowed p99.
        #[arg(long)]
        p99_slack_ms: Option<u64>,
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
