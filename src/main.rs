//! keygate's binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use keygate::cli::Cli;

/// jemalloc, the default allocator: with large pools, less CPU per request than glibc malloc and
/// resident memory that stays flat under load; with small ones the two are within noise
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
/// "The allocator: jemalloc").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    keygate::cli::run(Cli::parse()).await
}
