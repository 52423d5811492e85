#!/usr/bin/env bash
# The order saga end to end: a `shoal dev` node of its own in a temporary
# directory (or the node at $SHOAL_ENDPOINT), the inventory, payment and
# shipping stand-ins (services.py), the saga (order.yaml), and one order per
# outcome. Prints each order's final state; exits 1 if any order did not end
# where it should.
#
#   examples/commerce/run.sh
#   SHOAL_ENDPOINT=http://127.0.0.1:7700 examples/commerce/run.sh
#
# The saga waits 30 minutes for a payment; the demo publishes it as version
# 1.0.0-demo with a window of $PAYMENT_WINDOW (default PT5S) so the
# timeout is seen in seconds. SHOAL_BIN names the binary (default: `shoal`
# on PATH, else the build of ./scripts/setup).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
window=${PAYMENT_WINDOW:-PT5S}
work=$(mktemp -d "${TMPDIR:-/tmp}/shoal-commerce.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

if [[ -z "${SHOAL_ENDPOINT:-}" ]]; then
    bin=${SHOAL_BIN:-}
    if [[ -z "$bin" ]]; then
        if command -v shoal >/dev/null; then
            bin=$(command -v shoal)
        else
            bin="${CARGO_TARGET_DIR:-$HOME/.cache/shoal/target}/debug/shoal"
        fi
    fi
    [[ -x "$bin" ]] || { echo "no shoal binary at $bin (set SHOAL_BIN, or run ./scripts/setup)" >&2; exit 2; }
    ports=($(python3 -c 'import socket
for _ in range(3):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'))
    SHOAL_ENDPOINT="http://127.0.0.1:${ports[0]}"
    "$bin" dev --data-dir "$work/data" --api "127.0.0.1:${ports[0]}" \
        --rpc "127.0.0.1:${ports[1]}" --gossip "127.0.0.1:${ports[2]}" >"$work/shoal.log" 2>&1 &
    pids+=($!)
    echo "shoal dev on $SHOAL_ENDPOINT (log: $work/shoal.log)"
    for _ in $(seq 100); do
        curl -sf "$SHOAL_ENDPOINT/ready" >/dev/null && break
        sleep 0.2
    done
fi
api=$SHOAL_ENDPOINT
curl -sf "$api/ready" >/dev/null || { echo "no ready node at $api" >&2; exit 2; }

python3 "$here/services.py" "$api" >"$work/services.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    groups=$(curl -sf "$api/v1/topics" | json '" ".join(sorted({l.get("group") or "" for lines in d.get("nodes", {}).values() for l in lines}))' || true)
    [[ "$groups" == *inventory*payment*shipping* ]] && break
    sleep 0.2
done
echo "services: inventory, payment, shipping subscribed"

sed -e "s/version: '1.0.0'/version: '1.0.0-demo'/" -e "s/after: PT30M/after: $window/" \
    "$here/order.yaml" >"$work/order.yaml"
curl -sf -X PUT "$api/v1/workflows/definitions/commerce/order/1.0.0-demo" \
    --data-binary @"$work/order.yaml" >/dev/null
echo "published commerce/order/1.0.0-demo (payment window $window)"
# Topics are at most once: wait until the node knows of the workflow intake.
for _ in $(seq 100); do
    curl -sf "$api/v1/topics" | grep -q '_shoal.workflows' && break
    sleep 0.1
done

run=$(date +%s)
declare -A expected=(
    [happy]="completed"
    [payment-fails]="cancelled: payment failed"
    [payment-timeout]="cancelled: payment timeout"
    [shipment-fails]="cancelled: shipment failed"
    [out-of-stock]="cancelled: out of stock"
)
ids=()
scenarios=()
n=0
for scenario in happy payment-fails payment-timeout shipment-fails out-of-stock; do
    n=$((n + 1))
    order="o$run-$n"
    body=$(printf '{"id": "%s", "version": "1.0.0-demo", "input": {"order": "%s", "customer": "c-%s", "items": [{"product": "p-1", "quantity": 2, "price": 10}], "total": 20, "scenario": "%s"}}' \
        "$order" "$order" "$n" "$scenario")
    curl -sf -X POST "$api/v1/workflows/commerce/order/instances" \
        -H 'content-type: application/json' -d "$body" >/dev/null
    ids+=("$order")
    scenarios+=("$scenario")
done
# One more order arrives as an event: schedule.on starts its instance,
# named after the event id. A topic is at most once (the leader takes up a
# new schedule within a second), so the event is published until the
# instance exists; a repeat with the same id starts nothing more.
order="o$run-event"
for _ in $(seq 50); do
    curl -sf -X POST "$api/v1/topics/commerce.order.placed" -H 'content-type: application/json' \
        -H 'ce-type: commerce.order.placed' -H "ce-id: $order" \
        -d "{\"order\": \"$order\", \"items\": [], \"total\": 5, \"scenario\": \"happy\"}" >/dev/null
    sleep 0.3
    curl -sf "$api/v1/workflows/instances/order-$order" >/dev/null && break
done
ids+=("order-$order")
scenarios+=("happy")
echo "placed ${#ids[@]} orders; watch them with: shoal wf instances --workflow commerce/order"

failed=0
printf '%-24s %-16s %s\n' instance scenario "final state"
for i in "${!ids[@]}"; do
    id=${ids[$i]}
    scenario=${scenarios[$i]}
    state=""
    for _ in $(seq 300); do
        state=$(curl -s "$api/v1/workflows/instances/$id" |
            json 'd.get("status", "missing") + ((": " + d["output"]["reason"]) if d.get("status") == "completed" and d.get("output", {}).get("status") == "cancelled" else "") + ((" " + d["output"].get("tracking", "")) if d.get("output", {}).get("status") == "completed" else "")' 2>/dev/null || echo missing)
        case "$state" in completed*|cancelled*|faulted*) break ;; esac
        sleep 0.2
    done
    shown=${state/#completed: /cancelled: }
    want=${expected[$scenario]}
    mark=ok
    if [[ "$shown" != "$want"* ]]; then
        mark="WRONG (expected $want)"
        failed=1
    fi
    printf '%-24s %-16s %-34s %s\n' "$id" "$scenario" "$shown" "$mark"
done
if [[ $failed -ne 0 ]]; then
    echo "some orders did not end where they should; services log:" >&2
    cat "$work/services.log" >&2
    exit 1
fi
echo "all orders ended where they should"
