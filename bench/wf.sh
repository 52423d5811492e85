#!/usr/bin/env bash
# Workflow instances on a three-node cluster on this machine: transitions
# per second, event-to-state latency, memory per waiting instance, timer
# lateness with 100 000 waiting timers, recovery of 10 000 instances after a
# leader kill. Prints a Markdown table. Arguments go to wf-bench (see
# --help, bench/README.md).
#
#   bench/wf.sh                              # the full run (about 8 minutes)
#   bench/wf.sh --runs throughput,latency    # some runs only
#   bench/wf.sh --timers 10000 --timer-wait-secs 30 --recovering 1000   # a quicker one
#   SHOAL_BIN=/path/to/shoal bench/wf.sh     # skip building shoal
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
bench_build wf-bench
echo "wf.sh: $(rustc --version)" >&2
exec "$CARGO_TARGET_DIR/release/wf-bench" "$@"
