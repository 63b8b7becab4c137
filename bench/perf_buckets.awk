# bench/perf_buckets.awk: sums `perf report --no-children -g none --sort dso,sym` self-time
# percentages by where the code comes from (a Rust crate, libc, or a part of the kernel).
# Input lines look like: "  3.14%  keygate  [.] <redis::aio::Foo as Bar>::poll".
/^ *[0-9.]+%/ {
    pct = $1; sub(/%/, "", pct)
    dso = $2
    sym = $0; sub(/^ *[0-9.]+% +[^ ]+ +\[[.k]\] +/, "", sym)
    if ($3 == "[k]") {
        if (sym ~ /tcp|^ip_|sock|skb|net_|napi|dev_|loopback|inet|__sys_(send|recv)|sendmsg|recvmsg/) b = "kernel: TCP/loopback"
        else if (sym ~ /sched|switch|futex|epoll|wake|idle|hrtimer|tick/) b = "kernel: scheduling, futex, epoll"
        else if (sym ~ /unlock_irq/) b = "kernel: IRQs-off time (shown at spin_unlock_irq*; mostly wakeups)"
        else if (sym ~ /syscall|entry_|exit_to_user|do_syscall|syscall_exit/) b = "kernel: syscall entry/exit"
        else b = "kernel: other"
    } else if (dso ~ /libc/) {
        if (sym ~ /malloc|free|realloc|calloc|_int_|tcache|arena|consolidate/) b = "libc malloc/free"
        else if (sym ~ /mem(cpy|move|set|cmp)|str/) b = "libc memcpy/memmove/str*"
        else b = "libc other (syscall wrappers, locks)"
    } else if (sym ~ /^_rjem_|^tcache_|^arena_|^extent_|^edata_|^je_|^malloc_|^sdallocx/) {
        b = "jemalloc (the binary's allocator)"
    } else {
        s = sym
        gsub(/^[<&(]+|^mut |^dyn /, "", s)
        gsub(/^[<&(]+|^mut |^dyn /, "", s)
        if (s ~ /^[A-Za-z0-9_]+ as /) sub(/^[A-Za-z0-9_]+ as /, "", s)
        n = split(s, parts, "::")
        b = (n > 1) ? parts[1] : dso ": " s
        if (b ~ /^(core|alloc|std)$/) b = "Rust core/alloc/std"
        if (b ~ /^(mio|tokio)$/) b = "tokio + mio"
        if (b ~ /^(hyper|hyper_util|h2|httparse|http|http_body|http_body_util)$/) b = "hyper/http (server + client)"
        if (b ~ /^(combine|redis)$/) b = "redis-rs (incl. combine parser)"
        if (b ~ /^(tracing|tracing_core|tracing_subscriber)$/) b = "tracing"
        if (b ~ /^(serde|serde_json)$/) b = "serde_json"
    }
    total[b] += pct
    all += pct
}
END {
    for (b in total) printf "%6.2f%%  %s\n", total[b], b | "sort -rn"
    close("sort -rn")
    printf "%6.2f%%  (sum)\n", all
}
