#!/usr/bin/env bash
# bench/run.sh: keygate's load benchmark, in one run on this machine.
#
# Builds the release binary, starts its own redis-server, two mock upstreams (no delay, and
# --delay-ms 50), keygate replicas (Redis store x3, embedded store x1) and nginx (in front of the
# 3 replicas, and in front of each mock), then measures with oha:
#   matrix  (a) direct to the mock, (b) keygate + Redis, (c) keygate embedded,
#           (d) nginx -> 3 keygate replicas vs nginx -> mock; at c=1, c=64, 500 and 2,000 req/s
#           (fixed rate, latency-corrected), in both mock modes
#   floor   interleaved rounds: c=1 for direct, bare nginx proxy_pass (the physical limit,
#           bench/nginx.bare.conf.template), bare hyper (benches/bare_proxy.rs: keygate's HTTP
#           stack doing only what bare nginx does), embedded, Redis; c=64 for all but direct;
#           redis-benchmark PING and replays of the select/report scripts (the inputs of the
#           added-latency and throughput targets, side by side)
#   sweep   keygate + Redis at c=64 and c=1 with 4, 64, 1,024 and 10,000 keys in the pool
#   sizepair the smallest and the largest pool of the sweep in 3 alternating rounds (the pool-size
#           target, side by side)
#   sustained the largest pool of the sweep at c=64 for BENCH_SUSTAIN_SECS (75): the RSS target
#           under lasting load, with the replica's 60 s snapshot refresh inside the point
#   storm   one key of 8 turns into a steady `429, Retry-After: 5` under c=64 through nginx and
#           3 replicas: how many requests still reach it, over time
#   logging the embedded replica again with RUST_LOG=info (a log line per request), c=64 and c=1
#   pinned  (a)-(d) fast mode at c=1 and c=64 with redis, keygate and nginx on core 0, the mock
#           and oha on core 1
#   streams 1,000, 4,000 and 8,000 concurrent SSE streams straight to a pacing mock, through bare
#           nginx (the floor) and through one replica: stream rate, time to first byte, duration,
#           memory per open stream, CPU per event, upstream connections held, and all of it
#           again after a minute idle
#   profile (BENCH_PROFILE=1) perf record of one replica (Redis store) at c=64
# Results: bench/results/<UTC time>/ (results.tsv, summary.md, storm.tsv, logs/, oha/).
#
# Environment (all optional):
#   BENCH_SECS=5            seconds per point     BENCH_PHASES=matrix,floor,sweep,sizepair,sustained,budgets,storm,logging,pinned,streams
#   BENCH_STREAM_COUNTS="1000 4000 8000"  BENCH_STREAM_SECS=20  BENCH_STREAM_EVENT_MS=100  BENCH_STREAMS_AFTER=60
#   BENCH_STREAM_POOLS="streams streams-h2" (HTTP/1.1 and HTTP/2 upstream)  BENCH_STREAMS_BIN=path (skip its build)
#   BENCH_STREAM_CLIENT_HTTP2=1 (the load generator speaks HTTP/2 to the mock and to keygate)
#   BENCH_BARE_PROXY_BIN=path  benches/bare_proxy.rs's binary for the floor phase (skip its build)
#   BENCH_SUSTAIN_SECS=75   seconds of the sustained point
#   BENCH_SIZES=4,64,1024,10000                         BENCH_MODES=fast,delay
#   BENCH_SKIP_BUILD=1      use the existing binary   KEYGATE=path (default target/release/keygate)
#   BENCH_LOG=...           keygate's RUST_LOG (default warn,keygate::store=info; plain info
#                           logs one line per request)
#   BENCH_PROFILE=1         add the perf profile        BENCH_PORT_BASE=19100
#   OHA=path/to/oha         (default: oha on PATH, else ~/.cargo/bin/oha)
# Every process it starts is stopped on exit (trap), whatever the exit path.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
SECS=${BENCH_SECS:-5}
PHASES=${BENCH_PHASES:-matrix,floor,sweep,sizepair,sustained,budgets,storm,logging,pinned,streams}
MODES=${BENCH_MODES:-fast,delay}
SIZES=${BENCH_SIZES:-4,64,1024,10000}
KG_LOG=${BENCH_LOG:-warn,keygate::store=info}
KEYGATE=${KEYGATE:-$ROOT/target/release/keygate}
NGINX=${NGINX:-/usr/sbin/nginx}
OUT=${BENCH_OUT:-$BENCH_DIR/results/$(date -u +%Y%m%dT%H%M%SZ)}
PINNED=no

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

has_phase() { [[ ",$PHASES," == *",$1,"* ]]; }

# The streams phase needs neither oha nor nginx (without nginx it has no nginx-bare rows).
if [[ $PHASES == streams ]]; then
    OHA=${OHA:-$(command -v oha || echo none)}
    [[ -x $NGINX ]] || NGINX=true
else
    find_oha
fi
for tool in redis-server redis-cli redis-benchmark jq curl taskset "$NGINX"; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
mkdir -p "$OUT/logs" "$OUT/oha"
OUT=$(cd "$OUT" && pwd) # absolute: nginx resolves its paths against its own prefix

# ---------------------------------------------------------------- machine and build

