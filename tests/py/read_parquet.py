"""Reads one Parquet file with pyarrow, an engine apart from Shoal's.
Prints JSON: {"columns": [...], "rows": [[...], ...]}, values other than
text, numbers and booleans as their text.

usage: read_parquet.py FILE"""
import json
import sys

import pyarrow.parquet as pq


def main():
    table = pq.read_table(sys.argv[1])
    rows = []
    for row in table.to_pylist():
        values = []
        for value in row.values():
            if not isinstance(value, (str, int, float, bool, type(None))):
                value = str(value)
            values.append(value)
        rows.append(values)
    print(json.dumps({"columns": table.column_names, "rows": rows}))


if __name__ == "__main__":
    main()
