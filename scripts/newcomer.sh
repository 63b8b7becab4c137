#!/usr/bin/env bash
# Follows README.md's first steps as a newcomer would, and checks every answer, so the README
# cannot drift from what keygate does. The commands are not copied here: each fenced block
# that follows a `<!-- newcomer:run NAME -->` line in README.md is extracted and run.
#
#   serve        the quick start gateway (embedded store, bundled mock)   → /readyz answers 200
#   chat         the curl                                                 → 200, a key header, a chat.completion
#   redis        redis-server on 6380                                     → PONG
#   serve-redis  the gateway again, on that Redis                         → ready; chat again → 200
#   redis-cli    the redis-cli reads of pool demo                         → demo-001 active, weight 3
#   serve-admin  the gateway with an admin token                          → ready
#   operate      the CLI commands                                         → each prints its change
#
# Substitutions, the only places this script does not run the README literally:
#   - `cargo install --path . --locked` (a release build of several minutes) is replaced by
#     putting the debug binary that `cargo run` already built first on PATH;
#   - when a port of the README (8080, 9000, 6380) is busy on this machine, a free one is used
#     instead, in the commands and in a copy of examples/quickstart.toml (printed when it happens);
#   - commands the README runs "in another shell" run in the background, and the script stops
#     them (ctrl-c in the README) by signalling their process group.
# Needs curl, jq, redis-server and redis-cli (scripts/test.sh installs them). Takes well under a
# minute once the debug build exists; `cargo run` builds it first otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in curl jq redis-server redis-cli cargo; do
  command -v "$tool" >/dev/null || { echo "newcomer: $tool is missing" >&2; exit 2; }
done
# A fresh shell: no keygate variables from the caller's environment.
for variable in $(compgen -e | grep '^KEYGATE_' || true); do unset "$variable"; done

work=$(mktemp -d)
background=()
cleanup() {
  for pid in "${background[@]}"; do stop "$pid"; done
  rm -rf "$work"
}
trap cleanup EXIT