{
    echo "date_utc: $(date -u +%FT%TZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel: $(uname -r)"
    echo "redis: $(redis-server --version)"
    echo "nginx: $("$NGINX" -v 2>&1)"
    echo "oha: $("$OHA" --version 2>/dev/null || echo none)"
    echo "rustc: $(rustc --version 2>/dev/null || echo '?')"
    echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') (dirty: $(git -C "$ROOT" status --porcelain 2>/dev/null | grep -c . || true) paths)"
    echo "uptime before: $(uptime)"
    echo "processes above 2% CPU over 1 s before the build (top):"
    top -b -n 2 -d 1 -w 200 | awk '/^top -/ {i++} i == 2 && $1 ~ /^[0-9]+$/ && $9 + 0 > 2 {print "  " $9 "% " $12}' | head -5
} >"$OUT/machine.txt"
log "results in $OUT"

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release) >"$OUT/logs/build.log" 2>&1 ||
        die "cargo build --release failed: see $OUT/logs/build.log"
fi
[[ -x $KEYGATE ]] || die "$KEYGATE missing"
[[ $("$KEYGATE" hash-token "$TOKEN") == $(sed -n 's/^token_sha256 = "\(.*\)".*/\1/p' "$BENCH_DIR/keygate.bench.toml.in") ]] ||
    die "keygate.bench.toml.in: token_sha256 is not keygate hash-token $TOKEN"

# ---------------------------------------------------------------- redis and mocks

start_redis

alloc_port
MOCK_FAST_PORT=$PORT
start_bg mock-fast "$KEYGATE" mock-upstream --listen "127.0.0.1:$MOCK_FAST_PORT" --delay-ms 0
MOCK_FAST_PID=$LAST_PID
alloc_port
MOCK_SLOW_PORT=$PORT
start_bg mock-slow "$KEYGATE" mock-upstream --listen "127.0.0.1:$MOCK_SLOW_PORT" --delay-ms 50
MOCK_SLOW_PID=$LAST_PID
wait_http "http://127.0.0.1:$MOCK_FAST_PORT/_mock/stats"
wait_http "http://127.0.0.1:$MOCK_SLOW_PORT/_mock/stats"

# ---------------------------------------------------------------- keygate and nginx

# Every replica serves pool "fast" (4 keys, mock without delay), "slow" (4 keys, 50 ms mock) and
# "storm" (8 keys, mock without delay); requests pick one with X-Keygate-Pool.
write_main_config() {
    local file=$1 port=$2 redis=$3
    gen_config "$file" "127.0.0.1:$port" "$redis" kgbench '"fast", "slow", "storm"'
    {
        gen_pool fast "http://127.0.0.1:$MOCK_FAST_PORT/v1" 4
        gen_pool slow "http://127.0.0.1:$MOCK_SLOW_PORT/v1" 4
        gen_pool storm "http://127.0.0.1:$MOCK_FAST_PORT/v1" 8
    } >>"$file"
}

# The streams phase alone starts its own replica and needs none of these.
if [[ $PHASES != streams ]]; then
    KG_PORTS=()
    KG_PIDS=()
    for i in 1 2 3; do
        alloc_port
        write_main_config "$OUT/keygate-r$i.toml" "$PORT" "redis://127.0.0.1:$REDIS_PORT/0"
        start_keygate "keygate-r$i" "$OUT/keygate-r$i.toml" "$PORT"
        KG_PORTS+=("$PORT")
        KG_PIDS+=("$LAST_PID")
    done
    alloc_port
    KG_E_PORT=$PORT
    write_main_config "$OUT/keygate-embedded.toml" "$KG_E_PORT" ""
    start_keygate keygate-embedded "$OUT/keygate-embedded.toml" "$KG_E_PORT"
    KG_E_PID=$LAST_PID

    alloc_port
    NGX_KG_PORT=$PORT
    start_nginx kg3 "$NGX_KG_PORT" "${KG_PORTS[@]}"
    NGX_KG_PID=$LAST_PID
    alloc_port
    NGX_FAST_PORT=$PORT
    start_nginx mock-fast "$NGX_FAST_PORT" "$MOCK_FAST_PORT"
    NGX_FAST_PID=$LAST_PID
    alloc_port
    NGX_SLOW_PORT=$PORT
    start_nginx mock-slow "$NGX_SLOW_PORT" "$MOCK_SLOW_PORT"
    NGX_SLOW_PID=$LAST_PID
    # The physical limit: bare nginx proxy_pass with a key header, in front of the fast mock.
    alloc_port
    NGX_BARE_PORT=$PORT
    NGINX_TEMPLATE="$ROOT/bench/nginx.bare.conf.template" start_nginx bare "$NGX_BARE_PORT" "$MOCK_FAST_PORT"
    NGX_BARE_PID=$LAST_PID
    # The floor of keygate's own stack: hyper and tokio doing what bare nginx does.
    if has_phase floor; then
        bare_bin=${BENCH_BARE_PROXY_BIN:-$(cd "$ROOT" && cargo build --release --bench bare_proxy --message-format=json 2>>"$OUT/logs/build.log" |
            jq -r 'select(.executable != null and .target.name == "bare_proxy") | .executable' | tail -1)}
        [[ -x $bare_bin ]] || die "benches/bare_proxy.rs did not build: see $OUT/logs/build.log"
        alloc_port
        HYPER_BARE_PORT=$PORT
        start_bg hyper-bare "$bare_bin" --listen "127.0.0.1:$HYPER_BARE_PORT" --upstream "http://127.0.0.1:$MOCK_FAST_PORT"
        HYPER_BARE_PID=$LAST_PID
        for _ in $(seq 50); do port_free "$HYPER_BARE_PORT" || break; sleep 0.1; done
        port_free "$HYPER_BARE_PORT" && die "bare_proxy did not listen on $HYPER_BARE_PORT (see $OUT/logs/hyper-bare.log)"
    fi
    log "redis :$REDIS_PORT  mocks :$MOCK_FAST_PORT :$MOCK_SLOW_PORT  keygate :${KG_PORTS[*]} embedded :$KG_E_PORT  nginx :$NGX_KG_PORT :$NGX_FAST_PORT :$NGX_SLOW_PORT"
