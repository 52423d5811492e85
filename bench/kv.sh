#!/usr/bin/env bash
# Three-node Shoal vs three-node etcd: puts/s, linearizable gets/s, p50/p99,
# and leader-kill failover time. Arguments go to kv-bench (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
command -v etcd >/dev/null 2>&1 || apt_install etcd-server
./scripts/setup >/dev/null
bench_build kv-bench
exec "$CARGO_TARGET_DIR/release/kv-bench" --etcd-bin "$(command -v etcd)" "$@"
