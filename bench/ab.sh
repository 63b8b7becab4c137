#!/usr/bin/env bash
# bench/ab.sh: side-by-side comparison of keygate binaries (an allocator, a commit before and
# after a change) in interleaved rounds, so drift of the machine hits every binary alike.
#
#   bench/ab.sh NAME=path/to/keygate NAME=path/to/keygate ...
#
# Starts its own redis-server and one mock upstream (no delay). Each round, for each binary in
# turn: a fresh replica on the embedded store and one on the Redis store (a FLUSHALL'd Redis),
# 1 s warm-up at c=64, then the AB_POINTS points (BENCH_SECS each, default 3); each replica is
# stopped after its points. Rows go to results.tsv (the columns of bench/run.sh, target =
# "NAME-embedded" / "NAME-redis").
# Environment: AB_ROUNDS=3, AB_KEYS=4 (keys in the pool; a list such as 4,10000 alternates
# the sizes within each round, target NAME-STORE-kN), AB_STORES=embedded,redis,
# AB_POINTS=c64,c1 (bench/lib.sh run_point names: cN, rN fixed rate), AB_LIMITS (the pool's
# `[pools.limits]`, README "Budgets"; `not-binding` for bench/lib.sh NOT_BINDING_LIMITS, the
# budgets phase's; default none), BENCH_SECS=3,
# BENCH_LOG (keygate's RUST_LOG), OHA, BENCH_OUT, BENCH_PORT_BASE.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
SECS=${BENCH_SECS:-3}
ROUNDS=${AB_ROUNDS:-3}
NKEYS=${AB_KEYS:-4}
STORES=${AB_STORES:-embedded,redis}
POINTS=${AB_POINTS:-c64,c1}
LIMITS=${AB_LIMITS:-}
KG_LOG=${BENCH_LOG:-warn}
OUT=${BENCH_OUT:-$BENCH_DIR/results/ab-$(date -u +%Y%m%dT%H%M%SZ)}

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
[[ $LIMITS != not-binding ]] || LIMITS=$NOT_BINDING_LIMITS
trap cleanup EXIT
trap 'exit 130' INT TERM

(($# >= 1)) || die "usage: bench/ab.sh NAME=BINARY [NAME=BINARY ...]"
find_oha
NAMES=()
BINS=()
for arg in "$@"; do
    [[ $arg == *=* ]] || die "$arg: expected NAME=BINARY"
    NAMES+=("${arg%%=*}")
    BINS+=("$(cd "$(dirname "${arg#*=}")" && pwd)/$(basename "${arg#*=}")")
    [[ -x ${BINS[-1]} ]] || die "${arg#*=} is not an executable"
done
mkdir -p "$OUT/logs" "$OUT/oha"
OUT=$(cd "$OUT" && pwd) # absolute: nginx resolves its paths against its own prefix
KEYGATE=${BINS[0]}
{
    echo "date_utc: $(date -u +%FT%TZ)"
    echo "nproc: $(nproc); kernel: $(uname -r); $(redis-server --version | cut -d' ' -f1-3)"
    for i in "${!NAMES[@]}"; do echo "${NAMES[$i]}: ${BINS[$i]} ($(sha256sum "${BINS[$i]}" | cut -c1-12))"; done
    echo "rounds: $ROUNDS; keys: $NKEYS; secs: $SECS; stores: $STORES; points: $POINTS"
    echo "limits: ${LIMITS:-none}" | tr '\n' ' '
    echo
} >"$OUT/machine.txt"
log "results in $OUT"

start_redis

alloc_port
MOCK_PORT=$PORT
start_bg mock "$KEYGATE" mock-upstream --listen "127.0.0.1:$MOCK_PORT" --delay-ms 0
MOCK_PID=$LAST_PID
wait_http "http://127.0.0.1:$MOCK_PORT/_mock/stats"
POOL_HEADER=fast

printf '%s\n' "$TSV_HEADER" >"$OUT/results.tsv"
for round in $(seq "$ROUNDS"); do
    for i in "${!NAMES[@]}"; do
        KEYGATE=${BINS[$i]}
        for nkeys in ${NKEYS//,/ }; do
            # Several pool sizes: each gets its own target name (NAME-STORE-kN).
            suffix=""
            [[ $NKEYS == *,* ]] && suffix="-k$nkeys"
            for store in ${STORES//,/ }; do
                redis=""
                [[ $store == redis ]] && redis="redis://127.0.0.1:$REDIS_PORT/0"
                rcli flushall >/dev/null
                alloc_port
                config="$OUT/${NAMES[$i]}-$store.toml"
                gen_config "$config" "127.0.0.1:$PORT" "$redis" kgab '"fast"'
                gen_pool fast "http://127.0.0.1:$MOCK_PORT/v1" "$nkeys" >>"$config"
                [[ -z $LIMITS ]] || printf '\n[pools.limits]\n%s\n' "$LIMITS" >>"$config"
                start_keygate "keygate-${NAMES[$i]}-$store$suffix-r$round" "$config" "$PORT"
                SUT_KG=("$LAST_PID")
                SUT_PORTS=("$PORT")
                url="http://127.0.0.1:$PORT/v1/chat/completions"
                run_point ab fast "${NAMES[$i]}-$store$suffix" w1 "$url"
                for pt in ${POINTS//,/ }; do
                    run_point ab fast "${NAMES[$i]}-$store$suffix" "$pt" "$url"
                done
                stop_pid "${SUT_KG[0]}"
            done
        done
    done
done

# Medians per target and point.
{
    printf '| target | point | rounds | req/s (median) | p50 ms | p99 ms | keygate CPU µs/req | peak RSS MB | Redis CPU µs/req | Redis RT/req |\n'
    printf '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n'
    awk -F'\t' 'NR > 1 { k = $3 "\t" $4; rows[k] = rows[k] "\n" $0; n[k]++; order[k] = order[k] ? order[k] : NR }
        END { for (k in n) print order[k] "\t" k }' "$OUT/results.tsv" | sort -n | cut -f2- |
        while IFS=$'\t' read -r target point; do
            awk -F'\t' -v t="$target" -v p="$point" '
                function med(a, n,   i, j, x) {
                    for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
                    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
                }
                $3 == t && $4 == p { n++; rps[n] = $10; p50[n] = $11; p99[n] = $12; cpu[n] = $14; rss[n] = $15; rc[n] = $16; rt[n] = $17 }
                END { printf "| %s | %s | %d | %.0f | %.3f | %.3f | %.1f | %.1f | %s | %s |\n", t, p, n,
                        med(rps, n), med(p50, n), med(p99, n), med(cpu, n), med(rss, n),
                        (rt[1] == "-") ? "-" : sprintf("%.1f", med(rc, n)), (rt[1] == "-") ? "-" : sprintf("%.2f", med(rt, n)) }' "$OUT/results.tsv"
        done
} >"$OUT/summary.md"
cat "$OUT/summary.md"
