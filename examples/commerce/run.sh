#!/usr/bin/env bash
# The order saga end to end: a `shoal dev` node of its own in a temporary
# directory (or the node at $SHOAL_ENDPOINT), the inventory, payment and
# shipping stand-ins (services.py), the saga (order.yaml), its tables
# (tables.py: migrations, SQL sinks and routes), and one order per outcome.
# Prints each order's final state and its rows in the tables, then the
# daily sales; exits 1 if any order or row did not end where it should.
#
#   examples/commerce/run.sh
#   examples/commerce/run.sh --postgres postgres://user@host:5432/db   (password in $PGPASSWORD)
#   SHOAL_ENDPOINT=http://127.0.0.1:7700 examples/commerce/run.sh
#
# The tables are SQLite in the node's data dir, or the PostgreSQL database
# given with --postgres. The rows are read with Python's sqlite3 (only when
# this script started the node: it knows the file) or psql.
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

postgres=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --postgres) postgres=${2:?--postgres needs a URL}; shift 2 ;;
        *) echo "usage: $0 [--postgres URL]" >&2; exit 2 ;;
    esac
done

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

python3 "$here/tables.py" setup "$api" ${postgres:+--postgres "$postgres"}
if [[ -n "$postgres" ]]; then
    tables=(--postgres "$postgres")
elif [[ -d "$work/data" ]]; then
    tables=(--sqlite "$work/data/sql/local.sqlite")
else
    tables=()
fi

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
        -d "{\"order\": \"$order\", \"customer\": \"c-event\", \"items\": [], \"total\": 5, \"scenario\": \"happy\"}" >/dev/null
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
if [[ ${#tables[@]} -gt 0 ]]; then
    declare -A rows_expected=(
        [happy]="completed items=1 payment=paid shipment=delivered"
        [payment-fails]="cancelled items=1 payment=failed shipment=-"
        [payment-timeout]="cancelled items=1 payment=- shipment=-"
        [shipment-fails]="cancelled items=1 payment=refunded shipment=failed"
        [out-of-stock]="cancelled items=1 payment=- shipment=-"
        [event]="completed items=0 payment=paid shipment=delivered"
    )
    # The orders' ids (an instance started by an event is order-<id>), and
    # which rows each should have.
    orders=()
    keys=()
    for i in "${!ids[@]}"; do
        orders+=("${ids[$i]#order-}")
        if [[ ${ids[$i]} == order-* ]]; then keys+=(event); else keys+=("${scenarios[$i]}"); fi
    done
    # The sinks write from the outbox: the rows may trail the instances.
    for _ in $(seq 150); do
        rows=$(python3 "$here/tables.py" rows "${tables[@]}" "${orders[@]}")
        complete=1
        for i in "${!orders[@]}"; do
            grep -qxF "${orders[$i]} ${rows_expected[${keys[$i]}]}" <<<"$rows" || complete=0
        done
        [[ $complete -eq 1 ]] && break
        sleep 0.2
    done
    echo
    echo "rows in the tables (${tables[0]#--}):"
    printf '%-24s %-10s %s\n' order status "items, payment, shipment"
    for i in "${!orders[@]}"; do
        key=${keys[$i]}
        line=$(grep "^${orders[$i]} " <<<"$rows" || echo "${orders[$i]} missing")
        read -r order status rest <<<"$line"
        mark=ok
        if [[ "$status $rest" != "${rows_expected[$key]}" ]]; then
            mark="WRONG (expected ${rows_expected[$key]})"
            failed=1
        fi
        printf '%-24s %-10s %-46s %s\n' "$order" "$status" "$rest" "$mark"
    done
    echo
    echo "daily sales (completed orders):"
    python3 "$here/tables.py" sales "${tables[@]}"
else
    echo "(the tables are in the node's own SQLite file: read them there, or run with --postgres)"
fi
echo
# The same figures from the dataset `orders` (Parquet on every node), as
# Shoal's saved report computes them.
python3 "$here/tables.py" report "$api" sales-per-day || failed=1
if [[ $failed -ne 0 ]]; then
    echo "some orders did not end where they should; services log:" >&2
    cat "$work/services.log" >&2
    exit 1
fi
echo "all orders ended where they should"
