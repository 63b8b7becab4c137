//! The command line: `serve`, `check-config`, `hash-token`, `mock-upstream`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
pub async fn run_mock(
    listen: std::net::SocketAddr,
    delay_ms: u64,
    keys: Vec<String>,
) -> std::process::ExitCode {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {listen}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let opts = crate::mock::MockOptions {
        delay_ms,
        keys,
        ..Default::default()
    };
    match crate::mock::run(opts, listener, crate::server::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-upstream: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
