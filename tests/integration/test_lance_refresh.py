"""The full-text index of a LanceDB table is brought up to date without rewriting the table:
a settle between a sync's batches folds the unindexed rows in once there are ``FTS_SEGMENT_ROWS``
of them, as a new index segment merged with the newest ones within ``FTS_MERGE_BYTES`` (Lance's
index-only ``optimize_indices``), the final ``settle`` (the end of a sync) folds what is left (a
write never folds), and ``compact``
(maintenance) merges the segments into one. Each refresh therefore reads and writes a bounded
amount, whatever the table's size (docs/performance.md, D)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
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


def _stats(store: LanceDBStore):
    table = store._require()
    return table.index_stats(store._fts_index(table).name)


def _data_files(home: Path) -> set[str]:
    data = home / "codeindex.lance" / "data"
    return {p.name for p in data.iterdir()} if data.exists() else set()


def _found(store: LanceDBStore, i: int) -> bool:
    hits = store.lexical_search(query_terms(f"handler_{i}"), 3)
    return bool(hits) and hits[0].id == f"id-{i:05d}"


@pytest.fixture
def folds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The row counts of the table at each fold of the full-text index."""
    seen: list[int] = []
    fold = lance_store._fold_into_index

    def counted(table, name, **kwargs):
        seen.append(table.count_rows())
        return fold(table, name, **kwargs)

    monkeypatch.setattr(lance_store, "_fold_into_index", counted)
    return seen


def test_writes_fold_new_rows_into_index_segments_without_rewriting_the_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folds: list[int]) -> None:
    monkeypatch.setattr(lance_store, "FTS_REFRESH_ROWS", 4)
    monkeypatch.setattr(lance_store, "FTS_SEGMENT_ROWS", 16)
    monkeypatch.setattr(lance_store, "FTS_MERGE_BYTES", 1)  # no segment is merged: one per fold
    home = tmp_path / "lancedb"
    store = LanceDBStore(home, "codeindex")
    store.ensure_collection(8)
    writes, rows = 12, 8
    for w in range(writes):
        store.upsert(_objects(w * rows, rows))
        store.settle(final=False)  # as a sync between its batches
        # A fold writes index files only: the table is still one fragment per write
        # (Table.optimize compacted them into one on each refresh).
        assert store._require().stats()["fragment_stats"]["num_fragments"] == w + 1
    assert folds == [16 * k for k in range(1, 7)]  # every second write: 16 rows unindexed
    stats = _stats(store)
    assert (stats.num_unindexed_rows, stats.num_indices) == (0, 6)  # one segment per fold
    assert len(_data_files(home)) == writes  # one per write, none compacted
    assert all(_found(store, i) for i in range(writes * rows))

    store.upsert(_objects(writes * rows, 3))  # under FTS_REFRESH_ROWS: left for a later write or settle
    store.settle(final=False)
    assert len(folds) == 6
    store.settle()
    assert len(folds) == 6 and _stats(store).num_unindexed_rows == 3
    assert _found(store, writes * rows + 2)  # unindexed rows are searched too
    store.upsert(_objects(writes * rows + 3, 2))
    store.settle()  # 5 rows: folded
    assert len(folds) == 7 and _stats(store).num_unindexed_rows == 0
    store.settle()  # nothing due
    assert len(folds) == 7


def test_a_fold_merges_the_newest_segments_within_the_byte_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folds: list[int]) -> None:
    monkeypatch.setattr(lance_store, "FTS_SEGMENT_ROWS", 8)
    monkeypatch.setattr(lance_store, "FTS_MERGE_BYTES", 1 << 30)  # every segment fits: one is kept
    store = LanceDBStore(tmp_path / "lancedb", "codeindex")
    store.ensure_collection(8)
    for w in range(6):
        store.upsert(_objects(w * 8, 8))
        store.settle(final=False)
    assert len(folds) == 6
    assert _stats(store).num_indices == 1
    assert all(_found(store, i) for i in range(48))
    # An update moves rows to new data files; the merged segment still answers with the new text.
    store.upsert([dataclasses.replace(o, content=o.content.replace("handler_", "endpoint_"))
                  for o in _objects(0, 8, fence=2)])
    assert store.lexical_search(query_terms("endpoint_3"), 1)[0].id == "id-00003"
    hits = store.lexical_search(query_terms("handler_3 handler_11 request"), 100)
    assert len(hits) == len({h.id for h in hits}) == 48  # every row once, none twice from an old segment
    assert {h.id: h.content for h in hits}["id-00003"] == "def endpoint_3(request):\n    return respond(request)\n"


def test_compaction_merges_the_segments_into_one_and_keeps_every_row_searchable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lance_store, "FTS_SEGMENT_ROWS", 8)
    monkeypatch.setattr(lance_store, "FTS_MERGE_BYTES", 1)
    store = LanceDBStore(tmp_path / "lancedb", "codeindex")
    store.ensure_collection(8)
    for w in range(5):
        store.upsert(_objects(w * 8, 8))
        store.settle(final=False)
    assert _stats(store).num_indices == 5
    store.compact(0)
    stats = _stats(store)
    assert (stats.num_indices, stats.num_indexed_rows, stats.num_unindexed_rows) == (1, 40, 0)
    assert all(_found(store, i) for i in range(40))
    assert store.count("r") == 40


def test_settle_without_a_table_does_nothing(tmp_path: Path) -> None:
    store = LanceDBStore(tmp_path / "lancedb", "codeindex")
    store.settle()
    assert store.count() == 0


