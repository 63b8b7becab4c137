#!/usr/bin/env bash
# bench/script_cost.sh [KEYGATE] [CALLS]: Redis's instructions per script call, for the select
# call of one request (what a replica sends at c=1) and of 12 (a coalesced call at c=64), run
# as keygate runs it (FCALL of the library) and as on a Redis without Functions (EVALSHA of
# lua/lib.lua, begin(KEYS), lua/select.lua and its select_call), plus PING and lib.lua alone
# for scale. A
# redis-server under callgrind holds a 64-key pool synced by KEYGATE (default
# target/release/keygate), without budgets (BUDGETS=1: the budgets phase's limits);
# redis-benchmark -c 1 sends each call CALLS times (default 500) between callgrind_control -z
# and -d. The count does not move with the machine's load (BENCHMARKS.md, "Redis Functions,
# not EVALSHA"). Needs valgrind, redis-server, redis-benchmark; about a minute.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEYGATE=${1:-$ROOT/target/release/keygate}
N=${2:-500}
OUT=$(mktemp -d /tmp/script-cost.XXXXXX)
RP=19744 MP=19745 KP=19746 # MP: the pool's base_url, never called
BENCH_DIR=$ROOT/bench
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh" # gen_b64_config, callgrind_redis, callgrind_total, cleanup, die
trap cleanup EXIT

limits=""
[[ ${BUDGETS:-0} != 1 ]] || limits=$NOT_BINDING_LIMITS
gen_b64_config "$OUT/keygate.toml" $KP $RP $MP kgcost "$limits"
callgrind_redis "$OUT" calls $RP "$OUT/keygate.toml" "$KEYGATE" 'kgcost:{b64}:meta'
rpid=$CALLGRIND_REDIS_PID

lib=$(cat "$ROOT/lua/lib.lua")
sel_sha=$(redis-cli -p $RP script load "$lib
begin(KEYS)
$(cat "$ROOT/lua/select.lua")
return select_call(KEYS, ARGV)")
lib_sha=$(redis-cli -p $RP script load "$lib
begin(KEYS)
return 1")
sel_fn=$(redis-cli -p $RP function list libraryname 'keygate_*' | grep -o 'kg_[0-9a-f]*_select' | head -1)
[[ -n $sel_fn ]] || die "the replica loaded no keygate library"
one=(0 12345 bucket 5 1051 0)
twelve=(0)
for i in $(seq 12); do twelve+=($((i * 750000000000003)) bucket $((i * 7)) 1051 0); done

# cost LABEL COMMAND...: instructions per call of COMMAND. A select call must answer its
# requests' lines ("key ..."): the EVALSHA form is built from the checkout's lua/, and a
# checkout whose scripts do not match KEYGATE's pool (its meta, its layout) would otherwise
# measure a short answer ("nopool", an error) instead of the call.
cost() {
    local label=$1 dump ir reply
    shift
    if [[ $label == select* ]]; then
        reply=$(redis-cli -p $RP "$@" 2>&1 | head -1)
        [[ $reply == key* ]] ||
            die "$label answered \"$reply\", not a key: do lua/ and KEYGATE match?"
    fi
    redis-benchmark -p $RP -c 1 -n 20 -q "$@" >/dev/null 2>&1 # warm-up
    callgrind_control -z "$rpid" >/dev/null 2>&1
    redis-benchmark -p $RP -c 1 -n "$N" -q "$@" >/dev/null 2>&1
    callgrind_control -d "$rpid" >/dev/null 2>&1
    dump=$(ls -t "$OUT"/callgrind.calls.* | head -1)
    ir=$(callgrind_total "$dump")
    printf '%-28s %9d instructions per call\n' "$label" $((ir / N))
}
cost "PING" ping
cost "lib.lua alone (EVALSHA)" evalsha "$lib_sha" 1 'kgcost:{b64}'
cost "select x1, EVALSHA" evalsha "$sel_sha" 1 'kgcost:{b64}' "${one[@]}"
cost "select x1, FCALL" fcall "$sel_fn" 1 'kgcost:{b64}' "${one[@]}"
cost "select x12, EVALSHA" evalsha "$sel_sha" 1 'kgcost:{b64}' "${twelve[@]}"
cost "select x12, FCALL" fcall "$sel_fn" 1 'kgcost:{b64}' "${twelve[@]}"
echo "callgrind files: $OUT"
