#!/usr/bin/env bash
# SQL sinks on one node on this machine: rows/s into PostgreSQL and SQLite
# (publishing included), the drain rate after a PostgreSQL outage, and the
# lag at a steady 5 000 messages/s; beside them, the same rows upserted
# straight into PostgreSQL. Prints Markdown tables. Arguments go to
# sink-bench (see --help, bench/README.md).
#
#   bench/sink.sh                                   # the full run (about 3 minutes)
#   bench/sink.sh --rows 20000 --lag-secs 5         # a quicker one
#   SHOAL_BIN=/path/to/shoal bench/sink.sh          # skip building shoal
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bench_build sink-bench
echo "sink.sh: $(rustc --version)" >&2
exec "$CARGO_TARGET_DIR/release/sink-bench" "$@"
