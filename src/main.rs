//! keygate's binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use keygate::cli::{admin_client, init_logging, Cli, Command, LogFormat};
use keygate::config::hash_token;

/// With `--features mimalloc`: less CPU per request, more resident memory than glibc malloc
/// (BENCHMARKS.md, "Allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let Cli { command, admin } = Cli::parse();
    match command {
        Command::Serve {
            config,
            log_format,
            mock_upstream,
        } => keygate::cli::run_serve(config, log_format, mock_upstream).await,
        Command::CheckConfig { file } => keygate::cli::check_config(&file),
        Command::HashToken { token } => {
            println!("{}", hash_token(&token));
            ExitCode::SUCCESS
        }
        Command::MockUpstream {
            listen,
            delay_ms,
            keys,
        } => {
            init_logging(LogFormat::Text);
            keygate::cli::run_mock(listen, delay_ms, keys).await
        }
        Command::Keys(keys) => admin_client::run_keys(&admin, keys).await,
        Command::Canary(canary) => admin_client::run_canary(&admin, canary).await,
        Command::Reload => admin_client::run_reload(&admin).await,
    }
}
