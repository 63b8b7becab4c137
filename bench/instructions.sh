#!/usr/bin/env bash
# bench/instructions.sh: user-space instructions per request of one proxy, counted by valgrind's
# callgrind, so the figure does not move with the machine's load (BENCHMARKS.md, "Where a
# request's CPU goes").
#
#   bench/instructions.sh TARGET=BINARY ...   TARGET: kg-embedded, kg-redis, nginx-bare or hyper-bare
#
# For each target: the fast mock provider (`keygate mock-upstream`, BINARY's), the proxy under
# callgrind with instrumentation off, 3 s of warm-up with wrk (c=8, one small chat completion),
# then instrumentation on for BENCH_SECS (default 10) of the same load, off, and a dump. wrk's
# request count of that window divides the instructions. nginx runs bare `proxy_pass`
# (bench/nginx.bare.conf.template) with one worker and no master process, so one process holds
# all of its work. hyper-bare's BINARY is benches/bare_proxy.rs's (keygate's HTTP stack alone,
# threads as keygate's; `cargo bench --bench bare_proxy --no-run` prints its path); its mock is
# KEYGATE_MOCK's (default target/release/keygate), its flags BARE_PROXY_FLAGS (`--own-pool`).
# Results: BENCH_OUT (default bench/results/instr-<UTC time>/): per target a
# callgrind dump and `requests.txt`, and summary.tsv (target, requests, instructions per request).
# INSTR_KEYS=N gives keygate's pool N keys (default 4).
# INSTR_LIMITS='rpm = 60600\nmax_concurrent = 1000' gives keygate's pool those budgets (README
# "Budgets"; bench/lib.sh NOT_BINDING_LIMITS are the budgets phase's).
# Needs valgrind (callgrind_control), wrk, redis-server, nginx.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
SECS=${BENCH_SECS:-10}
OUT=${BENCH_OUT:-$BENCH_DIR/results/instr-$(date -u +%Y%m%dT%H%M%SZ)}
NGINX=${NGINX:-/usr/sbin/nginx}
KG_LOG=${BENCH_LOG:-warn}

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM
(($# >= 1)) || die "usage: bench/instructions.sh TARGET=BINARY ... (kg-embedded, kg-redis, nginx-bare, hyper-bare)"
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
printf 'target\trequests\tinstructions_per_request\n' >"$OUT/summary.tsv"
cat >"$OUT/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-token-not-secret"
LUA

# measure NAME PORT PID: warm-up, the instrumented window, the dump; one summary row.
measure() {
    local name=$1 port=$2 pid=$3 url n total
    url="http://127.0.0.1:$port/v1/chat/completions"
    wrk -t1 -c8 -d3s -s "$OUT/post.lua" "$url" >"$OUT/$name/warm.txt"
    callgrind_control -i on "$pid" >/dev/null
    wrk -t1 -c8 -d"${SECS}s" -s "$OUT/post.lua" "$url" >"$OUT/$name/load.txt"
    callgrind_control -i off "$pid" >/dev/null
    callgrind_control -d "$pid" >/dev/null
    n=$(awk '/requests in/ {print $1}' "$OUT/$name/load.txt")
    echo "requests: $n" >"$OUT/$name/requests.txt"
    for _ in $(seq 50); do compgen -G "$OUT/$name/cg.out.*" >/dev/null && break; sleep 0.1; done
    total=$(callgrind_annotate --auto=no "$OUT/$name"/cg.out.* 2>/dev/null |
        awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    printf '%s\t%s\t%.0f\n' "$name" "$n" "$(echo "$total / $n" | bc -l)" | tee -a "$OUT/summary.tsv"
}

for arg in "$@"; do
    name=${arg%%=*}
    bin=$(cd "$(dirname "${arg#*=}")" && pwd)/$(basename "${arg#*=}")
    [[ -x $bin ]] || die "$bin is not an executable"
    mkdir -p "$OUT/$name"
    KEYGATE=$bin
    alloc_port
    mock=$PORT
    mock_bin=$bin
    [[ $name != hyper-bare ]] || mock_bin=${KEYGATE_MOCK:-$ROOT/target/release/keygate}
    start_bg "mock-$name" "$mock_bin" mock-upstream --listen "127.0.0.1:$mock" --delay-ms 0
    mock_pid=$LAST_PID
    wait_http "http://127.0.0.1:$mock/_mock/stats"
    alloc_port
    port=$PORT
    vg=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/$name/cg.out")
    case $name in
    kg-embedded | kg-redis)
        redis=""
        if [[ $name == kg-redis ]]; then
            start_redis
            redis="redis://127.0.0.1:$REDIS_PORT"
        fi
        gen_config "$OUT/$name/keygate.toml" "127.0.0.1:$port" "$redis" kginstr '"fast"'
        gen_pool fast "http://127.0.0.1:$mock/v1" "${INSTR_KEYS:-4}" >>"$OUT/$name/keygate.toml"
        [[ -z ${INSTR_LIMITS:-} ]] || printf '\n[pools.limits]\n%b\n' "$INSTR_LIMITS" >>"$OUT/$name/keygate.toml"
        start_bg "$name" env RUST_LOG="$KG_LOG" "${vg[@]}" "$bin" serve --config "$OUT/$name/keygate.toml"
        pid=$LAST_PID
        wait_http "http://127.0.0.1:$port/readyz" 120
        ;;
    nginx-bare)
        prefix="$OUT/$name/nginx"
        mkdir -p "$prefix"
        sed -e "s|__UPSTREAMS__|server 127.0.0.1:$mock;|" -e "s|__LISTEN__|127.0.0.1:$port|" \
            -e "s|__WORKERS__|1|" -e "s|__PREFIX__|$prefix|g" -e "s|^daemon off;|daemon off;\nmaster_process off;|" \
            "$BENCH_DIR/nginx.bare.conf.template" >"$prefix/nginx.conf"
        start_bg "$name" "${vg[@]}" "$NGINX" -c "$prefix/nginx.conf" -p "$prefix" -e "$prefix/error.log"
        pid=$LAST_PID
        for _ in $(seq 100); do port_free "$port" || break; sleep 0.1; done
        ;;
    hyper-bare)
        read -ra bare_flags <<<"${BARE_PROXY_FLAGS:-}"
        start_bg "$name" "${vg[@]}" "$bin" --listen "127.0.0.1:$port" \
            --upstream "http://127.0.0.1:$mock" ${bare_flags[@]+"${bare_flags[@]}"}
        pid=$LAST_PID
        for _ in $(seq 100); do port_free "$port" || break; sleep 0.1; done
        ;;
    *) die "$name: expected kg-embedded, kg-redis, nginx-bare or hyper-bare" ;;
    esac
    measure "$name" "$port" "$pid"
    stop_pid "$pid"
    stop_pid "$mock_pid"
    [[ $name != kg-redis ]] || stop_pid "$REDIS_PID"
done
log "results in $OUT"