fi

printf '%s\n' "$TSV_HEADER" >"$OUT/results.tsv"

# Noise watch: every ~5 s, the load average, the CPU that processes other than this run and
# its children used over 1 s (top; 100 = one core), with the busiest of them, and the steal time
# over that second (the share of the vCPUs' time the host gave to others; top's `st`, 100 = all
# cores). Numbers taken next to a build or a test run, or under steal, are not worth much. See
# noise.tsv; a summary goes to machine.txt.
descendants() {
    ps -e -o pid=,ppid= | awk -v root="$1" '{p[$1] = $2}
        END {for (x in p) {y = x; while (y > 1 && y != root) y = p[y]; if (y == root) print x}}'
}
noise_watch() {
    local root=$1 mine
    printf 'time\tload1\tforeign_cpu_pct\tbusiest_foreign\tsteal_pct\n'
    while :; do
        # This run's processes: descendants of $root, taken before and after top's 1 s window
        # (an oha that starts or ends inside it is still ours).
        mine=$(descendants "$root")
        top -b -n 2 -d 1 -w 200 >"$OUT/.top" 2>/dev/null || true
        mine+=$'\n'$(descendants "$root")
        awk -v mine="$mine" -v t="$(date -u +%T)" \
            -v load1="$(cut -d' ' -f1 /proc/loadavg)" '
            BEGIN {n = split(mine, a, "\n"); for (k = 1; k <= n; k++) m[a[k]] = 1}
            /^top -/ {i++}
            i == 2 && /^%Cpu/ && match($0, /([0-9.]+) st/, st) {steal = st[1]}
            i == 2 && $1 ~ /^[0-9]+$/ && !($1 in m) && $9 + 0 > 0 {s += $9; if ($9 + 0 >= 5) b = b $12 "(" $9 ") "}
            END {printf "%s\t%s\t%.0f\t%s\t%.1f\n", t, load1, s, b, steal}' "$OUT/.top"
        sleep 4
    done
}
noise_watch "$$" >"$OUT/noise.tsv" 2>/dev/null &
PIDS+=("$!")

# use_mode MODE: the mock, its nginx and the pool header of a mode.
use_mode() {
    case $1 in
    fast) MOCK_PORT=$MOCK_FAST_PORT MOCK_PID=$MOCK_FAST_PID NGX_MOCK_PORT=$NGX_FAST_PORT \
        NGX_MOCK_PID=$NGX_FAST_PID POOL_HEADER=fast ;;
    delay) MOCK_PORT=$MOCK_SLOW_PORT MOCK_PID=$MOCK_SLOW_PID NGX_MOCK_PORT=$NGX_SLOW_PORT \
        NGX_MOCK_PID=$NGX_SLOW_PID POOL_HEADER=slow ;;
    esac
}

# use_target TARGET: sets URL, SUT_KG and SUT_NGX for the current mode.
use_target() {
    local path=/v1/chat/completions
    SUT_KG=()
    SUT_PORTS=()
    SUT_NGX=()
    case $1 in
    direct) URL="http://127.0.0.1:$MOCK_PORT$path" ;;
    kg-redis) URL="http://127.0.0.1:${KG_PORTS[0]}$path" SUT_KG=("${KG_PIDS[0]}") SUT_PORTS=("${KG_PORTS[0]}") ;;
    kg-embedded) URL="http://127.0.0.1:$KG_E_PORT$path" SUT_KG=("$KG_E_PID") SUT_PORTS=("$KG_E_PORT") ;;
    nginx-kg3) URL="http://127.0.0.1:$NGX_KG_PORT$path" SUT_KG=("${KG_PIDS[@]}") SUT_PORTS=("${KG_PORTS[@]}") SUT_NGX=("$NGX_KG_PID") ;;
    nginx-mock) URL="http://127.0.0.1:$NGX_MOCK_PORT$path" SUT_NGX=("$NGX_MOCK_PID") ;;
    nginx-bare) URL="http://127.0.0.1:$NGX_BARE_PORT$path" SUT_NGX=("$NGX_BARE_PID") ;;
    # The keygate columns (CPU, peak RSS) hold the bare hyper proxy's.
    hyper-bare) URL="http://127.0.0.1:$HYPER_BARE_PORT$path" SUT_KG=("$HYPER_BARE_PID") ;;
    esac
}

TARGETS=(direct kg-redis kg-embedded nginx-kg3 nginx-mock)

# ---------------------------------------------------------------- phases

