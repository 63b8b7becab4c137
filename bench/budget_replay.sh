#!/usr/bin/env bash
# bench/budget_replay.sh [KEYGATE] [ITERATIONS]: Redis's instructions per request for a pool of
# 64 keys with budgets that do not bind (the budgets phase's limits), and for the same pool
# without budgets: a redis-server under callgrind, the pool synced by KEYGATE (default
# target/release/keygate), then bench/budget_replay.py replays ITERATIONS (default 100) select
# calls of 12 requests and a success batch every 10 calls. The count does not move with the
# machine's load, so two versions of lua/ compare within about 1% (BENCHMARKS.md, "Budgets: the
# select call's Redis work"). The scripts run as the replica loaded them (Functions, FCALL);
# REPLAY_EVALSHA=1 runs them as EVALSHA scripts instead, as on a Redis without Functions;
# REPLAY_LIMITS='rpm = 60600' (\n between lines) replaces the pool's limits, and
# REPLAY_SELECTS_ONLY=1 sends no success batch (the select calls' share alone), and
# REPLAY_HINTS=1 has every batch carry one provider hint per key, what the bench's mock announces
# (the replica drops such hints: BENCHMARKS.md, "Hints that change nothing"), and
# REPLAY_CALLS_PER_MS=N passes the calls a virtual clock that moves 1 ms every N select calls
# (about 2 at c=64), so the share of draws that land on a key spent less than its interval ago
# is the load's, not set by how slowly Redis runs under callgrind.
# Needs valgrind, redis-server and python3; about 2 minutes.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEYGATE=${1:-$ROOT/target/release/keygate}
ITERS=${2:-100}
OUT=$(mktemp -d /tmp/budget-replay.XXXXXX)
RP=19741 MP=19742 KP=19743 # MP: the pool's base_url, never called
BENCH_DIR=$ROOT/bench
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh" # gen_b64_config, callgrind_redis, callgrind_total, cleanup
trap cleanup EXIT

gen_b64_config "$OUT/keygate.toml" $KP $RP $MP kgreplay "${REPLAY_LIMITS:-$NOT_BINDING_LIMITS}"

for mode in on off; do
    callgrind_redis "$OUT" "$mode" $RP "$OUT/keygate.toml" "$KEYGATE" 'kgreplay:{b64}:meta'
    rpid=$CALLGRIND_REDIS_PID
    arg=""
    [[ $mode == off ]] && arg=off
    [[ ${REPLAY_EVALSHA:-0} == 1 ]] && arg="$arg evalsha"
    [[ ${REPLAY_SELECTS_ONLY:-0} == 1 ]] && arg="$arg selects"
    [[ ${REPLAY_HINTS:-0} == 1 ]] && arg="$arg hints"
    [[ -n ${REPLAY_CALLS_PER_MS:-} ]] && arg="$arg perms=$REPLAY_CALLS_PER_MS"
    # shellcheck disable=SC2086 # $arg: zero, one or two words
    python3 "$ROOT/bench/budget_replay.py" $RP kgreplay b64 20 $arg >/dev/null # warm-up
    callgrind_control -z "$rpid" >/dev/null
    # shellcheck disable=SC2086
    python3 "$ROOT/bench/budget_replay.py" $RP kgreplay b64 "$ITERS" $arg >"$OUT/replay.$mode.txt"
    redis-cli -p $RP shutdown nosave >/dev/null 2>&1 || true
    wait "$rpid" || true
    ir=$(callgrind_total "$OUT/callgrind.$mode")
    echo "budgets $mode: $(( ir / (ITERS * 12) )) Redis instructions per request ($(cat "$OUT/replay.$mode.txt"))"
done
echo "callgrind files: $OUT"
