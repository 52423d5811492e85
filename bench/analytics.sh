#!/usr/bin/env bash
# Analytics over a dataset: Shoal's POST /v1/sql against DuckDB reading the
# same Parquet files, on one node and on three (bench/analytics.py). Needs
# the Python venv of ./scripts/setup (pyarrow, duckdb).
#
#   bench/analytics.sh                                  # 10 million orders over 365 days
#   bench/analytics.sh --rows 1000000 --runs 3          # a quicker one
#   SHOAL_BIN=/path/to/shoal bench/analytics.sh         # skip building shoal
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if [ -z "${SHOAL_BIN:-}" ]; then
    echo "analytics.sh: building shoal (release)" >&2
    cargo build -q --release -p shoal
    SHOAL_BIN="$CARGO_TARGET_DIR/release/shoal"
fi
exec "$HOME/.cache/shoal/pyenv/bin/python" bench/analytics.py "$SHOAL_BIN" "$@"
