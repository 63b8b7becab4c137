#!/usr/bin/env bash
# bench/renew_cost.sh [KEYGATE] [LEASES]: Redis's instructions for one lease renewal of LEASES
# (default 8,000) requests in flight on a 64-key pool with max_concurrent (the budgets phase's
# limits): a redis-server under callgrind, the pool synced by KEYGATE (default
# target/release/keygate), the slots taken by select calls (bench/renew_cost.py), and then the
# one lua/settle.lua call that renews them all (what src/store/leases.rs sends every third of a
# lease) counted alone (BENCHMARKS.md, "Lease renewals"). Needs valgrind, redis-server and
# python3; about a minute.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEYGATE=${1:-$ROOT/target/release/keygate}
LEASES=${2:-8000}
OUT=$(mktemp -d /tmp/renew-cost.XXXXXX)
RP=19751 MP=19752 KP=19753 # MP: the pool's base_url, never called
BENCH_DIR=$ROOT/bench
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh" # gen_b64_config, callgrind_redis, callgrind_total, cleanup
trap cleanup EXIT

gen_b64_config "$OUT/keygate.toml" $KP $RP $MP kgrenew "$NOT_BINDING_LIMITS"

callgrind_redis "$OUT" renew $RP "$OUT/keygate.toml" "$KEYGATE" 'kgrenew:{b64}:meta'
rpid=$CALLGRIND_REDIS_PID
python3 "$ROOT/bench/renew_cost.py" $RP kgrenew b64 "$LEASES" "$OUT/leases" take
callgrind_control -z "$rpid" >/dev/null
python3 "$ROOT/bench/renew_cost.py" $RP kgrenew b64 "$LEASES" "$OUT/leases" renew
redis-cli -p $RP shutdown nosave >/dev/null 2>&1 || true
wait "$rpid" || true
ir=$(callgrind_total "$OUT/callgrind.renew")
echo "renewal of $LEASES leases: $ir Redis instructions, $(( ir / LEASES )) per lease"
echo "callgrind files: $OUT"
