#!/usr/bin/env python3
"""The order saga's tables: orders, order_items, payments, shipments, kept
current by SQL sinks from the events the saga emits (order.yaml). Python
standard library only (and `psql` for PostgreSQL).

  tables.py setup ENDPOINT [--postgres URL]
      Defines the database with its migrations (migrations/sqlite/ for each
      node's embedded SQLite, `local`; migrations/postgres/ for a
      PostgreSQL database named `commerce` at URL, its password taken from
      $PGPASSWORD into the KV key commerce/db-password), then the sinks and
      routes of sinks.json, the dataset `orders` (every order status
      change, for analytics) and the sales reports (per hour, day, week and
      month; the daily one scheduled at 00:05 UTC).
  tables.py report ENDPOINT NAME
      Runs a report now (POST /v1/reports/NAME/run) and prints its result.
  tables.py rows (--sqlite FILE | --postgres URL) ORDER...
      One line per order: id, status, item rows, payment, shipment.
  tables.py sales (--sqlite FILE | --postgres URL)
      Sales per day of completed orders: orders, revenue, average order
      value, unique customers.
"""

import json
import os
import pathlib
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
PASSWORD_KEY = "commerce/db-password"


def put(endpoint, path, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{endpoint}{path}", data=data, method="PUT", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            answer.read()
    except urllib.error.HTTPError as error:
        sys.exit(f"PUT {path}: {error.code} {error.read().decode(errors='replace')}")


def migrations(flavor):
    """migrations/<flavor>/<version>_<description>.sql, as the sqlx CLI names them."""
    found = []
    for path in sorted((HERE / "migrations" / flavor).glob("*.sql")):
        version, _, description = path.stem.partition("_")
        found.append({"version": int(version), "description": description.replace("_", " "), "sql": path.read_text()})
    return found


def setup(endpoint, postgres_url):
    endpoint = endpoint.rstrip("/")
    if postgres_url:
        database = {"url": postgres_url, "migrations": migrations("postgres")}
        if os.environ.get("PGPASSWORD"):
            put(endpoint, f"/v1/kv/{PASSWORD_KEY}", os.environ["PGPASSWORD"].encode())
            database["password_key"] = PASSWORD_KEY
        name = "commerce"
    else:
        database = {"migrations": migrations("sqlite")}
        name = "local"
    put(endpoint, f"/v1/databases/{name}", database)
    definitions = json.loads((HERE / "sinks.json").read_text())
    for sink, body in definitions["sinks"].items():
        put(endpoint, f"/v1/sinks/{sink}", dict(body, database=name))
    for dataset, body in definitions["datasets"].items():
        put(endpoint, f"/v1/datasets/{dataset}", body)
    for route, body in definitions["routes"].items():
        put(endpoint, f"/v1/routes/{route}", body)
    for report, body in definitions["reports"].items():
        put(endpoint, f"/v1/reports/{report}", body)
    print(f"tables: database {name}, sinks {', '.join(definitions['sinks'])}; "
          f"datasets {', '.join(definitions['datasets'])}; reports {', '.join(definitions['reports'])}")


def query(target, sql, params=()):
    kind, where = target
    if kind == "--sqlite":
        with sqlite3.connect(f"file:{where}?mode=ro", uri=True) as db:
            return [tuple(row) for row in db.execute(sql, params)]
    # psql: parameters are inlined as quoted literals (ids made by run.sh).
    for value in params:
        sql = sql.replace("?", "'" + str(value).replace("'", "''") + "'", 1)
    out = subprocess.run(
        ["psql", where, "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True, capture_output=True, text=True, env=dict(os.environ, PGTZ="UTC"),
    ).stdout
    return [tuple(line.split("\t")) for line in out.splitlines() if line]


def rows(target, orders):
    for order in orders:
        found = query(
            target,
            "SELECT o.status,"
            " (SELECT count(*) FROM order_items i WHERE i.order_id = o.id),"
            " coalesce((SELECT p.status FROM payments p WHERE p.order_id = o.id), '-'),"
            " coalesce((SELECT s.status FROM shipments s WHERE s.order_id = o.id), '-')"
            " FROM orders o WHERE o.id = ?",
            (order,),
        )
        status, items, payment, shipment = found[0] if found else ("missing", 0, "-", "-")
        print(f"{order} {status} items={items} payment={payment} shipment={shipment}")


def sales(target):
    found = query(
        target,
        "SELECT date(order_date), count(*), sum(total_amount), avg(total_amount), count(DISTINCT customer_id)"
        " FROM orders WHERE status = 'completed' GROUP BY date(order_date) ORDER BY 1",
    )
    print(f"{'day':<12}{'orders':>8}{'revenue':>12}{'avg order':>12}{'customers':>11}")
    for day, count, revenue, average, customers in found:
        print(f"{day:<12}{int(count):>8}{float(revenue):>12.2f}{float(average):>12.2f}{int(customers):>11}")


def report(endpoint, name):
    # Rows reach the dataset in batches (within a second): wait until the
    # node has none of them waiting.
    for _ in range(300):
        with urllib.request.urlopen(f"{endpoint.rstrip('/')}/v1/outbox", timeout=10) as answer:
            waiting = [d for d in json.load(answer)["destinations"]
                       if d["destination"].startswith("dataset:") and d["pending"] > 0]
        if not waiting:
            break
        time.sleep(0.1)
    request = urllib.request.Request(
        f"{endpoint.rstrip('/')}/v1/reports/{name}/run", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        run = json.load(answer)
    if run["status"] != "succeeded":
        sys.exit(f"report {name}: {run.get('error')}")
    print(f"report {name} (run {run['id']}, {run['rows']} rows):")
    print("\t".join(run["result"]["columns"]))
    for row in run["result"]["rows"]:
        print("\t".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row))


def main(args):
    if len(args) >= 2 and args[0] == "setup":
        postgres = args[args.index("--postgres") + 1] if "--postgres" in args else None
        setup(args[1], postgres)
    elif len(args) == 3 and args[0] == "report":
        report(args[1], args[2])
    elif len(args) >= 3 and args[0] in ("rows", "sales") and args[1] in ("--sqlite", "--postgres"):
        target = (args[1], args[2])
        rows(target, args[3:]) if args[0] == "rows" else sales(target)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
