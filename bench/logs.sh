#!/usr/bin/env bash
# Log ingest throughput and search latency of one node, with grep and rg over
# the same raw file as the brute-force bound. Arguments go to log-bench (see
# --help), e.g. `bench/logs.sh --records 10000000`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
command -v rg >/dev/null 2>&1 || apt_install ripgrep
./scripts/setup >/dev/null
bench_build log-bench
exec "$CARGO_TARGET_DIR/release/log-bench" "$@"
