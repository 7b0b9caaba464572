"""LanceDB's import without the Lance namespace REST client (indexing.lance_store.import_lancedb)."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys
from indexing.lance_store import import_lancedb
lancedb = import_lancedb()
deferred = sorted(m for m in sys.modules if m.startswith("lance_namespace_urllib3_client.api"))
import lance_namespace_urllib3_client as client
from lance_namespace import ListTablesResponse
print(json.dumps({"deferred": deferred, "api_client": client.ApiClient.__name__,
                  "version": client.__version__, "models": ListTablesResponse.__name__,
                  "after": any(m.startswith("lance_namespace_urllib3_client.api") for m in sys.modules)}))
"""


def test_lancedb_imports_without_the_namespace_rest_client() -> None:
    """A fresh interpreter: after import_lancedb no REST API module of the namespace client is
    loaded, and every name of the client's package still resolves on first use (loading them)."""
    proc = subprocess.run([sys.executable, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["deferred"] == [] and seen["after"] is True
    assert seen["api_client"] == "ApiClient" and seen["version"] and seen["models"] == "ListTablesResponse"


def test_a_store_works_after_the_deferred_import(tmp_path) -> None:
    from indexing.lance_store import import_lancedb

    import pyarrow as pa

    table = import_lancedb().connect(str(tmp_path)).create_table("t", pa.table({"id": ["a"], "fence": [1]}))
    (table.merge_insert("id").when_matched_update_all(where="target.fence <= source.fence")
     .when_not_matched_insert_all().execute(pa.table({"id": ["a", "b"], "fence": [2, 2]})))
    assert sorted(table.to_arrow()["id"].to_pylist()) == ["a", "b"]
