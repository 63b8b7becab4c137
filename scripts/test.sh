#!/usr/bin/env bash
# Runs every test of keygate: formatting, lints, unit tests, the integration suite against
# real redis-server / nginx / promtool processes the tests start themselves, and
# scripts/newcomer.sh (README.md's first commands, run and checked).
# Installs the Debian packages the tests need when they are missing (root or sudo required then).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v promtool >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v curl >/dev/null || missing+=(curl)
command -v ss >/dev/null || missing+=(iproute2)
command -v jq >/dev/null || missing+=(jq)
command -v npm >/dev/null || missing+=(npm)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # policy-rc.d keeps the packages' own services (redis, nginx, prometheus) from starting.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  $sudo rm -f /usr/sbin/policy-rc.d
fi

scripts/check-imports.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --lib --bins --tests
# README.md's quick start, "Use Redis" and "Operate" commands, run as written on the debug
# binary the tests above built.
scripts/newcomer.sh

# The official OpenAI SDKs (pinned), for the ignored tests of what they do with keygate's own
# answers (README.md, "Errors keygate answers itself"): target/sdk, outside the Cargo build.
[ -x target/sdk/venv/bin/python ] || python3 -m venv target/sdk/venv
target/sdk/venv/bin/pip install -q openai==3.63.0
npm install --silent --no-audit --no-fund --prefix target/sdk/node openai@6.49.0 >/dev/null
cargo test --locked --test it honest::sdks -- --ignored