if has_phase matrix; then
    for mode in ${MODES//,/ }; do
        use_mode "$mode"
        for target in "${TARGETS[@]}"; do
            use_target "$target"
            log "matrix $mode $target"
            run_point matrix "$mode" "$target" w1 "$URL"
            for pt in c1 c64 r500 r2000; do
                run_point matrix "$mode" "$target" "$pt" "$URL"
            done
        done
    done
fi

# capture_scripts: the select and report script calls (FCALL, or EVALSHA on a Redis without
# Functions) replica 1 makes for one request, as Redis saw them (SLOWLOG with a 0 µs
# threshold), one per line in $OUT/scripts.txt, so redis-benchmark can replay them: the round
# trip of the real scripts from a C client.
capture_scripts() {
    rcli config set slowlog-log-slower-than 0 >/dev/null
    rcli slowlog reset >/dev/null
    curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" -H "X-Keygate-Pool: fast" \
        -H 'Content-Type: application/json' -d "$REQ_BODY" \
        "http://127.0.0.1:${KG_PORTS[0]}/v1/chat/completions"
    sleep 0.3 # the success report leaves after the response (batched: within report_flush_ms)
    rcli --json slowlog get 1000 >"$OUT/slowlog.json"
    rcli config set slowlog-log-slower-than 10000 >/dev/null
    rcli slowlog reset >/dev/null
    # Entries are [id, time, µs, [command args...], addr, name], newest first. The select is the
    # FCALL of the library's function kg_<version>_select, or the EVALSHA of select.lua's SHA1
    # (lua/lib.lua, begin(KEYS), lua/select.lua, its select_call: src/store/scripts.rs);
    # any other script call on the pool: the report of the success (today a batch of one key,
    # sent once the batch interval has passed).
    local sel
    sel=$( (cat "$ROOT/lua/lib.lua" && printf '\nbegin(KEYS)\n' && cat "$ROOT/lua/select.lua" &&
        printf '\nreturn select_call(KEYS, ARGV)\n') | sha1sum | cut -c1-40)
    jq -r --arg sel "$sel" '[.[] | .[3] | select(.[0] | ascii_downcase | IN("evalsha", "fcall"))
        | select(.[3] == "kgbench:{fast}")]
        | reverse | map(. + [(.[1] == $sel or (.[1] | endswith("_select")))])
        | (map(select(.[-1])) | first), (map(select(.[-1] | not)) | first)
        | select(. != null) | .[:-1] | @sh' "$OUT/slowlog.json" >"$OUT/scripts.txt"
    [[ $(wc -l <"$OUT/scripts.txt") == 2 ]] || die "could not capture select and report (see $OUT/slowlog.json)"
}

# bench_p50 ARGS...: p50 in ms of redis-benchmark -c 1 -n 20000 for one command (or -t ping).
bench_p50() {
    ${BENCH_PIN:-} redis-benchmark -p "$REDIS_PORT" -c 1 -n 20000 -q "$@" 2>/dev/null | tr '\r' '\n' |
        awk '/requests per second, p50=/ {sub(/.*p50=/, ""); v = $1} END {print v}'
}

# ping_placed: "SAME OTHER", PING p50 in ms with redis-benchmark on Redis's vCPU and on the
# other one (Redis pinned to core 0 meanwhile, then let go). An unpinned PING lands on either:
# the scheduler keeps the two on one vCPU when the other is busy (0.015 ms here) and spreads
# them when it is idle (0.07-0.10 ms), so one unpinned round can differ from the next by 5x.
ping_placed() {
    local same other
    taskset -a -pc 0 "$REDIS_PID" >/dev/null
    same=$(BENCH_PIN="taskset -c 0" bench_p50 -t ping)
    other=$(BENCH_PIN="taskset -c 1" bench_p50 -t ping)
    taskset -a -pc 0-1 "$REDIS_PID" >/dev/null
    echo "$same $other"
}

if has_phase floor; then
    use_mode fast
    capture_scripts
    printf 'round\tping_p50_ms\tselect_p50_ms\treport_p50_ms\tping_same_cpu_ms\tping_other_cpu_ms\n' >"$OUT/rtt.tsv"
    for round in 1 2 3; do
        for target in direct nginx-bare hyper-bare kg-embedded kg-redis; do
            use_target "$target"
            run_point floor fast "$target" w1 "$URL"
            SECS=3 run_point floor fast "$target" c1 "$URL"
        done
        # The throughput targets, side by side too: c=64 throughput moves by ±30% between
        # phases on this VM, more than the difference it is meant to show. nginx-bare is the
        # physical limit keygate is compared with; hyper-bare what keygate's stack alone reaches.
        for target in nginx-bare hyper-bare kg-embedded kg-redis; do
            use_target "$target"
            SECS=3 run_point floor fast "$target" c64 "$URL"
        done
        ping=$(bench_p50 -t ping)
        select_cmd=() report_cmd=()
        eval "select_cmd=($(sed -n 1p "$OUT/scripts.txt"))"
        eval "report_cmd=($(sed -n 2p "$OUT/scripts.txt"))"
        sel=$(bench_p50 "${select_cmd[@]}")
        rep=$(bench_p50 "${report_cmd[@]}")
        read -r ping_same ping_other <<<"$(ping_placed)"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$ping" "$sel" "$rep" "$ping_same" "$ping_other" >>"$OUT/rtt.tsv"
        log "round $round: redis-benchmark -c 1 p50: PING $ping ms (same vCPU as Redis $ping_same, other $ping_other), select $sel ms, report $rep ms (the script calls replica 1 made)"
    done
fi

