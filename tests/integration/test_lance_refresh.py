"""The full-text index of a LanceDB table is refreshed (``Table.optimize``: compaction of the
whole table and an index merge) when the unindexed rows double the indexed ones, not on every
write of a long run of writes (a sync's batches), and ``settle`` (the end of a sync) folds what
is left: a run of n rows costs O(n) rewriting instead of O(n^2), and the resident memory of a
10,000-file sync no longer ratchets up with every batch (docs/performance.md, D)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexing import lance_store
from indexing.lance_store import LanceDBStore
from indexing.lexical import query_terms
from indexing.store import VectorObject


def _objects(start: int, count: int, fence: int = 1) -> list[VectorObject]:
    rng = np.random.default_rng(start)
    return [VectorObject(id=f"id-{i:05d}", repo="r", path=f"pkg/mod_{i}.py", chunk_index=0, start_line=1, end_line=2,
                         content=f"def handler_{i}(request):\n    return respond(request)\n", language="python",
                         content_sha256=f"{i:064d}", commit="c", indexed_at="t", embedding_model="m", fence=fence,
                         vector=rng.random(8, dtype=np.float32))
            for i in range(start, start + count)]


def _unindexed(store: LanceDBStore) -> int:
    table = store._require()
    return table.index_stats(store._fts_index(table).name).num_unindexed_rows


def test_a_run_of_writes_refreshes_the_index_when_the_backlog_doubles_and_settle_folds_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lance_store, "FTS_REFRESH_ROWS", 4)
    store = LanceDBStore(tmp_path / "lancedb", "codeindex")
    store.ensure_collection(8)
    table_class = type(store._require())
    refreshes: list[int] = []
    optimize = table_class.optimize

    def counted(table, *args, **kwargs):
        refreshes.append(table.count_rows())
        return optimize(table, *args, **kwargs)

    monkeypatch.setattr(table_class, "optimize", counted)
    writes, rows = 24, 8
    for w in range(writes):
        store.upsert(_objects(w * rows, rows))
    # Refreshed at 8, 16, 32, 64 and 128 rows (the backlog reached the indexed rows): 5 of the
    # 24 writes; every write refreshed before (each had more than FTS_REFRESH_ROWS rows).
    assert refreshes == [8, 16, 32, 64, 128]
    assert _unindexed(store) == writes * rows - 128
    hits = store.lexical_search(query_terms("handler_191"), 3)  # unindexed rows are searched too
    assert hits and hits[0].id == "id-00191"

    store.settle()
    assert refreshes[-1] == writes * rows and _unindexed(store) == 0
    store.settle()  # nothing due: no refresh
    assert len(refreshes) == 6
    store.upsert(_objects(0, 3, fence=2))  # under FTS_REFRESH_ROWS: left for a later write or settle
    store.settle()
    assert len(refreshes) == 6 and _unindexed(store) == 3
    assert store.lexical_search(query_terms("handler_2"), 1)[0].id == "id-00002"
    assert store.count("r") == writes * rows


def test_settle_without_a_table_does_nothing(tmp_path: Path) -> None:
    store = LanceDBStore(tmp_path / "lancedb", "codeindex")
    store.settle()
    assert store.count() == 0
