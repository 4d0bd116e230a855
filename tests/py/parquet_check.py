"""Reads the Parquet files of `coordinator export --format parquet` with two readers
nobody in this project wrote, and prints what they see as one JSON object:

    python parquet_check.py DIR QUERIES.json

- "pyarrow": for each DIR/*.parquet, its row count, its columns with their Arrow types,
  and the compression codecs of its column chunks, as pyarrow reads them;
- "duckdb": for each SQL query of QUERIES.json (a list of strings, run in DIR), its
  rows as lists of values (timestamps as ISO 8601 strings).
"""

import datetime
import json
import os
import sys

import duckdb
import pyarrow.parquet as pq


def plain(value):
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def main():
    directory, queries_file = sys.argv[1], sys.argv[2]
    seen = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".parquet"):
            continue
        f = pq.ParquetFile(os.path.join(directory, name))
        meta = f.metadata
        codecs = set()
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                codecs.add(meta.row_group(g).column(c).compression)
        seen[name] = {
            "rows": meta.num_rows,
            "row_groups": meta.num_row_groups,
            "columns": [[field.name, str(field.type)] for field in f.schema_arrow],
            "codecs": sorted(codecs),
            # The whole table through pyarrow, to be sure every page decodes.
            "read_rows": f.read().num_rows,
        }
    os.chdir(directory)
    con = duckdb.connect()
    answers = []
    for query in json.load(open(queries_file)):
        answers.append([plain(list(row)) for row in con.execute(query).fetchall()])
    print(json.dumps({"pyarrow": seen, "duckdb": answers}))


main()
