#!/usr/bin/env bash
# Three-node Shoal vs three-node etcd: puts/s, linearizable gets/s, p50/p99,
# and leader-kill failover time. Arguments go to kv-bench (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if ! command -v etcd >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq etcd-server
fi
./scripts/setup >/dev/null
if [ -z "${SHOAL_BIN:-}" ]; then
    echo "kv.sh: building shoal (release)" >&2
    cargo build -q --release -p shoal
    export SHOAL_BIN="$CARGO_TARGET_DIR/release/shoal"
fi
cargo build -q --release -p shoal-bench --bin kv-bench
exec "$CARGO_TARGET_DIR/release/kv-bench" --etcd-bin "$(command -v etcd)" "$@"
