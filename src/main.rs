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
/// snapshot of a large pool, a `/metrics` render) leaves no lasting resident memory behind;
/// 8 KiB objects (hyper's per-connection read and write buffers) come four to a 32 KiB slab
/// instead of one to a slab of their own (`slab_sizes`), so thousands of open streams make a
/// quarter of the extents, whose metadata jemalloc keeps after the load (BENCHMARKS.md,
/// "Memory per open stream").
/// `MALLOC_CONF` cannot change them: this build prefixes jemalloc's symbols, so its
/// environment variable is `_RJEM_MALLOC_CONF`, which is read after this string and wins.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
#[used]
static malloc_conf: &[u8; 82] =
    b"background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0,slab_sizes:8192-8192:8\0";

/// With `--features mimalloc`: less CPU per request, more resident memory (BENCHMARKS.md,
/// "The allocator: jemalloc").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    #[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
    runtime.on_thread_park(idle::on_park);
    match runtime.build() {
        Ok(rt) => rt.block_on(keygate::cli::run(Cli::parse())),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A worker that goes idle hands its jemalloc thread cache back (`thread.idle`: the cache's
/// objects return to the arenas, whose free pages the background thread then returns to the
/// OS). Without it each worker kept what it had cached at the end of a burst for as long as it
/// stayed idle: about 7.5 of the 12.5 MB a replica held above idle a minute after 4,000
/// streams (BENCHMARKS.md, "Memory per open stream"). A worker parks many times a second under
/// load and several times a second idle, so it does this at most once a second: the flushes
/// and the refills after them cost nothing measurable (`bench/reference/ab/ab-thread-idle.md`).
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
mod idle {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    const EVERY: Duration = Duration::from_secs(1);

    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }

    pub fn on_park() {
        if LAST.with(|last| due(last, Instant::now())) {
            thread_idle();
        }
    }

    /// jemalloc's `thread.idle`: flushes the calling thread's cache. Answers 0 when jemalloc
    /// took the call; an error leaves the cache as it was.
    fn thread_idle() -> i32 {
        // SAFETY: `thread.idle` reads and writes nothing (all pointers null, length 0).
        unsafe {
            tikv_jemalloc_sys::mallctl(
                c"thread.idle".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        }
    }

    /// Whether a park at `now` flushes: the thread's first, then one at least [`EVERY`] after
    /// the last flush (which `last` then records).
    fn due(last: &Cell<Option<Instant>>, now: Instant) -> bool {
        let due = last.get().is_none_or(|at| now.duration_since(at) >= EVERY);
        if due {
            last.set(Some(now));
        }
        due
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_worker_flushes_on_its_first_park_then_at_most_once_a_second() {
            let last = Cell::new(None);
            let t0 = Instant::now();
            assert!(due(&last, t0));
            assert!(!due(&last, t0 + Duration::from_millis(1)));
            assert!(!due(&last, t0 + Duration::from_millis(999)));
            assert!(due(&last, t0 + EVERY));
            assert!(!due(&last, t0 + EVERY + Duration::from_millis(500)));
            assert!(due(&last, t0 + Duration::from_secs(60)));
        }

        #[test]
        fn thread_idle_is_a_mallctl_this_jemalloc_knows() {
            // ENOENT would mean the name is unknown, and the hook would silently do nothing.
            assert_eq!(thread_idle(), 0);
        }
    }
}
