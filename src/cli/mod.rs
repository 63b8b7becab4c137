//! The command line: `serve`, `check-config`, `hash-token`, `mock-upstream`, `completions`, and
//! the operator commands `keys`, `canary` and `reload`, which talk to a running replica's admin
//! API (`admin_client`, tables in `table`). `args` holds the clap definitions, `logging` the
//! log set-up.

pub mod admin_client;
mod args;
mod limits;
mod logging;
pub mod table;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::config::Config;

pub use args::{
    AdminTarget, CanaryArgs, CanaryCommand, Cli, Command, KeysArgs, KeysCommand, LogFormat,
    ReloadArgs, RotateArgs, RotateCommand,
};
pub use logging::init_logging;

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve {
            config,
            log_format,
            mock_upstream,
        } => run_serve(config, log_format, mock_upstream).await,
        Command::CheckConfig { file } => check_config(&file),
        Command::HashToken { token } => hash_token(token),
        #[cfg(feature = "mock")]
        Command::MockUpstream { listen, options } => {
            init_logging(LogFormat::Text);
            run_mock(listen, options).await
        }
        Command::Keys(KeysArgs { target, command }) => {
            admin_client::run_keys(&target, command).await
        }
        Command::Canary(CanaryArgs { target, command }) => {
            admin_client::run_canary(&target, command).await
        }
        Command::Reload(ReloadArgs { target }) => admin_client::run_reload(&target).await,
        Command::Rotate(RotateArgs { target, command }) => {
            admin_client::run_rotate(&target, command).await
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "keygate", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

/// `keygate hash-token [TOKEN]`: the token from the argument, else the first line of stdin.
fn hash_token(token: Option<String>) -> ExitCode {
    let token = match token.filter(|t| t != "-") {
        Some(token) => token,
        None => match read_token_from_stdin() {
            Ok(token) => token,
            Err(message) => {
                eprintln!("keygate hash-token: {message}");
                return ExitCode::from(2);
            }
        },
    };
    println!("{}", crate::config::hash_token(&token));
    ExitCode::SUCCESS
}

/// One line of standard input without its line ending; a prompt on stderr when it is a terminal.
fn read_token_from_stdin() -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("client token (input is shown), then Enter: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the token from standard input: {e}"))?;
    let token = line.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        return Err("no token: give it as an argument or on standard input".into());
    }
    Ok(token.to_string())
}

/// `keygate mock-upstream`: serves until SIGTERM/ctrl-c.
#[cfg(feature = "mock")]
pub async fn run_mock(listen: std::net::SocketAddr, opts: crate::mock::MockOptions) -> ExitCode {
    let listener = match crate::server::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
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
    if let Some((before, after)) = limits::raise_open_file_limit() {
        tracing::info!(
            before,
            after,
            "open-file soft limit raised to the hard limit"
        );
    }
    #[cfg(not(feature = "mock"))]
    if mock_upstream.is_some() {
        eprintln!(
            "keygate: --mock-upstream: this build has no mock provider (cargo feature `mock`)"
        );
        return ExitCode::from(2);
    }
    #[cfg(feature = "mock")]
    if let Some(addr) = mock_upstream {
        match crate::server::bind(addr) {
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
    for warning in crate::config::warnings(&cfg) {
        tracing::warn!("config: {warning}");
    }
    if let Some(addr) = mock_upstream {
        crate::gateway::warn_if_mock_serves_no_pool(&cfg, addr);
    }
    let listen = cfg.server.listen;
    let state = match crate::gateway::build_state(cfg, Some(config)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keygate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match crate::server::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("keygate: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(%listen, "keygate serving");
    let ignored = crate::state::ignored_proxy_env(|v| std::env::var(v).ok());
    if !ignored.is_empty() {
        tracing::warn!(variables = %ignored.join(","), "upstream requests go direct: keygate does not use proxy environment variables");
    }
    crate::gateway::run(state, listener, crate::server::shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// `keygate check-config FILE`.
pub fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(c) => {
            for warning in crate::config::warnings(&c) {
                eprintln!("warning: {warning}");
            }
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
