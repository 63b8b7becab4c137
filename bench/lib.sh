# shellcheck shell=bash
# bench/lib.sh: helpers sourced by bench/run.sh. Processes it starts (and stops on exit),
# free ports, config generation, readings from /proc and Redis, and one load point.
# Needs from its caller (run.sh, ab.sh): OUT, KEYGATE, SECS; sets the defaults below.

# shellcheck disable=SC2034 # read by the callers and run_point
{
    TOKEN=bench-token-not-secret # the client token of keygate.bench.toml.in
    RATE_CONC=256 # oha connections for fixed-rate points (2,000 req/s x 50 ms needs 100 in flight)
    LOAD_PIN=""   # taskset prefix for oha (run.sh's pinned phase)
    SUT_KG=()     # the keygate pids, ports and nginx pids a point measures
    SUT_PORTS=()
    SUT_NGX=()
}

# ---------------------------------------------------------------- processes

PIDS=()        # every process this run started, in start order
LAST_PID=""

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# start_bg NAME CMD...: runs CMD in the background, output to logs/NAME.log; LAST_PID is its pid
# (the program's own: bash forks and execs a simple command).
start_bg() {
    local name=$1
    shift
    "$@" >"$OUT/logs/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# stop_pid PID: SIGTERM, up to 5 s, then SIGKILL. Only ever a pid this script started.
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local i
    set +e
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[$i]}"
    done
}

# find_oha: sets OHA (oha on PATH, else ~/.cargo/bin/oha, or the caller's OHA=).
find_oha() {
    OHA=${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
    [[ -x $OHA ]] || die "oha not found: cargo install oha --locked (or set OHA=)"
}

# ---------------------------------------------------------------- ports and readiness

NEXT_PORT=${BENCH_PORT_BASE:-19100}
PORT=""
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# alloc_port: sets PORT to the next free port at or above NEXT_PORT.
alloc_port() {
    while ! port_free "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
    # shellcheck disable=SC2034 # read by run.sh
    PORT=$NEXT_PORT
    NEXT_PORT=$((NEXT_PORT + 1))
}

# wait_http URL [SECONDS]: until URL answers 2xx.
wait_http() {
    local url=$1 limit=${2:-15} i
    for ((i = 0; i < limit * 10; i++)); do
        curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$url did not come up within ${limit}s (see $OUT/logs/)"
}

# ---------------------------------------------------------------- configs

# The budgets phase's limits, which never bind (bench/run.sh, bench/budget_replay.sh,
# bench/script_cost.sh): a key's request schedule has whole-millisecond steps of
# ceil(60,600 / rpm), so rpm 60,600 (one request per key per millisecond; rpm 60,000 would round
# to 2 ms) is the most it enforces; 64 keys at that rate carry 64,600 req/s, about three times
# what one replica serves here. Each request reserves its prompt estimate plus
# default_completion_tokens (1,024), hence the large tpm. Within one millisecond the pool starts
# at most 64 requests, and at c=64 one select call can carry that many: max_wait_ms lets the
# rest of such a burst wait the millisecond instead of answering 429, as the README's example
# config does (BENCHMARKS.md, "A millisecond's burst").
NOT_BINDING_LIMITS='rpm = 60600
tpm = 10000000000
max_concurrent = 1000
max_wait_ms = 1000'

# gen_b64_config FILE KP RP MP PREFIX [LIMITS]: the config of the scripts that count Redis's
# instructions (budget_replay.sh, script_cost.sh, renew_cost.sh): a replica on port KP, Redis on
# RP, key prefix PREFIX, and the pool b64 of 64 keys, whose base_url (port MP) is never called,
# with LIMITS as its `[pools.limits]` when given ('\n' between lines allowed).
gen_b64_config() {
    local file=$1 kp=$2 rp=$3 mp=$4 prefix=$5 limits=${6:-}
    gen_config "$file" "127.0.0.1:$kp" "redis://127.0.0.1:$rp/0" "$prefix" '"b64"'
    gen_pool b64 "http://127.0.0.1:$mp/v1" 64 >>"$file"
    if [[ -n $limits ]]; then
        printf '\n[pools.limits]\n%b\n' "$limits" >>"$file"
    fi
}

# gen_pool NAME BASE_URL NKEYS: one [[pools]] with NKEYS inline fake secrets sk-bench-NAME-NNNNN.
gen_pool() {
    local name=$1 base=$2 n=$3
    printf '\n[[pools]]\nname = "%s"\nbase_url = "%s"\nmax_attempts = 3\n' "$name" "$base"
    awk -v p="$name" -v n="$n" 'BEGIN {
        for (i = 1; i <= n; i++)
            printf "\n[[pools.keys]]\nid = \"%s-%05d\"\nsecret = \"sk-bench-%s-%05d\"\n", p, i, p, i
    }'
}