# sweep_size N [STORE_TIMEOUT_MS]: one replica with an N-key pool; c=64 and c=1 (SWEEP_POINTS),
# then, in the sweep phase, one /metrics scrape. Notes idle and scraped RSS, /metrics size and
# degraded mode in sweep.tsv.
sweep_size() {
    local n=$1 timeout=${2:-} label="keys-$1${2:+-t$2}" phase=${SWEEP_PHASE:-sweep}
    alloc_port
    local port=$PORT cfg="$OUT/keygate-sweep-$label.toml"
    gen_config "$cfg" "127.0.0.1:$port" "redis://127.0.0.1:$REDIS_PORT/0" "kgsweep$timeout" "\"s$n\"" "$timeout"
    gen_pool "s$n" "http://127.0.0.1:$MOCK_FAST_PORT/v1" "$n" >>"$cfg"
    local t0 t1 dg0
    dg0=$(degraded_entries)
    t0=$(date +%s.%N)
    start_keygate "keygate-sweep-$label" "$cfg" "$port"
    t1=$(date +%s.%N)
    local pid=$LAST_PID
    sleep 3 # past the first background snapshot refresh
    local idle degraded_idle
    idle=$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
    degraded_idle=$(degraded_now "$port")
    SUT_KG=("$pid") SUT_PORTS=("$port") SUT_NGX=() POOL_HEADER="s$n"
    URL="http://127.0.0.1:$port/v1/chat/completions"
    log "$phase $label: ready in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s, idle RSS $idle MB, degraded after 3 s idle: $degraded_idle"
    run_point "$phase" fast "$label" w1 "$URL"
    local pt
    for pt in ${SWEEP_POINTS:-c64 c1}; do run_point "$phase" fast "$label" "$pt" "$URL"; done
    if [[ $phase != sweep ]]; then
        stop_pid "$pid"
        SWEEP_DEGRADED=$(($(degraded_entries) - dg0 + degraded_idle))
        return
    fi
    local bytes rss_scrape degraded_end
    reset_hwm "$pid"
    bytes=$(curl -fsS "http://127.0.0.1:$port/metrics" | wc -c)
    rss_scrape=$(peak_rss_mb "$pid")
    degraded_end=$(degraded_now "$port")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')" \
        "$idle" "$degraded_idle" "$bytes" "$rss_scrape" "$degraded_end" >>"$OUT/sweep.tsv"
    stop_pid "$pid"
    # Degraded at any time: when idle, during the points, or after the scrape.
    SWEEP_DEGRADED=$(($(degraded_entries) - dg0 + degraded_idle + degraded_end))
}

