#!/usr/bin/env bash
# Log ingest throughput and search latency of one node, with grep and rg over
# the same raw file as the brute-force bound. Arguments go to log-bench (see
# --help), e.g. `bench/logs.sh --records 10000000`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if ! command -v rg >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq ripgrep
fi
./scripts/setup >/dev/null
if [ -z "${SHOAL_BIN:-}" ]; then
    echo "logs.sh: building shoal (release)" >&2
    cargo build -q --release -p shoal
    export SHOAL_BIN="$CARGO_TARGET_DIR/release/shoal"
fi
cargo build -q --release -p shoal-bench --bin log-bench
exec "$CARGO_TARGET_DIR/release/log-bench" "$@"
