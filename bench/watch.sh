#!/usr/bin/env bash
# Watch scalability benchmark: N concurrent SSE watches on one node, W writes,
# write-to-event latency, plus a prefix fan-out. See bench/README.md.
#
#   bench/watch.sh                         # 10,000 watches, 2,000 writes, fanout 1,000
#   bench/watch.sh --watches 200 --writes 200 --fanout 50
#   SHOAL_BIN=/path/to/shoal bench/watch.sh   # skip building shoal
#   BENCH_PROFILE=debug bench/watch.sh        # debug build of the bench itself
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/shoal/target}"

# Every watch is one connection: the bench and the node each need more than
# N open files. Ask for 65536; if the hard limit is lower, take the hard limit
# (watch-bench checks that it is enough and says so if not).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
echo "watch.sh: open files limit $(ulimit -n), CARGO_TARGET_DIR=$CARGO_TARGET_DIR" >&2

cd "$root"
if [[ -z "${SHOAL_BIN:-}" ]]; then
  cargo build --release -p shoal
  export SHOAL_BIN="$CARGO_TARGET_DIR/release/shoal"
fi

profile="${BENCH_PROFILE:-release}"
case "$profile" in
  release) cargo build --release -p shoal-bench ;;
  debug) cargo build -p shoal-bench ;;
  *)
    echo "watch.sh: BENCH_PROFILE must be release or debug, not $profile" >&2
    exit 2
    ;;
esac

# watch-bench spawns the node (it inherits the open files limit), prints the
# figures to stdout and progress to stderr; exit 0 = OK, 1 = MISMATCH, 2 = error.
exec "$CARGO_TARGET_DIR/$profile/watch-bench" "$@"