# gen_config FILE LISTEN REDIS_URL|"" PREFIX POOL_NAMES_QUOTED [STORE_TIMEOUT_MS]: the template
# with placeholders set; the caller appends gen_pool output.
gen_config() {
    local file=$1 listen=$2 redis=$3 prefix=$4 pools=$5 timeout=${6:-} store=""
    if [[ -n $redis ]]; then
        store=$(printf '[store]\nredis_url = "%s"\nprefix = "%s"' "$redis" "$prefix")
        [[ -z $timeout ]] || store+=$(printf '\ntimeout_ms = %s' "$timeout")
    else
        store="# no [store] redis_url: the embedded in-process store"
    fi
    awk -v listen="$listen" -v store="$store" -v pools="$pools" '
        NR == 1 { print "# Generated by bench/run.sh from bench/keygate.bench.toml.in." }
        /^#/ { print; next }
        {
            gsub(/__LISTEN__/, listen); gsub(/__POOLS__/, pools)
            if ($0 == "__STORE__") $0 = store
            print
        }' "$BENCH_DIR/keygate.bench.toml.in" >"$file"
}

# start_redis: our own redis-server on a free port, without persistence; sets REDIS_PORT and
# REDIS_PID.
start_redis() {
    alloc_port
    REDIS_PORT=$PORT
    mkdir -p "$OUT/redis"
    start_bg redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$OUT/redis" --daemonize no
    REDIS_PID=$LAST_PID
    for _ in $(seq 50); do rcli ping >/dev/null 2>&1 && break; sleep 0.1; done
    rcli ping >/dev/null || die "redis-server did not start"
}

# start_keygate NAME CONFIG PORT: starts a replica and waits for /readyz; LAST_PID is its pid.
start_keygate() {
    local name=$1 config=$2 port=$3
    "$KEYGATE" check-config "$config" >"$OUT/logs/$name.check.log" 2>&1 ||
        die "$config: $(cat "$OUT/logs/$name.check.log")"
    start_bg "$name" env RUST_LOG="$KG_LOG" "$KEYGATE" serve --config "$config"
    local pid=$LAST_PID
    wait_http "http://127.0.0.1:$port/readyz" 60
    LAST_PID=$pid
}

# start_nginx NAME LISTEN_PORT UPSTREAM_PORT...: deploy/nginx.local.conf.template, as deployed
# (NGINX_TEMPLATE overrides the template: bench/nginx.bare.conf.template for `nginx-bare`).
start_nginx() {
    local name=$1 listen=$2
    shift 2
    local prefix="$OUT/nginx-$name" ups="" p
    local template=${NGINX_TEMPLATE:-$ROOT/deploy/nginx.local.conf.template}
    mkdir -p "$prefix"
    for p in "$@"; do ups+="server 127.0.0.1:$p; "; done
    sed -e "s|__UPSTREAMS__|$ups|" -e "s|__LISTEN__|127.0.0.1:$listen|" \
        -e "s|__WORKERS__|$(nproc)|" -e "s|__PREFIX__|$prefix|g" "$template" >"$prefix/nginx.conf"
    start_bg "nginx-$name" "$NGINX" -c "$prefix/nginx.conf" -p "$prefix" -e "$prefix/error.log"
    local pid=$LAST_PID
    local i
    for i in $(seq 50); do port_free "$listen" || break; sleep 0.1; done
    port_free "$listen" && die "nginx $name did not listen on $listen (see $prefix/error.log)"
    LAST_PID=$pid
}

# ---------------------------------------------------------------- readings

