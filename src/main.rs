//! keygate's binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use keygate::cli::{init_logging, Cli, Command, LogFormat};
use keygate::config::{hash_token, Config};

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { config, log_format } => {
            init_logging(log_format);
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: invalid config:\n{e}", config.display());
                    return ExitCode::from(2);
                }
            };
            let listen = cfg.server.listen;
            let state = match keygate::gateway::build_state(cfg, Some(config)).await {
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
            keygate::gateway::run(state, listener, keygate::server::shutdown_signal()).await;
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => match Config::load(&file) {
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
        },
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
    }
}
