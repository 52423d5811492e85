"""Analytics over a dataset: Shoal's POST /v1/sql against DuckDB reading the
same Parquet files directly, side by side, on one node and on three.

Generates ROWS orders over DAYS days as Shoal writes a dataset (one
Parquet file per day partition, `_id`, `_time` and the columns of the
definition), starts shoal nodes whose data dirs hold them, and times each
query (the median of RUNS runs after one warm-up): Shoal over HTTP (the
whole request: planning, the worker process, every node's scan, the
answer as JSON), DuckDB in this process over `read_parquet` of the same
files with Hive partitioning. Both answers are compared (numbers within
1e-6 relative). Prints a Markdown table.

usage: analytics.py SHOAL_BIN [--rows N] [--days N] [--runs N] [--nodes 1,3]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DATASET = {"columns": [
    {"name": "order_id", "type": "string", "from": "/data/id"},
    {"name": "customer_id", "type": "string", "from": "/data/customer_id"},
    {"name": "total_amount", "type": "float64", "from": "/data/total_amount"},
    {"name": "status", "type": "string", "from": "/data/status"}],
    "time": "/data/order_date"}

QUERIES = {
    "daily sales": "SELECT CAST(date AS VARCHAR) AS day, count(*) AS orders, sum(total_amount) AS revenue, "
                   "avg(total_amount) AS avg_order, count(DISTINCT customer_id) AS customers "
                   "FROM orders WHERE status = 'completed' GROUP BY date ORDER BY date",
    "top customers": "SELECT customer_id, sum(total_amount) AS revenue FROM orders "
                     "WHERE status = 'completed' GROUP BY customer_id ORDER BY revenue DESC, customer_id LIMIT 10",
    "monthly by status": "SELECT strftime(_time, '%Y-%m') AS month, status, count(*) AS orders, "
                         "sum(total_amount) AS revenue FROM orders GROUP BY month, status ORDER BY month, status",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(rows, days):
    """The orders, as a table sorted by time."""
    start_us = 1_767_225_600_000_000  # 2026-01-01
    rand = pc.random(rows)
    offsets = pc.floor(pc.multiply(pc.random(rows), days * 86_400_000_000.0))
    times = pc.cast(pc.add(pc.cast(offsets, pa.int64()), start_us), pa.timestamp("us"))
    ids = pc.cast(pa.array(range(rows), pa.int64()), pa.string())
    customers = pc.binary_join_element_wise(
        "c-", pc.cast(pc.cast(pc.floor(pc.multiply(pc.random(rows), 200_000.0)), pa.int64()), pa.string()), "")
    totals = pc.round(pc.add(pc.multiply(rand, 490.0), 10.0), 2)
    status = pc.if_else(pc.less(pc.random(rows), 0.9), "completed", "cancelled")
    table = pa.table({"_id": ids, "_time": times, "order_id": pc.binary_join_element_wise("o-", ids, ""),
                      "customer_id": customers, "total_amount": totals, "status": status})
    return table.sort_by("_time")


def write_partitions(table, data_dirs):
    """One file per day per node, named as Shoal names its own."""
    days = pc.cast(pc.cast(table["_time"], pa.date32()), pa.string())
    table = table.append_column("day", days)
    bounds = []
    previous, start = None, 0
    for i, day in enumerate(days.to_pylist()):
        if day != previous:
            if previous is not None:
                bounds.append((previous, start, i))
            previous, start = day, i
    bounds.append((previous, start, len(days)))
    seq = 1
    for day, first, end in bounds:
        part = table.slice(first, end - first).drop_columns(["day"])
        share = (part.num_rows + len(data_dirs) - 1) // len(data_dirs)
        for n, data_dir in enumerate(data_dirs):
            piece = part.slice(n * share, share)
            if piece.num_rows == 0:
                continue
            directory = os.path.join(data_dir, "datasets", "orders", f"date={day}")
            os.makedirs(directory, exist_ok=True)
            name = f"part-{n + 1}-{seq:020}-{seq + piece.num_rows - 1:020}.parquet"
            pq.write_table(piece, os.path.join(directory, name), compression="zstd",
                           row_group_size=128 * 1024)
            seq += piece.num_rows


def request(endpoint, method, path, body=None, timeout=120):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(endpoint + path, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as answer:
        return json.load(answer)


def start_nodes(shoal, data_dirs):
    ports = [(free_port(), free_port(), free_port()) for _ in data_dirs]
    seeds = []
    if len(data_dirs) > 1:
        for _, _, gossip in ports:
            seeds += ["--seed", f"127.0.0.1:{gossip}"]
        seeds += ["--bootstrap-expect", str(len(data_dirs)), "--cluster-name", "analytics-bench"]
    processes = []
    for data_dir, (api, rpc, gossip) in zip(data_dirs, ports):
        log = open(os.path.join(data_dir, "..", f"shoal-{api}.log"), "w")
        processes.append(subprocess.Popen(
            [shoal, "serve", "--data-dir", data_dir, "--api", f"127.0.0.1:{api}",
             "--rpc", f"127.0.0.1:{rpc}", "--gossip", f"127.0.0.1:{gossip}",
             "--request-timeout-ms", "60000", *seeds], stdout=log, stderr=log))
    endpoint = f"http://127.0.0.1:{ports[0][0]}"
    for _ in range(600):
        try:
            members = request(endpoint, "GET", "/v1/cluster")
            if len(members.get("members", [])) >= len(data_dirs) or len(data_dirs) == 1:
                request(endpoint, "PUT", "/v1/datasets/orders", DATASET)
                return processes, endpoint
        except Exception:
            pass
        time.sleep(0.1)
    sys.exit("the nodes did not start")


def timed(fn, runs):
    fn()
    times = []
    answer = None
    for _ in range(runs):
        started = time.perf_counter()
        answer = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), answer


def same(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            if isinstance(u, float) or isinstance(v, float):
                if abs(float(u) - float(v)) > 1e-6 * max(1.0, abs(float(v))):
                    return False
            elif str(u) != str(v):
                return False
    return True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("shoal")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", default="1,3")
    args = parser.parse_args()
    print(f"generating {args.rows} orders over {args.days} days", file=sys.stderr)
    table = generate(args.rows, args.days)
    results = {}
    for count in [int(n) for n in args.nodes.split(",")]:
        work = tempfile.mkdtemp(prefix="shoal-analytics-")
        data_dirs = [os.path.join(work, f"node{n}") for n in range(count)]
        write_partitions(table, data_dirs)
        files = os.path.join(work, "node*", "datasets", "orders", "*", "*.parquet")
        processes, endpoint = start_nodes(args.shoal, data_dirs)
        try:
            duck = duckdb.connect()
            duck.execute(f"CREATE VIEW orders AS SELECT * FROM read_parquet('{files}', hive_partitioning = true)")
            for name, sql in QUERIES.items():
                print(f"{count} node(s): {name}", file=sys.stderr)
                shoal_ms, shoal_answer = timed(
                    lambda: request(endpoint, "POST", "/v1/sql", {"query": sql}), args.runs)
                duck_ms, duck_rows = timed(lambda: duck.execute(sql).fetchall(), args.runs)
                if shoal_answer.get("partial"):
                    sys.exit(f"{name}: partial answer {shoal_answer['nodes']}")
                if not same(shoal_answer["rows"], duck_rows):
                    sys.exit(f"{name}: answers differ\nshoal {shoal_answer['rows'][:3]}\nduckdb {duck_rows[:3]}")
                results[(name, count)] = (shoal_ms, duck_ms)
        finally:
            for process in processes:
                process.kill()
                process.wait()
            shutil.rmtree(work, ignore_errors=True)
    counts = [int(n) for n in args.nodes.split(",")]
    print(f"\n{args.rows} orders, {args.days} day partitions; median of {args.runs} runs (ms)\n")
    header = "| query | " + " | ".join(f"Shoal {c} node(s) | DuckDB ({c} dirs) | Shoal/DuckDB" for c in counts) + " |"
    print(header)
    print("|" + "---|" * (1 + 3 * len(counts)))
    for name in QUERIES:
        cells = []
        for c in counts:
            shoal_ms, duck_ms = results[(name, c)]
            cells += [f"{shoal_ms:.0f}", f"{duck_ms:.0f}", f"{shoal_ms / duck_ms:.1f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if 1 in counts and 3 in counts:
        print()
        for name in QUERIES:
            print(f"{name}: three nodes / one node = {results[(name, 3)][0] / results[(name, 1)][0]:.2f}")


if __name__ == "__main__":
    main()