# cpu_ticks PID...: utime+stime of all threads (dead ones included), in clock ticks.
cpu_ticks() {
    local t=0 p v
    for p in "$@"; do
        v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

# with_children PID...: the pids and their direct children (nginx master + workers).
with_children() {
    local p
    for p in "$@"; do
        echo "$p"
        pgrep -P "$p" || true
    done
}

reset_hwm() {
    local p
    for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done
}

# peak_rss_mb PID...: the largest VmHWM (peak RSS since the last reset_hwm) among PIDs, in MB.
peak_rss_mb() {
    local p kb max=0
    for p in "$@"; do
        kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        ((${kb:-0} > max)) && max=$kb
    done
    awk -v k="$max" 'BEGIN {printf "%.1f", k / 1024}'
}

rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

# metric_sum NAME MATCH PORT...: the sum over replicas of the samples of metric NAME whose line
# contains every comma-separated label=value of MATCH (e.g. 'key="a",outcome="b"').
metric_sum() {
    local name=$1 match=$2 p
    shift 2
    for p in "$@"; do curl -fsS "http://127.0.0.1:$p/metrics"; done |
        awk -v name="$name" -v match_="$match" '
            index($0, name "{") == 1 {
                n = split(match_, want, ",")
                for (i = 1; i <= n; i++) if (!index($0, want[i])) next
                s += $NF
            }
            END { print s + 0 }'
}

# redis_reading: "client_cmds script_cmds cpu_seconds". Client commands are the ones a client
# sends (FCALL, EVALSHA, EVAL, PING, SCRIPT, FUNCTION, HELLO, CLIENT ...): round trips. Script commands are the
# redis.call()s inside scripts, which Redis 7 counts under their own names. The INFO and CONFIG
# calls of this script are neither.
redis_reading() {
    local cpu
    cpu=$(rcli info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}')
    rcli info commandstats | tr -d '\r' | awk -F'[:,=]' -v cpu="$cpu" '
        /^cmdstat_/ {
            name = substr($1, 9)
            if (name ~ /^(info|config)/) next
            if (name ~ /^(eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro|ping|hello|select|multi|exec|auth|readonly|script\|.*|function\|.*|client\|.*|cluster\|.*|command.*)$/)
                top += $3
            else
                inner += $3
        }
        END { printf "%d %d %s\n", top, inner, cpu }'
}

mock_total() { curl -fsS "http://127.0.0.1:$1/_mock/stats" | jq '.total'; }

# degraded_entries: how often any replica has switched to degraded mode so far (its warning).
degraded_entries() { cat "$OUT"/logs/keygate-*.log 2>/dev/null | grep -c 'degraded mode, serving' || true; }

# degraded_now PORT...: how many of these replicas say they are degraded right now.
degraded_now() {
    local p n=0
    for p in "$@"; do
        curl -fsS "http://127.0.0.1:$p/readyz" 2>/dev/null | grep -q degraded && n=$((n + 1))
    done
    echo "$n"
}

# ---------------------------------------------------------------- one load point

REQ_BODY='{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"Say hello in five words."}]}'
# shellcheck disable=SC2034 # written by run.sh
TSV_HEADER="phase	mode	target	point	pinned	secs	requests	ok	errors	rps	p50_ms	p99_ms	p999_ms	kg_cpu_us	kg_peak_mb	redis_cpu_us	redis_rt	redis_inner	mock_cpu_us	nginx_cpu_us	oha_cpu_us	upstream_per_req	degraded_switches	degraded_at_end"

# run_point PHASE MODE TARGET POINT URL: one measurement, one row of results.tsv.
# POINT: c1 | c64 | rN (fixed rate N req/s, latency-corrected) | wN (N s warm-up at c=64, no row).
# Reads SUT_KG (keygate pids), SUT_PORTS (their ports), SUT_NGX (nginx master pids), MOCK_PORT, MOCK_PID, POOL_HEADER.
run_point() {
    local phase=$1 mode=$2 target=$3 pt=$4 url=$5
    local -a load
    local secs=${SECS:?}
    case $pt in
    c*) load=(-c "${pt#c}" -z "${secs}s") ;;
    r*) load=(-c "$RATE_CONC" -q "${pt#r}" -z "${secs}s" --latency-correction) ;;
    w*) secs=${pt#w}; load=(-c 64 -z "${secs}s") ;;
    *) die "unknown point $pt" ;;
    esac
    local -a req=(-m POST -T application/json -d "$REQ_BODY"
        -H "Authorization: Bearer $TOKEN" -H "X-Keygate-Pool: $POOL_HEADER")
    local tag="$phase.$mode.$target.$pt"
    local -a ngx=()
    if ((${#SUT_NGX[@]})); then mapfile -t ngx < <(with_children "${SUT_NGX[@]}"); fi

    reset_hwm ${SUT_KG[@]+"${SUT_KG[@]}"}
    local kg0 ngx0 mock0 up0 r0
    kg0=$(cpu_ticks ${SUT_KG[@]+"${SUT_KG[@]}"})
    ngx0=$(cpu_ticks ${ngx[@]+"${ngx[@]}"})
    mock0=$(cpu_ticks "$MOCK_PID")
    up0=$(mock_total "$MOCK_PORT")
    r0=$(redis_reading)
    local dg0
    dg0=$(degraded_entries)
    local TIMEFORMAT='%U %S'
    { time $LOAD_PIN "$OHA" --no-tui --output-format json -w "${load[@]}" "${req[@]}" "$url" \
        >"$OUT/oha/$tag.json" 2>"$OUT/oha/$tag.err"; } 2>"$OUT/oha/$tag.time" ||
        die "oha failed for $tag: $(head -c 400 "$OUT/oha/$tag.err")"
    [[ $pt == w* ]] && return 0
    local kg1 ngx1 mock1 up1 r1 peak
    kg1=$(cpu_ticks ${SUT_KG[@]+"${SUT_KG[@]}"})
    ngx1=$(cpu_ticks ${ngx[@]+"${ngx[@]}"})
    mock1=$(cpu_ticks "$MOCK_PID")
    up1=$(mock_total "$MOCK_PORT")
    r1=$(redis_reading)
    local dg1 dgn
    dg1=$(degraded_entries)
    dgn=$(degraded_now ${SUT_PORTS[@]+"${SUT_PORTS[@]}"})
    peak=$( ((${#SUT_KG[@]})) && peak_rss_mb "${SUT_KG[@]}" || echo "-")

    # oha's JSON: summary.requestsPerSec, latencyPercentiles (seconds), statusCodeDistribution,
    # errorDistribution (connection-level errors by message).
    local stats
    stats=$(jq -r '
        ([.statusCodeDistribution | to_entries[] | select(.key | startswith("2")) | .value] | add // 0) as $ok
        | ([.statusCodeDistribution | to_entries[] | .value] | add // 0) as $answered
        | ([.errorDistribution | to_entries[] | .value] | add // 0) as $err
        | [$answered + $err, $ok, ($answered - $ok + $err), .summary.requestsPerSec,
           .latencyPercentiles.p50 * 1000, .latencyPercentiles.p99 * 1000,
           .latencyPercentiles["p99.9"] * 1000] | @tsv' "$OUT/oha/$tag.json")
    local oha_cpu
    oha_cpu=$(awk '{print $1 + $2}' "$OUT/oha/$tag.time")
    local tck
    tck=$(getconf CLK_TCK)
    awk -F'\t' -v OFS='\t' -v phase="$phase" -v mode="$mode" -v target="$target" -v pt="$pt" \
        -v pinned="${PINNED:-no}" -v secs="$secs" -v tck="$tck" \
        -v kg=$((kg1 - kg0)) -v nkg="${#SUT_KG[@]}" -v ngxt=$((ngx1 - ngx0)) -v nngx="${#ngx[@]}" \
        -v mock=$((mock1 - mock0)) -v up=$((up1 - up0)) -v peak="$peak" -v oha="$oha_cpu" \
        -v r0="$r0" -v r1="$r1" -v dg=$((dg1 - dg0)) -v dgn="$dgn" '{
            n = $1; ok = $2; err = $3
            split(r0, a, " "); split(r1, b, " ")
            per = (n > 0) ? 1e6 / n : 0
            kgus = nkg ? sprintf("%.1f", kg / tck * per) : "-"
            ngus = nngx ? sprintf("%.1f", ngxt / tck * per) : "-"
            rt = (ok > 0) ? sprintf("%.2f", (b[1] - a[1]) / ok) : "-"
            inner = (ok > 0) ? sprintf("%.1f", (b[2] - a[2]) / ok) : "-"
            print phase, mode, target, pt, pinned, secs, n, ok, err, sprintf("%.0f", $4),
                sprintf("%.3f", $5), sprintf("%.3f", $6), sprintf("%.3f", $7), kgus, peak,
                sprintf("%.1f", (b[3] - a[3]) * per), rt, inner,
                sprintf("%.1f", mock / tck * per), ngus, sprintf("%.1f", oha * per),
                sprintf("%.3f", (n > 0) ? up / n : 0), dg, dgn
        }' <<<"$stats" >>"$OUT/results.tsv"
    log "$(tail -1 "$OUT/results.tsv" | cut -f1-4,7,9-13,14,16,17,23,24)"
}

# ---------------------------------------------------------------- callgrind

# callgrind_redis OUT NAME PORT CONFIG KEYGATE META: a redis-server on PORT under callgrind
# (output OUT/callgrind.NAME) holding the pool of CONFIG, synced into it by one start of KEYGATE
# (which loads the script library too, then is stopped) once key META exists. Sets
# CALLGRIND_REDIS_PID (also in PIDS, for cleanup); bench/budget_replay.sh, bench/script_cost.sh.
callgrind_redis() {
    local out=$1 name=$2 port=$3 config=$4 keygate=$5 meta=$6 kpid
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$name" \
        redis-server --port "$port" --save '' --appendonly no >"$out/redis.$name.log" 2>&1 &
    CALLGRIND_REDIS_PID=$!
    PIDS+=("$CALLGRIND_REDIS_PID")
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.2; done
    RUST_LOG=warn "$keygate" serve --config "$config" >"$out/keygate.$name.log" 2>&1 &
    kpid=$!
    until [[ $(redis-cli -p "$port" exists "$meta") == 1 ]]; do sleep 0.2; done
    kill "$kpid"
    wait "$kpid" 2>/dev/null || true
}

# callgrind_total FILE: the instructions a callgrind output file counted.
callgrind_total() {
    callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}
