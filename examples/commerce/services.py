#!/usr/bin/env python3
"""Stand-ins for the inventory, payment and shipping services of the order
saga (examples/commerce/order.yaml): each subscribes to its request topics
in a queue group (so several copies share the work) and answers by sending
events to the workflow event inbox (stored in Raft before the answer, so an
answer is not lost if a node dies; a topic would be at most once). Python
standard library only.

What they answer depends on the order's `scenario`:
  out-of-stock     inventory answers commerce.stock.unavailable
  payment-fails    payment answers commerce.payment.failed
  payment-timeout  payment does not answer
  shipment-fails   shipping answers commerce.shipment.failed
  external         payment and shipping do not answer: another system does
                   (through Kafka, in the tests)
  anything else    everything succeeds; the parcel is delivered

Usage: services.py ENDPOINT   (e.g. http://127.0.0.1:7700)
"""

import json
import sys
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone

ENDPOINT = sys.argv[1].rstrip("/") if len(sys.argv) > 1 else "http://127.0.0.1:7700"


def now():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def send_event(kind, event_id, data):
    request = urllib.request.Request(
        f"{ENDPOINT}/v1/workflows/events/{kind}",
        data=json.dumps(data).encode(),
        method="POST",
        headers={
            "content-type": "application/json",
            "ce-type": kind,
            "ce-id": event_id,
            "ce-source": "examples/commerce/services.py",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


def subscribe(pattern, group, handle):
    """Follows an SSE subscription for ever, reconnecting when it drops."""
    query = urllib.parse.urlencode({"pattern": pattern, "queue": group})
    while True:
        try:
            with urllib.request.urlopen(f"{ENDPOINT}/v1/subscribe?{query}", timeout=3600) as stream:
                for raw in stream:
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    if line.startswith("data:"):
                        event = json.loads(line[5:].strip())
                        if not isinstance(event, dict) or "type" not in event:
                            continue  # not a message (the stream's own notices)
                        try:
                            handle(event["type"], event.get("data") or {})
                        except Exception as error:  # keep serving the others
                            print(f"{group}: {error}", file=sys.stderr, flush=True)
        except Exception as error:
            print(f"{group}: subscription dropped ({error}); reconnecting", file=sys.stderr, flush=True)
            time.sleep(0.5)


def inventory(kind, data):
    order = data["order"]
    if kind == "commerce.stock.reserve":
        answer = "unavailable" if data.get("scenario") == "out-of-stock" else "reserved"
        send_event(f"commerce.stock.{answer}", f"stock-{answer}-{order}", {"order": order})
    elif kind == "commerce.stock.release":
        print(f"inventory: stock of {order} released", flush=True)


def payment(kind, data):
    order = data["order"]
    if kind == "commerce.payment.request":
        scenario = data.get("scenario")
        if scenario in ("payment-timeout", "external"):
            return
        answer = "failed" if scenario == "payment-fails" else "paid"
        send_event(
            f"commerce.payment.{answer}",
            f"payment-{answer}-{order}",
            {"order": order, "payment": f"pay-{order}", "amount": data.get("amount"), "method": "card", "at": now()},
        )
    elif kind == "commerce.payment.refund":
        print(f"payment: {order} refunded", flush=True)


def shipping(kind, data):
    order = data["order"]
    if data.get("scenario") == "external":
        return
    shipment = {"order": order, "shipment": f"shp-{order}", "carrier": "shoal-post", "at": now()}
    if data.get("scenario") == "shipment-fails":
        send_event("commerce.shipment.failed", f"shipment-failed-{order}", shipment)
        return
    shipment["tracking"] = f"TRK-{order}"
    send_event("commerce.shipment.shipped", f"shipment-shipped-{order}", shipment)
    time.sleep(0.2)
    send_event("commerce.shipment.delivered", f"shipment-delivered-{order}", dict(shipment, at=now()))


if __name__ == "__main__":
    for pattern, group, handle in [
        ("commerce.stock.*", "inventory", inventory),
        ("commerce.payment.request", "payment", payment),
        ("commerce.payment.refund", "payment", payment),
        ("commerce.shipment.request", "shipping", shipping),
    ]:
        threading.Thread(target=subscribe, args=(pattern, group, handle), daemon=True).start()
    print(f"services: inventory, payment and shipping answering on {ENDPOINT}", flush=True)
    threading.Event().wait()
