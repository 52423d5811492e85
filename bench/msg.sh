#!/usr/bin/env bash
# Shoal messaging (WebSocket) against NATS core (Debian's nats-server): one
# publisher to one subscriber, fan-out to 10, latency at 1000 msg/s; on one
# server and across three (publisher on A, subscribers on B). Prints a
# Markdown table. Arguments go to msg-bench (see --help, bench/README.md).
#
#   bench/msg.sh                                   # the full run (about 3 minutes)
#   bench/msg.sh --topologies single --latency-secs 3   # a quicker one
#   SHOAL_BIN=/path/to/shoal bench/msg.sh          # skip building shoal
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
nats_bin="${NATS_BIN:-/usr/sbin/nats-server}"
[ -x "$nats_bin" ] || apt_install nats-server
# Ten subscriber connections per fan-out run, plus the servers' own.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
bench_build msg-bench
echo "msg.sh: $(rustc --version)" >&2
exec "$CARGO_TARGET_DIR/release/msg-bench" --nats-bin "$nats_bin" "$@"
