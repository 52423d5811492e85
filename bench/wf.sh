#!/usr/bin/env bash
# Workflow instances on a three-node cluster on this machine: transitions
# per second, event-to-state latency, memory per waiting instance. Prints a
# Markdown table. Arguments go to wf-bench (see --help, bench/README.md).
#
#   bench/wf.sh                              # the full run (about a minute)
#   bench/wf.sh --instances 500 --sleeping 1000   # a quicker one
#   SHOAL_BIN=/path/to/shoal bench/wf.sh     # skip building shoal
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
bench_build wf-bench
echo "wf.sh: $(rustc --version)" >&2
exec "$CARGO_TARGET_DIR/release/wf-bench" "$@"