def test_opening_the_store_makes_the_system_allocator_pyarrows_pool_unless_the_user_chose_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    previous = pa.default_memory_pool()
    try:
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
        pa.set_memory_pool(pa.mimalloc_memory_pool())
        LanceDBStore(tmp_path / "a", "codeindex").ensure_collection(8)
        assert pa.default_memory_pool().backend_name == "mimalloc"  # the user's choice stands

        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
        store = LanceDBStore(tmp_path / "b", "codeindex")
        store.ensure_collection(8)
        assert pa.default_memory_pool().backend_name == "system"
        store.upsert(_objects(0, 8))
        assert store.count("r") == 8
    finally:
        pa.set_memory_pool(previous)


_ARENAS_SCRIPT = """
import ctypes, sys
from indexing import lance_store
from tests.integration.test_lance_refresh import _objects

lance_store.FTS_SEGMENT_ROWS = 200  # folds too, on Lance's threads
store = lance_store.LanceDBStore(sys.argv[1], "codeindex")
store.ensure_collection(8)
for start in range(0, 1000, 250):
    store.upsert(_objects(start, 250))
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
out = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(out))
libc.fclose(ctypes.c_void_p(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas exist on Linux only")
def test_opening_the_store_keeps_lances_threads_in_one_malloc_arena_unless_the_user_chose_a_count(
        tmp_path: Path) -> None:
    """glibc's ``malloc_info`` lists one ``<heap>`` per arena: a fresh process that opened the
    store and wrote (and folded) on Lance's threads has one; with the user's
    ``MALLOC_ARENA_MAX`` those threads make arenas of their own, as they did before the store
    limited them (docs/performance.md, D)."""
    def arenas(name: str, **env: str) -> int:
        report = tmp_path / f"{name}.xml"
        environ = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
        subprocess.run([sys.executable, "-c", _ARENAS_SCRIPT, str(tmp_path / name), str(report)],
                       env={**environ, **env}, cwd=Path(__file__).resolve().parents[2], check=True, timeout=120)
        return report.read_text().count("<heap nr=")

    assert arenas("limited") == 1
    assert arenas("users-choice", MALLOC_ARENA_MAX="8") > 1


def test_a_settle_that_folds_lets_go_of_lances_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         folds: list[int]) -> None:
    """What Lance keeps for an open connection grows with the rows written through it (about
    150 bytes a row); a settle that folds rows into the full-text index (between a sync's
    batches, or at its end) lets the connection go, so a long sync's writes do not add it up
    (docs/performance.md, D). The next write opens one anew, and nothing written is lost."""
    import lancedb

    monkeypatch.setattr(lance_store, "FTS_REFRESH_ROWS", 2)
    monkeypatch.setattr(lance_store, "FTS_SEGMENT_ROWS", 8)
    opened: list[str] = []
    connect = lancedb.connect

    def counted(uri, *args, **kwargs):
        opened.append(str(uri))
        return connect(uri, *args, **kwargs)

    monkeypatch.setattr(lancedb, "connect", counted)
    store = LanceDBStore(tmp_path / "lancedb", "codeindex")
    store.ensure_collection(8)
    for w in range(6):
        store.upsert(_objects(w * 4, 4))
        assert store._conn is not None  # a write never folds
        store.settle(final=False)
        folded = w % 2 == 1  # 8 rows unindexed after every second write
        assert (store._conn is None) == folded and (store._table is None) == folded, w
    assert folds == [8, 16, 24]
    assert len(opened) == 3  # ensure_collection's (the first two writes'), then one after each fold but the last
    store.upsert(_objects(24, 3))
    store.settle(final=False)  # 3 rows: not due between batches
    assert store._conn is not None
    store.settle()  # folds the 3 rows left (FTS_REFRESH_ROWS 2)
    assert store._conn is None and folds == [8, 16, 24, 27]
    assert store.count() == 27
    assert _found(store, 5) and _found(store, 26)


def test_a_missing_table_keeps_none_of_the_callers_frames_alive(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """LanceDB re-raises the error of a call run on its background event loop, whose futures
    still hold it; the store answers a missing table ("absent") without its traceback, which
    held every frame of the caller's stack: the first sync of a new table kept its plan alive
    through its batches while the loop held the future (docs/performance.md, D)."""
    import gc
    import weakref

    store = LanceDBStore(tmp_path / "lancedb", "codeindex")
    raised: list[BaseException] = []  # as LanceDB's futures hold them
    open_table = store._db.open_table

    def recording(*args, **kwargs):
        try:
            return open_table(*args, **kwargs)
        except Exception as exc:
            raised.append(exc)
            raise

    monkeypatch.setattr(store._db, "open_table", recording)

    class Plan:
        pass

    def caller() -> weakref.ref:
        plan = Plan()
        assert store.count() == 0 and store.chunk_indexes("r", ["a.py"]) == {}
        return weakref.ref(plan)

    gone = caller()
    gc.collect()
    assert raised  # the store opened a table that is not there
    assert gone() is None  # the exceptions are still held, the caller's frames are not


def test_a_settle_takes_the_write_lock_only_when_a_fold_is_due(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                folds: list[int]) -> None:
    """A sync settles after every batch; with nothing due that is a read, without the write lock
    (a Redis lock in a fleet)."""
    from contextlib import contextmanager

    monkeypatch.setattr(lance_store, "FTS_SEGMENT_ROWS", 8)
    held: list[int] = []

    @contextmanager
    def lock():
        held.append(1)
        yield

    store = LanceDBStore(tmp_path / "lancedb", "codeindex", write_lock=lock)
    store.ensure_collection(8)
    store.upsert(_objects(0, 4))
    locks = len(held)
    store.settle(final=False)  # 4 rows: not due
    assert len(held) == locks and folds == []
    store.upsert(_objects(4, 4))
    locks = len(held)
    store.settle(final=False)  # 8 rows: due
    assert len(held) == locks + 1 and folds == [8]
