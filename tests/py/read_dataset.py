"""Reads a dataset directory as other engines do: pyarrow (Hive
partitioning, as Spark and Trino read it) and DuckDB. Prints JSON:
{"pyarrow": rows sorted by _id, "duckdb": the answer to SQL over the
directory (the table is `dataset`)}.

usage: read_dataset.py DIR [SQL]"""
import json
import sys

import duckdb
import pyarrow.dataset as ds


def main():
    directory = sys.argv[1]
    sql = sys.argv[2] if len(sys.argv) > 2 else "SELECT count(*) AS n FROM dataset"
    table = ds.dataset(directory, format="parquet", partitioning="hive").to_table()
    rows = sorted(table.to_pylist(), key=lambda row: row["_id"])
    for row in rows:
        for key, value in row.items():
            if not isinstance(value, (str, int, float, bool, type(None))):
                row[key] = str(value)
    con = duckdb.connect()
    pattern = (directory + "/*/*.parquet").replace("'", "''")
    con.execute(
        f"CREATE VIEW dataset AS SELECT * FROM read_parquet('{pattern}', hive_partitioning = true)"
    )
    cursor = con.execute(sql)
    columns = [d[0] for d in cursor.description]
    answer = [
        {c: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v)) for c, v in zip(columns, r)}
        for r in cursor.fetchall()
    ]
    print(json.dumps({"pyarrow": rows, "duckdb": answer}))


if __name__ == "__main__":
    main()
