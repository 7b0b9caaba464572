#!/usr/bin/env python
"""Resident memory of LanceDB writes into one growing table, by write method.

    .venv/bin/python bench/lance_memory.py [--writes 100] [--rows 600]

Each method runs in a fresh process: ``merge_insert`` (what codeindex's upsert uses, fenced),
a filtered scan of the batch's ids followed by ``add``, and ``add`` alone. Rows carry a
36-character id, a 400-character text and a 384-d float32 vector, like a chunk. It prints the
resident memory (VmRSS) after the first write and after the last, to show what grows with the
table, and each write's transient: its peak (VmHWM, reset before the write through
``/proc/self/clear_refs``, Linux's proc(5)) above the resident size before it, for the first
tenth of the writes (after the first, which maps Lance's code) and the last tenth
(docs/performance.md, D).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

METHODS = ("merge_insert", "scan+add", "add")


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (``VmRSS``: resident now; ``VmHWM``: the peak since
    the last :func:`reset_hwm`), in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_hwm() -> None:
    """Make VmHWM the current resident size (``5`` to ``/proc/self/clear_refs``, Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def child(method: str, writes: int, rows: int, path: str) -> None:
    import lancedb
    import numpy as np
    import pyarrow as pa

    schema = pa.schema([pa.field("id", pa.string()), pa.field("fence", pa.int64()), pa.field("content", pa.string()),
                        pa.field("vector", pa.list_(pa.float32(), 384))])
    table = lancedb.connect(path).create_table("t", schema=schema)
    rng = np.random.default_rng(0)
    first = None
    transients: list[float] = []
    for b in range(writes):
        ids = [f"{b:06d}-{i:04d}-{'x' * 24}" for i in range(rows)]
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(rng.random(rows * 384, dtype=np.float32)), 384)
        data = pa.Table.from_pydict({"id": ids, "fence": [1] * rows, "content": ["x" * 400] * rows,
                                     "vector": vectors}, schema=schema)
        before = status_mb("VmRSS")
        reset_hwm()
        if method == "merge_insert":
            (table.merge_insert("id").when_matched_update_all(where="target.fence <= source.fence")
             .when_not_matched_insert_all().execute(data))
        elif method == "scan+add":
            quoted = ",".join(f"'{i}'" for i in ids)
            table.search().where(f"id IN ({quoted})").select(["id", "fence"]).limit(None).to_arrow()
            table.add(data)
        else:
            table.add(data)
        transients.append(status_mb("VmHWM") - before)
        if first is None:
            first = status_mb("VmRSS")
    tenth = max(1, writes // 10)
    print(json.dumps({"method": method, "first_mb": round(first, 1), "last_mb": round(status_mb("VmRSS"), 1),
                      "rows": table.count_rows(), "transient_first_mb": round(max(transients[1:tenth + 1]), 1),
                      "transient_last_mb": round(max(transients[-tenth:]), 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--child", choices=METHODS)
    parser.add_argument("--path")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.writes, args.rows, args.path)
        return
    print(f"{args.writes} writes of {args.rows} rows into one LanceDB table; resident memory (MB)")
    for method in METHODS:
        with tempfile.TemporaryDirectory(prefix="codeindex-lance-") as tmp:
            out = subprocess.run([sys.executable, __file__, "--child", method, "--writes", str(args.writes),
                                  "--rows", str(args.rows), "--path", tmp],
                                 capture_output=True, text=True, check=True, timeout=1800)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {method:<13} after the first write {result['first_mb']:7.1f}   after the last "
              f"{result['last_mb']:7.1f}   growth {result['last_mb'] - result['first_mb']:+7.1f}   "
              f"({result['rows']} rows); a write's transient, first tenth {result['transient_first_mb']:6.1f}, "
              f"last tenth {result['transient_last_mb']:6.1f}")


if __name__ == "__main__":
    main()
