"""The LanceDB vector store: the embedded default (a directory on disk) and the shared-path
store of a fleet. Upserts are ``merge_insert`` on the id, conditioned on the fencing token.

Concurrent writers: Lance commits optimistically and does not detect two concurrent
``merge_insert`` calls that plan the same key (lance-format/lance#4585, #8949; lancedb#2463:
"serialize concurrent writes at the application layer"); both commit and the key is stored
twice (tests/fleet/test_faults.py saw 943 rows for 885 ids). So every write to a table on a
local (shared) path holds an exclusive file lock (filelock, ``flock``) on
``<uri>/.<collection>.write.lock`` and works on the latest version; reads take no lock and
always see the latest version (``read_consistency_interval=0``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import filelock
import numpy as np

from indexing.errors import StoreError
from indexing.store import EXPORT_FIELDS, SearchHit, StoredChunk, VectorObject

_PROPERTIES = ("id", "repo", "path", "chunk_index", "start_line", "end_line", "content", "language",
               "content_sha256", "commit", "indexed_at", "embedding_model", "fence")
_SQL_BATCH = 1000
#: Seconds a writer waits for another process's write to the same table before giving up.
WRITE_LOCK_TIMEOUT = 300.0


def _in_lists(values: Sequence[str]) -> Iterator[str]:
    """The values as SQL list bodies (``'a','b'``) of at most ``_SQL_BATCH`` items, for ``IN (...)``."""
    for start in range(0, len(values), _SQL_BATCH):
        yield ",".join(_quote(v) for v in values[start : start + _SQL_BATCH])


def _quote(value: str) -> str:
    """A SQL string literal for a Lance filter (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


class LanceDBStore:
    """A LanceDB table named after the collection, under ``uri`` (a directory or ``s3://``).

    Raises :class:`StoreError` when LanceDB fails, with the table and operation named.
    """

    def __init__(self, uri: str | Path, collection: str) -> None:
        self.uri, self.collection = str(uri), collection
        self._conn = None
        self._table = None

    @property
    def _db(self):
        """The LanceDB connection, opened on first use (the import alone costs about a second)."""
        if self._conn is None:
            import lancedb  # lazy: about a second to import (see the docstring)

            try:
                # Always read the latest version: other processes write the same table.
                self._conn = lancedb.connect(self.uri, read_consistency_interval=timedelta(0))
            except Exception as exc:  # lancedb raises plain exceptions of several kinds
                raise StoreError(f"cannot open the LanceDB store at {self.uri}: {exc}") from exc
        return self._conn

    @contextmanager
    def _writing(self):
        """Hold the table's write lock (local paths; a no-op for object-store URIs, whose
        writers the server store of a later issue coordinates) and yield the latest table."""
        table = self._require()
        if "://" in self.uri and not self.uri.startswith("file://"):
            yield table
            return
        path = Path(self.uri.removeprefix("file://")) / f".{self.collection}.write.lock"
        lock = filelock.FileLock(path, timeout=WRITE_LOCK_TIMEOUT, mode=0o644)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise StoreError(f"another process held the write lock {path} for {WRITE_LOCK_TIMEOUT:.0f}s") from None
        except OSError as exc:
            raise StoreError(f"cannot open the write lock {path}: {exc.strerror}") from exc
        try:
            table.checkout_latest()
            yield table
        finally:
            lock.release()

    def _schema(self, dimension: int):
        import pyarrow as pa  # lazy: with LanceDB, only when the store is used

        return pa.schema([
            pa.field("id", pa.string(), nullable=False),
            pa.field("repo", pa.string()), pa.field("path", pa.string()),
            pa.field("chunk_index", pa.int32()), pa.field("start_line", pa.int32()),
            pa.field("end_line", pa.int32()), pa.field("content", pa.string()),
            pa.field("language", pa.string()), pa.field("content_sha256", pa.string()),
            pa.field("commit", pa.string()), pa.field("indexed_at", pa.string()),
            pa.field("embedding_model", pa.string()), pa.field("fence", pa.int64()),
            pa.field("vector", pa.list_(pa.float32(), dimension)),
        ])

    def _open(self):
        if self._table is None:
            try:
                self._table = self._db.open_table(self.collection)
            except ValueError:
                return None
            except Exception as exc:
                if "not found" in str(exc).lower():
                    return None
                raise StoreError(f"cannot open table {self.collection} in {self.uri}: {exc}") from exc
        return self._table

    def ensure_collection(self, dimension: int) -> None:
        """Create the table if missing (concurrent creators: the loser opens the winner's)."""
        if self._open() is not None:
            return
        try:
            self._table = self._db.create_table(self.collection, schema=self._schema(dimension), exist_ok=True)
        except Exception as exc:
            raise StoreError(f"cannot create table {self.collection} in {self.uri}: {exc}") from exc

    def upsert(self, objects: Sequence[VectorObject]) -> int:
        if not objects:
            return 0
        import pyarrow as pa  # lazy: see _schema

        dimension = int(np.asarray(objects[0].vector).shape[0])
        columns = {name: [getattr(o, name) for o in objects] for name in _PROPERTIES}
        matrix = np.stack([np.asarray(o.vector, dtype=np.float32) for o in objects])
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dimension)
        data = pa.Table.from_pydict(columns, schema=self._schema(dimension))
        try:
            with self._writing() as table:
                result = (
                    table.merge_insert("id")
                    .when_matched_update_all(where="target.fence <= source.fence")
                    .when_not_matched_insert_all()
                    .execute(data)
                )
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"upsert of {len(objects)} objects into {self.collection} failed: {exc}") from exc
        return int(result.num_inserted_rows + result.num_updated_rows)

    def delete(self, ids: Sequence[str], fence: int) -> None:
        if not ids:
            return
        try:
            with self._writing() as table:
                for part in _in_lists(ids):
                    table.delete(f"id IN ({part}) AND fence <= {int(fence)}")
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"delete of {len(ids)} objects from {self.collection} failed: {exc}") from exc

    def _require(self):
        table = self._open()
        if table is None:
            raise StoreError(f"collection {self.collection} does not exist in {self.uri}")
        return table

    def _scan(self, columns: Sequence[str], where: str | None = None):
        table = self._open()
        if table is None:
            return None
        query = table.search().select(list(columns))
        if where:
            query = query.where(where)
        try:
            return query.limit(None).to_arrow()
        except Exception as exc:
            raise StoreError(f"scan of {self.collection} failed: {exc}") from exc

    def chunk_indexes(self, repo: str, paths: Sequence[str]) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for part in _in_lists(list(dict.fromkeys(paths))):
            data = self._scan(["path", "chunk_index"], f"repo = {_quote(repo)} AND path IN ({part})")
            if data is None:
                return {}
            for path, index in zip(data.column("path").to_pylist(), data.column("chunk_index").to_pylist()):
                found.setdefault(path, []).append(index)
        return found

    def search(self, vector: np.ndarray, k: int, repo: str | None = None) -> list[SearchHit]:
        table = self._open()
        if table is None:
            return []
        query = table.search(np.asarray(vector, dtype=np.float32)).distance_type("cosine")
        if repo:
            query = query.where(f"repo = {_quote(repo)}", prefilter=True)
        try:
            rows = query.limit(k).select([*SearchHit.__slots__[:-1], "_distance"]).to_list()
        except Exception as exc:
            raise StoreError(f"search in {self.collection} failed: {exc}") from exc
        return [
            SearchHit(**{name: row[name] for name in SearchHit.__slots__[:-1]}, score=1.0 - float(row["_distance"]))
            for row in rows
        ]

    def count(self, repo: str | None = None) -> int:
        table = self._open()
        if table is None:
            return 0
        try:
            return int(table.count_rows(f"repo = {_quote(repo)}" if repo else None))
        except Exception as exc:
            raise StoreError(f"count of {self.collection} in {self.uri} failed: {exc}") from exc

    def inventory(self, repo: str) -> Iterator[StoredChunk]:
        data = self._scan(["id", "path", "chunk_index", "content", "content_sha256"], f"repo = {_quote(repo)}")
        if data is None:
            return
        for batch in data.to_batches(max_chunksize=2048):
            for row in batch.to_pylist():
                yield StoredChunk(**row)

    def drop(self) -> None:
        try:
            if self._open() is not None:
                self._db.drop_table(self.collection)
        except Exception as exc:
            raise StoreError(f"cannot drop table {self.collection} in {self.uri}: {exc}") from exc
        self._table = None

    def export(self, with_vectors: bool = False) -> Iterator[dict]:
        columns = list(EXPORT_FIELDS) + (["vector"] if with_vectors else [])
        data = self._scan(columns)
        if data is None:
            return
        data = data.sort_by("id")
        for batch in data.to_batches(max_chunksize=1024):
            yield from batch.to_pylist()
