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