say() { echo "newcomer: $*"; }
fail() {
  echo "newcomer: FAILED: $*" >&2
  for log in "$work"/*.log; do
    [ -e "$log" ] && { echo "--- $log" >&2; tail -n 30 "$log" >&2; }
  done
  exit 1
}

# ---- the README's marked blocks -----------------------------------------------------------
awk -v dir="$work" '
  /^<!-- newcomer:run [a-z-]+ -->$/ { name = $3; wanted = 1; next }
  wanted && /^```/ {
    if (inside) { inside = 0; wanted = 0; close(file) } else { inside = 1; file = dir "/" name ".sh" }
    next
  }
  inside { print > file }
' README.md
for block in serve chat redis serve-redis redis-cli serve-admin operate; do
  [ -s "$work/$block.sh" ] || fail "README.md has no <!-- newcomer:run $block --> block"
done

# ---- ports: the README's, unless busy here ------------------------------------------------
busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 40000))
    busy "$port" || { echo "$port"; return; }
  done
}
gateway_port=8080 mock_port=9000 redis_port=6380
busy 8080 && gateway_port=$(free_port)
busy 9000 && mock_port=$(free_port)
busy 6380 && redis_port=$(free_port)
config=examples/quickstart.toml
if [ "$gateway_port$mock_port$redis_port" != "808090006380" ]; then
  say "README ports busy here; using gateway :$gateway_port, mock :$mock_port, redis :$redis_port"
  sed -e "s/:8080\"/:$gateway_port\"/" -e "s/:9000\//:$mock_port\//" "$config" >"$work/quickstart.toml"
  for script in "$work"/*.sh; do
    sed -i -e "s/:8080/:$gateway_port/g" -e "s/:9000/:$mock_port/g" -e "s/6380/$redis_port/g" \
      -e "s#$config#$work/quickstart.toml#g" "$script"
  done
fi
base="http://127.0.0.1:$gateway_port"

# ---- running blocks -----------------------------------------------------------------------
# Starts a block in the background in its own process group, whose id goes to $started.
start() {
  setsid bash "$work/$1.sh" >"$work/$1.log" 2>&1 &
  started=$!
  background+=("$started")
}

# Stops a background block (its whole process group): SIGTERM, then SIGKILL after 15 s.
stop() {
  local pid=$1 waited=0
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  while kill -0 -- "-$pid" 2>/dev/null && [ $waited -lt 150 ]; do sleep 0.1; waited=$((waited + 1)); done
  kill -KILL -- "-$pid" 2>/dev/null || true
}

# Waits (up to 300 s: `cargo run` may build first) until the gateway answers /readyz with 200.
wait_ready() {
  local name=$1 pid=$2 deadline=$((SECONDS + 300))
  until curl -sf -o /dev/null "$base/readyz"; do
    kill -0 "$pid" 2>/dev/null || fail "$name exited before it was ready"
    [ $SECONDS -lt $deadline ] || fail "$name not ready within 300 s"
    sleep 0.2
  done
}

check_chat() {
  bash "$work/chat.sh" >"$work/chat.out" || fail "the chat curl failed"
  local status key body
  status=$(head -n 1 "$work/chat.out" | tr -d '\r')
  [[ $status == "HTTP/1.1 200"* ]] || fail "chat: expected 200, got '$status'"
  key=$(tr -d '\r' <"$work/chat.out" | sed -n 's/^x-keygate-key: //Ip' | head -n 1)
  [[ $key =~ ^demo-00[123]$ ]] || fail "chat: x-keygate-key '$key' is not a key of pool demo"
  body=$(tr -d '\r' <"$work/chat.out" | sed '1,/^$/d')
  jq -e '.object == "chat.completion"
         and .choices[0].message.role == "assistant"
         and .choices[0].message.content == "Hello from the mock upstream."
         and .usage.total_tokens > 0' <<<"$body" >/dev/null ||
    fail "chat: unexpected body: $body"
  say "chat: 200, served by $key, a chat.completion"
}

# ---- The two commands ---------------------------------------------------------------------
start serve
gateway=$started
wait_ready serve "$gateway"
say "serve: ready on :$gateway_port"
check_chat
stop "$gateway"

# ---- Use Redis ----------------------------------------------------------------------------
start redis
deadline=$((SECONDS + 30))
until [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ]; do
  [ $SECONDS -lt $deadline ] || fail "redis-server did not answer PING"
  sleep 0.1
done
say "redis: PONG on :$redis_port"
start serve-redis
gateway=$started
wait_ready serve-redis "$gateway"
check_chat
bash "$work/redis-cli.sh" >"$work/redis-cli.out" || fail "redis-cli failed"
fields=$(tr '\n' ' ' <"$work/redis-cli.out")
field() { awk -v f="$1" 'prev == f { print; exit } { prev = $0 }' "$work/redis-cli.out"; }
[ "$(field status)" = active ] || fail "redis-cli: demo-001 is not active: $fields"
[ "$(field weight)" = 3 ] || fail "redis-cli: demo-001's weight is not 3: $fields"
meta=$(tail -n 2 "$work/redis-cli.out" | tr '\n' ' ')
[ "$meta" = "10 3 " ] || fail "redis-cli: the meta's canary_percent and cnt:active are '$meta', not '10 3'"
say "redis-cli: demo-001 active with weight 3; canary 10%, 3 keys active"
stop "$gateway"

# ---- Operate ------------------------------------------------------------------------------
start serve-admin
gateway=$started
wait_ready serve-admin "$gateway"
bin_dir="${CARGO_TARGET_DIR:-target}/debug"
sed -i "s#^cargo install --path \. --locked\$#export PATH=\"$(realpath "$bin_dir"):\$PATH\"#" "$work/operate.sh"
grep -q '^cargo install' "$work/operate.sh" && fail "operate: the cargo install line was not replaced"
bash -e "$work/operate.sh" >"$work/operate.out" 2>"$work/operate.log" || fail "operate: a CLI command failed"
for line in "pool demo " "demo-001 " "demo/demo-002: draining" "demo/demo-001: weight 5" \
  "demo: canary 25%" "demo/demo-002: active" "reloaded"; do
  grep -qF "$line" "$work/operate.out" || fail "operate: no '$line' in: $(cat "$work/operate.out")"
done
say "operate: keys list, drain, weight, canary, enable and reload answered"
stop "$gateway"
say "every README step answered as documented"
