"""Runs compiled segment SQL in DuckDB over a tribe workspace's Delta tables.

Reads a JSON document on stdin: {"tables": {name: table_path}, "views": {name: sql},
"queries": {name: sql}, "repeat": n}, registers every table (its current Parquet files, read through the
Delta log with the `deltalake` package), creates the views, runs each query and prints
{name: [sorted first-column values]} or {name: {"error": message}} as JSON. With "repeat",
it prints {name: {"rows": n, "seconds": best of n runs}} (or {"error": message}) instead (for
the benchmark).
"""
import json
import sys
import time

import duckdb
from deltalake import DeltaTable

doc = json.load(sys.stdin)
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
# A plan that spills without bound fails here instead of filling the disk.
con.execute("SET max_temp_directory_size = '10GB'")
for name, path in doc["tables"].items():
    files = DeltaTable(path).file_uris()
    if not files:
        continue
    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(
        f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet([{listing}], hive_partitioning = true)'
    )
for name, sql in doc.get("views", {}).items():
    con.execute(sql)
out = {}
repeat = doc.get("repeat")
for name, sql in doc["queries"].items():
    if repeat:
        best, rows = float("inf"), 0
        try:
            for _ in range(repeat):
                start = time.perf_counter()
                rows = len(con.execute(sql).fetchall())
                best = min(best, time.perf_counter() - start)
            out[name] = {"rows": rows, "seconds": best}
        except duckdb.Error as e:
            out[name] = {"error": str(e).splitlines()[0]}
        continue
    try:
        rows = con.execute(sql).fetchall()
        out[name] = sorted(str(r[0]) for r in rows)
    except Exception as e:  # reported per query, so one failure does not hide the others
        out[name] = {"error": str(e)}
print(json.dumps(out))