if has_phase sweep; then
    use_mode fast
    printf 'pool\tready_s\tidle_rss_mb\tdegraded_idle\tmetrics_bytes\tpeak_rss_scrape_mb\tdegraded_after_scrape\n' >"$OUT/sweep.tsv"
    for n in ${SIZES//,/ }; do
        # A replica that went degraded (at any time) measured memory, not Redis: run that size
        # again with a store timeout its background snapshot fits in.
        sweep_size "$n"
        if [[ $SWEEP_DEGRADED != 0 ]]; then sweep_size "$n" 500; fi
    done
fi

# sizepair: the pool-size target side by side. The sweep measures each size once, in order, and
# this VM's throughput drifts between minutes by more than the target's 25% (run9/run10); here the
# smallest and the largest pool alternate, 3 rounds, a fresh replica each time.
if has_phase sizepair; then
    use_mode fast
    sizes=$(tr ',' '\n' <<<"$SIZES" | sort -n)
    small=$(head -1 <<<"$sizes") big=$(tail -1 <<<"$sizes")
    for round in 1 2 3; do
        for n in "$small" "$big"; do
            SWEEP_PHASE=sizepair sweep_size "$n"
        done
    done
fi

# sustained: the RSS target under lasting load. The other phases' 5 s points end before the
# replica's first 60 s snapshot refresh; this one runs past it (a fresh replica, the largest pool).
if has_phase sustained; then
    use_mode fast
    big=$(tr ',' '\n' <<<"$SIZES" | sort -n | tail -1)
    log "sustained: $big keys, Redis store, c=64 for ${BENCH_SUSTAIN_SECS:-75} s"
    SWEEP_PHASE=sustained SWEEP_POINTS=c64 SECS=${BENCH_SUSTAIN_SECS:-75} sweep_size "$big"
fi

# budgets: the same 64-key pool without and with budgets that never bind (README "Budgets";
# bench/lib.sh NOT_BINDING_LIMITS: rpm 60,600, one request per key per millisecond, the
# schedule's finest step). Three interleaved rounds, a fresh replica (Redis store, its own
# prefix) each, c=64 and c=1: what spending a budget inside select costs.
budget_replica() {
    local label=$1 limits=$2
    alloc_port
    local port=$PORT cfg="$OUT/keygate-$label.toml"
    gen_config "$cfg" "127.0.0.1:$port" "redis://127.0.0.1:$REDIS_PORT/0" "kg$label$round" '"b64"'
    {
        gen_pool b64 "http://127.0.0.1:$MOCK_FAST_PORT/v1" 64
        # A [pools.limits] table after the keys belongs to the same (last) pool.
        [[ -z $limits ]] || printf '\n[pools.limits]\n%s\n' "$limits"
    } >>"$cfg"
    start_keygate "keygate-$label" "$cfg" "$port"
    local pid=$LAST_PID
    SUT_KG=("$pid") SUT_PORTS=("$port") SUT_NGX=() POOL_HEADER=b64
    URL="http://127.0.0.1:$port/v1/chat/completions"
    run_point budgets fast "$label" w1 "$URL"
    for pt in ${BUDGET_POINTS:-c64 c1}; do run_point budgets fast "$label" "$pt" "$URL"; done
    stop_pid "$pid"
}

if has_phase budgets; then
    use_mode fast
    for round in 1 2 3; do
        log "budgets: round $round, 64 keys without and with budgets that never bind"
        budget_replica budgets-off ""
        budget_replica budgets-on "$NOT_BINDING_LIMITS"
    done
fi

if has_phase storm; then
    use_mode fast
    STORM_SECS=$((SECS + 9))
    SWITCH_AT=2
    victim=sk-bench-storm-00003
    url="http://127.0.0.1:$NGX_KG_PORT/v1/chat/completions"
    log "storm: c=64 for ${STORM_SECS}s through nginx -> 3 replicas; key storm-00003 -> 429:5 at ${SWITCH_AT}s"
    up0=$(mock_total "$MOCK_FAST_PORT")
    rl_match='key="storm-00003",outcome="rate_limited",pool="storm"'
    cool_match='key="storm-00003",pool="storm",reason="rate_limited"'
    rl0=$(metric_sum keygate_requests_total "$rl_match" "${KG_PORTS[@]}")
    cool0=$(metric_sum keygate_cooldowns_total "$cool_match" "${KG_PORTS[@]}")
    $LOAD_PIN "$OHA" --no-tui --output-format json -w -c 64 -z "${STORM_SECS}s" -m POST -T application/json \
        -d "$REQ_BODY" -H "Authorization: Bearer $TOKEN" -H "X-Keygate-Pool: storm" "$url" \
        >"$OUT/oha/storm.json" 2>"$OUT/oha/storm.err" &
    storm_oha=$!
    PIDS+=("$storm_oha")
    sleep "$SWITCH_AT"
    python3 "$BENCH_DIR/storm_watch.py" "$MOCK_FAST_PORT" "$victim" "$((STORM_SECS - SWITCH_AT - 1))" \
        >"$OUT/storm.tsv"
    wait "$storm_oha" || true
    up1=$(mock_total "$MOCK_FAST_PORT")
    jq -r --arg up $((up1 - up0)) '
        ([.statusCodeDistribution | to_entries[] | .value] | add // 0) as $n
        | "client requests \($n), status \(.statusCodeDistribution), connection errors \(.errorDistribution), upstream attempts \($up), \(.summary.requestsPerSec | floor) req/s, p99 \(.latencyPercentiles.p99 * 1000 | . * 100 | floor / 100) ms"' \
        "$OUT/oha/storm.json" >"$OUT/storm.txt"
    sed -n 's/^# //p' "$OUT/storm.tsv" >>"$OUT/storm.txt"
    rl=$(($(metric_sum keygate_requests_total "$rl_match" "${KG_PORTS[@]}") - rl0))
    cool=$(($(metric_sum keygate_cooldowns_total "$cool_match" "${KG_PORTS[@]}") - cool0))
    later=$(awk -F'\t' '!/^#/ && $1 < 4.9 {w = $2} !/^#/ {l = $2} END {print l - w}' "$OUT/storm.tsv")
    echo "429s the replicas got from the key (keygate_requests_total, 3 replicas): $rl; rate_limited cooldowns they recorded: $cool; so in the first window: $((rl - later)) 429s = the first + $((rl - later - 1)) after it" >>"$OUT/storm.txt"
    sed 's/^/storm: /' "$OUT/storm.txt" >&2
fi

if has_phase logging; then
    use_mode fast
    alloc_port
    write_main_config "$OUT/keygate-info.toml" "$PORT" ""
    KG_LOG=info start_keygate keygate-info "$OUT/keygate-info.toml" "$PORT"
    SUT_KG=("$LAST_PID") SUT_PORTS=("$PORT") SUT_NGX=()
    URL="http://127.0.0.1:$PORT/v1/chat/completions"
    log "logging: embedded store, RUST_LOG=info (one log line per request, to a file)"
    run_point logging fast kg-embedded-info w1 "$URL"
    run_point logging fast kg-embedded-info c64 "$URL"
    run_point logging fast kg-embedded-info c1 "$URL"
    stop_pid "${SUT_KG[0]}"
fi

if has_phase pinned; then
    log "pinned: redis, keygate, nginx on core 0; mocks and oha on core 1"
    sut=("$REDIS_PID" "${KG_PIDS[@]}" "$KG_E_PID")
    for p in "$NGX_KG_PID" "$NGX_FAST_PID" "$NGX_SLOW_PID"; do mapfile -t -O "${#sut[@]}" sut < <(with_children "$p"); done
    for p in "${sut[@]}"; do taskset -a -pc 0 "$p" >/dev/null; done
    for p in "$MOCK_FAST_PID" "$MOCK_SLOW_PID"; do taskset -a -pc 1 "$p" >/dev/null; done
    LOAD_PIN="taskset -c 1"
    PINNED=yes
    use_mode fast
    for target in "${TARGETS[@]}"; do
        use_target "$target"
        run_point pinned fast "$target" w1 "$URL"
        for pt in c1 c64; do run_point pinned fast "$target" "$pt" "$URL"; done
    done
    for p in "${sut[@]}" "$MOCK_FAST_PID" "$MOCK_SLOW_PID"; do taskset -a -pc 0-1 "$p" >/dev/null; done
    LOAD_PIN=""
    PINNED=no
fi

# streams: N concurrent streaming requests held open (each slot starts a new stream when its
# last one ends), straight to a pacing mock and through one fresh replica (Redis store), for
# N in BENCH_STREAM_COUNTS. The mock sends 8 SSE events per stream, one every
# BENCH_STREAM_EVENT_MS. Memory per open stream = (peak RSS under load - idle RSS) / N; then the
# replica idles BENCH_STREAMS_AFTER seconds and its RSS and upstream connections are read again.
if has_phase streams; then
    streams_bin=${BENCH_STREAMS_BIN:-$(cd "$ROOT" && cargo build --release --bench streams --message-format=json 2>>"$OUT/logs/build.log" |
        jq -r 'select(.executable != null and .target.name == "streams") | .executable' | tail -1)}
    [[ -x $streams_bin ]] || die "benches/streams.rs did not build: see $OUT/logs/build.log"
    interval=${BENCH_STREAM_EVENT_MS:-100}
    alloc_port
    MOCK_STREAMS_PORT=$PORT
    keyflags=(--key "sk-bench-direct=slow:$interval")
    for i in 1 2 3 4; do
        keyflags+=(--key "$(printf 'sk-bench-streams-%05d' "$i")=slow:$interval")
        keyflags+=(--key "$(printf 'sk-bench-streams-h2-%05d' "$i")=slow:$interval")
    done
    keyflags+=(--key "sk-bench-bare-0000000000000000=slow:$interval")
    start_bg mock-streams "$KEYGATE" mock-upstream --listen "127.0.0.1:$MOCK_STREAMS_PORT" "${keyflags[@]}"
    MOCK_STREAMS_PID=$LAST_PID
    wait_http "http://127.0.0.1:$MOCK_STREAMS_PORT/_mock/stats"
    alloc_port
    st_port=$PORT
    # Pool "streams" reaches the mock over HTTP/1.1 (one connection per open stream), pool
    # "streams-h2" over HTTP/2 with prior knowledge (up to 100 streams per connection).
    stream_pools=${BENCH_STREAM_POOLS:-streams streams-h2}
    # BENCH_STREAM_CLIENT_HTTP2=1: the load generator speaks HTTP/2 (100 streams a connection).
    client_h2=()
    [[ ${BENCH_STREAM_CLIENT_HTTP2:-0} != 1 ]] || client_h2=(--http2)
    gen_config "$OUT/keygate-streams.toml" "127.0.0.1:$st_port" "redis://127.0.0.1:$REDIS_PORT/0" kgstreams \
        "$(printf '"%s", ' $stream_pools | sed 's/, $//')"
    {
        gen_pool streams "http://127.0.0.1:$MOCK_STREAMS_PORT/v1" 4
        [[ " $stream_pools " != *" streams-h2 "* ]] ||
            gen_pool streams-h2 "http://127.0.0.1:$MOCK_STREAMS_PORT/v1" 4 | sed 's/^max_attempts = 3$/&\nupstream_http2 = "prior_knowledge"/'
    } >>"$OUT/keygate-streams.toml"
    start_keygate keygate-streams "$OUT/keygate-streams.toml" "$st_port"
    st_pid=$LAST_PID
    # The floor for a proxied stream: bare nginx (bench/nginx.bare.conf.template, 2 workers,
    # proxy_buffering off) in front of the same mock, with room for 2 connections per stream.
    ngx_streams_pid=""
    if [[ ${BENCH_STREAM_NGINX:-1} == 1 && $NGINX != true ]]; then
        sed -e 's/worker_connections 4096;/worker_connections 10000;/' \
            -e 's/^worker_processes __WORKERS__;/&\nworker_rlimit_nofile 20000;/' \
            "$ROOT/bench/nginx.bare.conf.template" >"$OUT/nginx.streams.conf.template"
        alloc_port
        ngx_streams_port=$PORT
        NGINX_TEMPLATE="$OUT/nginx.streams.conf.template" start_nginx streams "$ngx_streams_port" "$MOCK_STREAMS_PORT"
        ngx_streams_pid=$LAST_PID
    fi
    # upstream_conns: ESTABLISHED connections from the replica to the streams mock, counted by
    # the replica's pid: bare nginx keeps up to 256 idle connections a worker to the same mock
    # for keepalive_timeout (60 s) after its own run, and those are not the replica's.
    upstream_conns() {
        ss -Htnp state established "( dport = :$MOCK_STREAMS_PORT )" 2>/dev/null | grep -c "pid=$st_pid," || true
    }
    rss_mb() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
    printf 'streams\ttarget\tstreams_per_s\tttfb_p50_ms\tttfb_p99_ms\tduration_p50_ms\tduration_p99_ms\terrors\tevents\tidle_rss_mb\tpeak_rss_mb\tkb_per_stream\tcpu_us_per_event\tupstream_conns_load\trss_after_mb\tupstream_conns_after\n' >"$OUT/streams.tsv"
    for n in ${BENCH_STREAM_COUNTS:-1000 4000 8000}; do
        secs=${BENCH_STREAM_SECS:-20}
        log "streams: $n concurrent, direct, ${secs}s"
        direct=$("$streams_bin" --url "http://127.0.0.1:$MOCK_STREAMS_PORT/v1/chat/completions" \
            --concurrency "$n" --secs "$secs" --token sk-bench-direct ${client_h2[@]+"${client_h2[@]}"})
        printf '%s\tdirect\t%s\t-\t-\t-\t-\t-\t-\t-\n' "$n" \
            "$(jq -r '[.streams_per_s, .ttfb_p50_ms, .ttfb_p99_ms, .duration_p50_ms, .duration_p99_ms, .errors, .events] | @tsv' <<<"$direct")" >>"$OUT/streams.tsv"
        if [[ -n $ngx_streams_pid ]]; then
            # nginx: its CPU per event and memory per open stream (master and workers), no idle wait.
            mapfile -t ngx_pids < <(with_children "$ngx_streams_pid")
            ngx_idle=$(for p in "${ngx_pids[@]}"; do rss_mb "$p"; echo; done | awk '{s += $1} END {printf "%.1f", s}')
            t0=$(cpu_ticks "${ngx_pids[@]}")
            log "streams: $n concurrent, nginx-bare, ${secs}s"
            ( sleep $((secs / 2)); for p in "${ngx_pids[@]}"; do rss_mb "$p"; echo; done |
                awk '{s += $1} END {printf "%.1f", s}' >"$OUT/.streams-ngx-rss" ) &
            sampler=$!
            ngx=$("$streams_bin" --url "http://127.0.0.1:$ngx_streams_port/v1/chat/completions" \
                --concurrency "$n" --secs "$secs" --token sk-bench-direct ${client_h2[@]+"${client_h2[@]}"})
            wait "$sampler"
            t1=$(cpu_ticks "${ngx_pids[@]}")
            events=$(jq -r '.events' <<<"$ngx")
            ngx_load=$(cat "$OUT/.streams-ngx-rss")
            printf '%s\tnginx-bare\t%s\t%s\t%s\t%s\t%s\t-\t-\t-\n' "$n" \
                "$(jq -r '[.streams_per_s, .ttfb_p50_ms, .ttfb_p99_ms, .duration_p50_ms, .duration_p99_ms, .errors, .events] | @tsv' <<<"$ngx")" \
                "$ngx_idle" "$ngx_load" \
                "$(awk -v p="$ngx_load" -v i="$ngx_idle" -v n="$n" 'BEGIN {printf "%.1f", (p - i) * 1024 / n}')" \
                "$(awk -v a="$t0" -v b="$t1" -v e="$events" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", e ? (b - a) / hz * 1e6 / e : 0}')" >>"$OUT/streams.tsv"
        fi
        for pool in $stream_pools; do
            target=keygate
            [[ $pool == streams ]] || target=keygate-h2
            idle=$(rss_mb "$st_pid")
            reset_hwm "$st_pid"
            t0=$(cpu_ticks "$st_pid")
            log "streams: $n concurrent, $target (Redis store, pool $pool), ${secs}s"
            ( sleep $((secs / 2)); upstream_conns >"$OUT/.streams-conns" ) &
            sampler=$!
            kg=$("$streams_bin" --url "http://127.0.0.1:$st_port/v1/chat/completions" \
                --concurrency "$n" --secs "$secs" --token "$TOKEN" --header "X-Keygate-Pool: $pool" \
                ${client_h2[@]+"${client_h2[@]}"})
            # Only the sampler: a bare `wait` would also wait for the noise watch, which never ends.
            wait "$sampler"
            t1=$(cpu_ticks "$st_pid")
            peak=$(peak_rss_mb "$st_pid")
            events=$(jq -r '.events' <<<"$kg")
            log "streams: $n, $target, idle ${BENCH_STREAMS_AFTER:-60}s"
            sleep "${BENCH_STREAMS_AFTER:-60}"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$target" \
                "$(jq -r '[.streams_per_s, .ttfb_p50_ms, .ttfb_p99_ms, .duration_p50_ms, .duration_p99_ms, .errors, .events] | @tsv' <<<"$kg")" \
                "$idle" "$peak" \
                "$(awk -v p="$peak" -v i="$idle" -v n="$n" 'BEGIN {printf "%.1f", (p - i) * 1024 / n}')" \
                "$(awk -v a="$t0" -v b="$t1" -v e="$events" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", e ? (b - a) / hz * 1e6 / e : 0}')" \
                "$(cat "$OUT/.streams-conns")" "$(rss_mb "$st_pid")" "$(upstream_conns)" >>"$OUT/streams.tsv"
        done
    done
    stop_pid "$st_pid"
    [[ -z $ngx_streams_pid ]] || stop_pid "$ngx_streams_pid"
    stop_pid "$MOCK_STREAMS_PID"
fi

if [[ ${BENCH_PROFILE:-0} == 1 ]]; then
    use_mode fast
    for target in kg-redis kg-embedded; do
        use_target "$target"
        log "profile: perf record of $target at c=64"
        run_point profile fast "$target" w1 "$URL"
        perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -p "${SUT_KG[0]}" \
            -o "$OUT/perf-$target.data" -- sleep "$SECS" >"$OUT/logs/perf-$target.log" 2>&1 &
        perf_pid=$!
        PIDS+=("$perf_pid")
        run_point profile fast "$target" c64 "$URL"
        wait "$perf_pid" || true
        perf report -i "$OUT/perf-$target.data" --no-children -g none --sort dso,sym --stdio \
            --percent-limit 0 2>/dev/null | grep -v '^#' | grep -v '^$' >"$OUT/perf-$target-self.txt" || true
        awk -f "$BENCH_DIR/perf_buckets.awk" "$OUT/perf-$target-self.txt" >"$OUT/perf-$target-buckets.txt"
        perf report -i "$OUT/perf-$target.data" --children -g none --sort sym --stdio \
            --percent-limit 1 2>/dev/null | grep -v '^#' | grep -v '^$' >"$OUT/perf-$target-children.txt" || true
    done
fi

awk -F'\t' 'NR > 1 {n++; l += $2; f += $3; if ($3 > m) m = $3; if ($3 >= 10) busy++; st += $5; if ($5 > sm) sm = $5; if ($5 >= 5) stolen++}
    END {printf "noise during the run: %d samples, mean load1 %.2f; CPU of other processes: mean %.0f%%, max %.0f%% (100%% = one core), %d samples at 10%% or more; steal: mean %.1f%%, max %.1f%% (100%% = all cores), %d samples at 5%% or more\n", n, n ? l / n : 0, n ? f / n : 0, m, busy, n ? st / n : 0, sm, stolen}' "$OUT/noise.tsv" >>"$OUT/machine.txt"
"$BENCH_DIR/summarize.sh" "$OUT" >"$OUT/summary.md"
echo "uptime after: $(uptime)" >>"$OUT/machine.txt"
log "done: $OUT/summary.md"
