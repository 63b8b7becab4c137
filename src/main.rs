//! keygate's binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use keygate::cli::{admin_client, init_logging, Cli, Command, LogFormat};
use keygate::config::hash_token;

/// jemalloc, the default allocator: at 10,000 keys, 10-13% less CPU per request than glibc
/// malloc and resident memory that stays flat under load; at 4 keys the two are within noise
/// (BENCHMARKS.md, "The allocator: jemalloc").
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts (before `main`): a background thread returns
/// freed pages to the OS about 100 ms after they fall free (`dirty_decay_ms`), so a burst (a
/// snapshot of a large pool, a `/metrics` render) leaves no lasting resident memory behind.
/// `MALLOC_CONF` cannot change them: this build prefixes jemalloc's symbols, so its
/// environment variable is `_RJEM_MALLOC_CONF`, which is read after this string and wins.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
#[used]
static malloc_conf: &[u8; 59] = b"background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0\0";

/// With `--features mimalloc`: less CPU per request, more resident memory (BENCHMARKS.md,
/// "Allocator").
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
        Command::Rotate(rotate) => admin_client::run_rotate(&admin, rotate).await,
    }
}
