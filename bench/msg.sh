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
if [ ! -x "$nats_bin" ]; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq nats-server
fi
# Ten subscriber connections per fan-out run, plus the servers' own.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
if [ -z "${SHOAL_BIN:-}" ]; then
    echo "msg.sh: building shoal (release)" >&2
    cargo build -q --release -p shoal
    export SHOAL_BIN="$CARGO_TARGET_DIR/release/shoal"
fi
cargo build -q --release -p shoal-bench --bin msg-bench
echo "msg.sh: $(rustc --version)" >&2
exec "$CARGO_TARGET_DIR/release/msg-bench" --nats-bin "$nats_bin" "$@"
