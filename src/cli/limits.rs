//! Process limits `keygate serve` sets for itself at start.
//!
//! Each client connection and each upstream request in flight holds a file descriptor. Many
//! systems start processes with a soft open-file limit of 1024 and a much higher hard limit, so
//! `serve` raises its soft limit to the hard one (capped at 1,048,576, what Linux accepts by
//! default), as Go programs and many servers do. The hard limit itself is the operator's
//! (deploy/README.md, "Open files").

/// The highest soft limit asked for (Linux refuses more than `fs.nr_open`, 1,048,576 by default).
const MOST_OPEN_FILES: libc::rlim_t = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Returns `(before, after)` when it changed
/// it, `None` when it was already there or the system refused (the limit then stays as it was).
pub fn raise_open_file_limit() -> Option<(libc::rlim_t, libc::rlim_t)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let wanted = limit.rlim_max.min(MOST_OPEN_FILES);
    if limit.rlim_cur >= wanted {
        return None;
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return None;
    }
    Some((limit.rlim_cur, wanted))
}
