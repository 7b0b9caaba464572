"""The LanceDB vector store: the embedded default (a directory on disk), and a fleet's store on
a shared path or in object storage (``s3://bucket/prefix``). Upserts are ``merge_insert`` on
the id, conditioned on the fencing token.

Concurrent writers: Lance commits optimistically and does not detect two concurrent
``merge_insert`` calls that plan the same key (lance-format/lance#4585, #8949; lancedb#2463:
"serialize concurrent writes at the application layer"); both commit and the key is stored
twice (tests/fleet/test_faults.py saw 943 rows for 885 ids). So every write to a table holds
an exclusive write lock and works on the latest version: a file lock (filelock, ``flock``) on
``<uri>/.<collection>.write.lock`` for a local path, or the lock the caller gives for a store
that several machines write (the fleet's Redis lock per table); reads take no lock and always
see the latest version (``read_consistency_interval=0``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from pathlib import Path

import filelock
import numpy as np

from indexing.errors import LockTimeoutError, StoreError
from indexing.lexical import document_terms
from indexing.libc import libc
from indexing.paths import tree_size
from indexing.store import EXPORT_FIELDS, HIT_FIELDS, SearchFilter, SearchHit, StoredChunk, VectorObject, glob_to_like
from indexing.store import name_similarity, vector_array, vector_list
from indexing.store import Compaction

_PROPERTIES = ("id", "repo", "path", "chunk_index", "start_line", "end_line", "content", "language",
               "content_sha256", "commit", "indexed_at", "embedding_model", "fence", "names_sha256")
_SQL_BATCH = 1000
#: Seconds a writer waits for another process's write to the same table before giving up.
WRITE_LOCK_TIMEOUT = 300.0
#: The column the full-text index covers: :func:`indexing.lexical.document_terms` of each row.
TERMS = "terms"
#: Rows written since the full-text index was last brought up to date that
#: :meth:`LanceDBStore.settle` (the end of a sync) folds into it. Until then LanceDB searches
#: those rows without the index (exact, slower: LanceDB docs, "Full-text search": unindexed rows
#: are searched by a flat scan, about 70 us a row here: 2,126 unindexed rows made a lexical query
#: 150 ms, indexed 15 ms).
FTS_REFRESH_ROWS = 1000
#: Unindexed rows at which :meth:`LanceDBStore.settle` between a sync's batches (``final=False``)
#: folds them into the full-text index without waiting for the end of the sync: a lexical query
#: during a long sync scans at most about this many rows unindexed (about 0.7 s), and one
#: refresh indexes a bounded number of rows.
FTS_SEGMENT_ROWS = 10_000
#: A refresh writes the new rows' postings as a new segment of the full-text index, merged with
#: the newest existing segments while all of them together stay within this many bytes (Lance's
#: ``optimize_indices(num_indices_to_merge=k)`` merges the newest k). Each refresh therefore
#: reads and writes a bounded amount, whatever the table's size; refreshing with LanceDB's
#: ``Table.optimize``, which also compacts every small fragment (the whole table) and merges all
#: of the index, cost a 10,000-file sync 2.2x the peak memory of a 1,000-file one. Queries read
#: every segment with the same scores as one merged index (Lance keeps the corpus statistics
#: global). Measured at f46e5b1 on part D's 10,000-file sync (315,238 rows, docs/performance.md,
#: D): with 2 MiB, 24 segments, peak 723 MB, lexical queries 11.0 ms median; with 8 MiB, 7
#: segments, peak 864 MB, 6.5 ms. :meth:`LanceDBStore.compact` (maintenance) merges them all.
FTS_MERGE_BYTES = 2 * 1024 * 1024
_HIT_COLUMNS = list(HIT_FIELDS)
#: The column of each row's name vector (:attr:`VectorObject.name_vector`): null for a row written
#: before name vectors existed, zeros for a chunk that defines nothing.
NAME_VECTOR = "name_vector"


def where_clause(filters: SearchFilter | None) -> str | None:
    """The Lance SQL filter of ``filters`` (None when it admits everything): equality on repo
    and language, LIKE (escape ``\\``) on the path for the glob and what lies beneath it."""
    if filters is None:
        return None
    parts = []
    if filters.repo:
        parts.append(f"repo = {_quote(filters.repo)}")
    if filters.language:
        parts.append(f"language = {_quote(filters.language)}")
    if filters.path:
        likes = " OR ".join(f"path LIKE {_quote(like)} ESCAPE '\\'" for like in glob_to_like(filters.path))
        parts.append(f"({likes})")
    return " AND ".join(parts) or None


def _in_lists(values: Sequence[str]) -> Iterator[str]:
    """The values as SQL list bodies (``'a','b'``) of at most ``_SQL_BATCH`` items, for ``IN (...)``."""
    for start in range(0, len(values), _SQL_BATCH):
        yield ",".join(_quote(v) for v in values[start : start + _SQL_BATCH])


def _quote(value: str) -> str:
    """A SQL string literal for a Lance filter (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def _release_native_memory() -> None:
    """Give the memory that LanceDB's native threads freed back to the system (glibc's
    ``malloc_trim``; nothing elsewhere). A refresh of the full-text index runs on Lance's many
    threads, each allocating from its own malloc arena; glibc keeps what they free, so the
    resident size of a long sync ratchets up with each refresh (docs/performance.md, D)."""
    c = libc()
    if c is not None and hasattr(c, "malloc_trim"):
        c.malloc_trim(0)


def _let_go(exc: BaseException) -> None:
    """Drop the traceback of a LanceDB error that the store answers (a table that is not there)
    rather than raises. LanceDB runs each call on its background event loop
    (``lancedb.background_loop``) and re-raises the call's exception here; its futures there
    still hold that exception, and with its traceback every frame of the caller's stack and
    their locals: the first sync of a new table kept its whole plan (one ``PlannedFile`` a path,
    and the commit's copy) alive through its batches, for as long as the loop held the future
    (tests/integration/test_lance_refresh.py, test_sync_exact.py; docs/performance.md, D)."""
    exc.__traceback__ = None
    exc.__context__ = exc.__cause__ = None


#: glibc's ``mallopt`` parameter for the most malloc arenas a process makes (``M_ARENA_MAX`` in
#: ``malloc.h``).
_M_ARENA_MAX = -8


def use_one_malloc_arena() -> bool:
    """Make glibc's malloc serve every thread of this process from one arena (``mallopt(M_ARENA_MAX,
    1)``), unless the user chose a count (glibc's ``MALLOC_ARENA_MAX``, or ``arena_max`` in
    ``GLIBC_TUNABLES``: glibc manual, "Memory Allocation Tunables"). Lance's native threads
    otherwise allocate each from an arena of its own (up to 8 per core), and what a write or a
    fold frees there stays resident, scattered among the few blocks still in use, where
    ``malloc_trim`` cannot return it: a 4,000-path sync's thread arenas grew to 145 MB resident
    while all arenas together held under 50 MB in use. With one arena, bench/sync.py part D's
    10,000-path sync peaked at 461 MB, against 643 MB with 16 (2 cores); all-MiniLM-L6-v2's
    speed did not change (docs/performance.md, D). Arenas made before the call (by threads that
    allocated earlier) stay. Called when the store first connects, before Lance starts its
    threads. Returns whether the limit was set (False off glibc, or when the user's choice
    stands)."""
    if os.environ.get("MALLOC_ARENA_MAX") or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    c = libc()
    if c is None or not hasattr(c, "mallopt"):
        return False
    return bool(c.mallopt(_M_ARENA_MAX, 1))


def use_system_arrow_pool() -> None:
    """Make glibc's malloc pyarrow's default memory pool for this process, unless the user chose
    one (``ARROW_DEFAULT_MEMORY_POOL``, pyarrow's docs, "Memory pools"). Every write builds its
    rows as Arrow columns (megabytes a batch); pyarrow's default mimalloc pool kept the pages they
    freed: bench/sync.py part D's 10,000-file sync peaked at 724 MB with it, 643 MB with the
    system pool (docs/performance.md, D). Only pyarrow's allocations change (the model's are
    torch's). Called when the store first connects."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    import pyarrow as pa  # lazy: with LanceDB

    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


def _fold_into_index(table, index_name: str, *, merge_all: bool = False) -> None:
    """Index the rows of ``table`` (a LanceDB table, at the version to update) that its
    full-text index ``index_name`` does not cover yet, as one new segment that also takes in the
    newest segments while their sizes add up to at most :data:`FTS_MERGE_BYTES`, and commit it as
    a new version of the table; ``merge_all``: every segment, whatever the size (maintenance).
    Only the index is written: the data files stay as they are.

    Through ``pylance`` (``LanceDataset.optimize.optimize_indices``, the Lance library that
    LanceDB embeds: LanceDB 0.40's ``Table.optimize`` has no index-only form; lancedb#1463).
    Lance's errors propagate (the store's callers turn them into StoreError)."""
    dataset = table.to_lance()  # imports lance: only here, when an index is due
    described = next((d for d in dataset.describe_indices() if d.name == index_name), None)
    merged, size = 0, 0
    for segment in sorted(described.segments if described else [],
                          key=lambda s: s.dataset_version_at_last_update, reverse=True):
        size += segment.size_bytes
        if size > FTS_MERGE_BYTES and not merge_all:
            break
        merged += 1
    dataset.optimize.optimize_indices(index_names=[index_name], num_indices_to_merge=merged)


_NAMESPACE_CLIENT = "lance_namespace_urllib3_client"
_defer_lock = threading.Lock()


def import_lancedb():
    """``import lancedb``, without building the REST client of Lance namespaces at import.

    ``lancedb.db`` imports ``lance_namespace``, whose models come from the generated
    ``lance_namespace_urllib3_client`` package; that package's ``__init__`` also imports its
    nine REST API modules, which wrap 366 methods in pydantic's ``validate_call``: 1.1-2 s of
    a 2.7-3.4 s ``import lancedb`` here (``python -X importtime``), for a client that only
    ``lancedb.connect_namespace("rest", ...)`` uses. The package is put in ``sys.modules``
    with its path but without running its ``__init__``; its models (which ``lance_namespace``
    needs) import as submodules, and the first use of anything else the ``__init__`` defines
    runs it then (a PEP 562 module ``__getattr__``), so every name still resolves. The same
    deferral upstream: lance-format/lance#9273 (for ``import lance``). Returns the module.
    """
    with _defer_lock:
        if _NAMESPACE_CLIENT not in sys.modules and "lancedb" not in sys.modules:
            spec = importlib.util.find_spec(_NAMESPACE_CLIENT)
            if spec is not None and spec.loader is not None and spec.submodule_search_locations is not None:
                package = importlib.util.module_from_spec(spec)

                def complete(name: str):
                    with _defer_lock:
                        if "__getattr__" in package.__dict__:
                            del package.__dict__["__getattr__"]
                            spec.loader.exec_module(package)
                    return getattr(package, name)

                package.__getattr__ = complete
                sys.modules[_NAMESPACE_CLIENT] = package
    import lancedb  # lazy: 1-1.5 s even so (pyarrow, the native library); only when a store opens

    return lancedb


class LanceDBStore:
    """A LanceDB table named after the collection, under ``uri`` (a directory or ``s3://``).

    ``storage_options`` go to ``lancedb.connect`` for an object store (LanceDB's names:
    ``aws_endpoint``, ``aws_region``, ``aws_access_key_id``, ``aws_secret_access_key``,
    ``allow_http``); ``write_lock`` makes the context manager every write holds, for writers on
    several machines.

    Raises :class:`StoreError` when LanceDB fails, with the table and operation named.
    """

    def __init__(self, uri: str | Path, collection: str, *, storage_options: dict[str, str] | None = None,
                 write_lock: Callable[[], AbstractContextManager] | None = None) -> None:
        self.uri, self.collection = str(uri), collection
        self._storage_options = dict(storage_options or {})
        self._write_lock = write_lock
        self._conn = None
        self._table = None
        # The table handles known to have been migrated (the name-vector columns; the terms
        # column and its full-text index): once a column or index exists it is never removed
        # but with the table, and a table dropped or made again is a new handle, checked anew.
        self._names_ready = None
        self._lexical_ready = None

    @property
    def _db(self):
        """The LanceDB connection, opened on first use (the import alone costs about a second)."""
        if self._conn is None:
            use_one_malloc_arena()
            lancedb = import_lancedb()
            use_system_arrow_pool()
            try:
                # Always read the latest version: other processes write the same table.
                self._conn = lancedb.connect(self.uri, read_consistency_interval=timedelta(0),
                                             storage_options=self._storage_options or None)
            except Exception as exc:  # lancedb raises plain exceptions of several kinds
                raise StoreError(f"cannot open the LanceDB store at {self.uri}: {exc}") from exc
        return self._conn

    @contextmanager
    def _writing(self):
        """Hold the table's write lock and yield the latest table: the caller's lock when one
        was given, else a file lock beside a local table; a remote table without a given lock
        has one writer only (the embedded mode)."""
        table = self._require()
        if self._write_lock is not None:
            with self._write_lock():
                table.checkout_latest()
                yield table
            return
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
            pa.field("vector", pa.list_(pa.float32(), dimension)), pa.field(TERMS, pa.string()),
            pa.field(NAME_VECTOR, pa.list_(pa.float32(), dimension), nullable=True),
            pa.field("names_sha256", pa.string()),
        ])

    def _open(self):
        """The table, opened on first use; None when there is none."""
        if self._table is None:
            try:
                self._table = self._db.open_table(self.collection)
            except ValueError as exc:
                _let_go(exc)
                return None
            except Exception as exc:
                if "not found" in str(exc).lower():
                    _let_go(exc)
                    return None
                raise StoreError(f"cannot open table {self.collection} in {self.uri}: {exc}") from exc
        return self._table

    def _forget_if_gone(self, exc: Exception) -> bool:
        """True (and the table handle forgotten) when the table is gone: ``exc`` says something
        was not found and the table cannot be opened again (another instance dropped it, as
        ``verify --repair`` does, since this one opened it). A table that opens again but lost
        a data file (``Not found: .../data/x.lance``) is damage, not absence: False."""
        if "not found" not in str(exc).lower():
            return False
        self._table = None
        return self._open() is None

    def _answered_absent(self, exc: Exception) -> bool:
        """:meth:`_forget_if_gone`, for a caller that answers a gone table (nothing to count,
        delete or fold) rather than raises: the error is let go with its traceback
        (:func:`_let_go`)."""
        if not self._forget_if_gone(exc):
            return False
        _let_go(exc)
        return True

    def ensure_collection(self, dimension: int) -> None:
        """Create the table if missing (concurrent creators: the loser opens the winner's), also
        when another instance dropped it since this one opened it."""
        table = self._open()
        if table is not None:
            try:
                table.checkout_latest()
                self._ensure_name_vectors()
                return self._ensure_lexical()
            except StoreError:
                raise
            except Exception as exc:  # lancedb raises plain exceptions
                if not self._answered_absent(exc):
                    raise StoreError(f"cannot read table {self.collection} in {self.uri}: {exc}") from exc
        try:
            self._table = self._db.create_table(self.collection, schema=self._schema(dimension), exist_ok=True)
        except Exception as exc:
            raise StoreError(f"cannot create table {self.collection} in {self.uri}: {exc}") from exc
        self._ensure_lexical()

    def _ensure_name_vectors(self) -> None:
        """Give a table written before name vectors existed its :data:`NAME_VECTOR` column (null in
        every row: never computed) and its ``names_sha256`` column ("" in every row). Those rows
        rank by their vector alone until their files are indexed again; ``codeindex verify``
        lists them and ``--repair`` indexes them. Under the write lock; a no-op (one look at the
        schema, the first time for this table handle) once both columns exist. Raises StoreError
        when LanceDB fails."""
        if self._names_ready is not None and self._names_ready is self._table:
            return
        if {NAME_VECTOR, "names_sha256"} <= self._columns():
            self._names_ready = self._table
            return
        import pyarrow as pa  # lazy: see _schema

        try:
            with self._writing() as table:
                if NAME_VECTOR not in table.schema.names:
                    dimension = table.schema.field("vector").type.list_size
                    table.add_columns(pa.field(NAME_VECTOR, pa.list_(pa.float32(), dimension), nullable=True))
                if "names_sha256" not in table.schema.names:
                    table.add_columns({"names_sha256": "''"})  # a SQL expression per row (LanceDB docs)
            self._names_ready = table
        except (StoreError, LockTimeoutError):
            raise
        except Exception as exc:
            raise StoreError(f"cannot add the name vectors to {self.collection} in {self.uri}: {exc}") from exc

    def _columns(self) -> set[str]:
        """The table's column names (its latest version); StoreError when it cannot be read or
        no longer exists (Lance's own errors never escape: tasks retry StoreError only)."""
        names = self._read("read the schema", lambda table: set(table.schema.names), None)
        if names is None:
            raise StoreError(f"collection {self.collection} does not exist in {self.uri}")
        return names

    def _fts_index(self, table):
        """The full-text index on :data:`TERMS`, or None."""
        return next((i for i in table.list_indices() if i.index_type == "FTS" and TERMS in i.columns), None)

    def _ensure_lexical(self) -> None:
        """Give the table its full-text side when it lacks it: a table written before the lexical
        index existed gets the :data:`TERMS` column, filled from each row's path and content in
        batches (a partial ``merge_insert`` on the id, which touches no other column), then the
        index. Runs under the write lock, once per table; a no-op afterwards (one look at the
        schema and the index list, the first time for this table handle). Raises StoreError when
        LanceDB fails (the table is left readable; the next call completes the migration)."""
        if self._lexical_ready is not None and self._lexical_ready is self._table:
            return
        if TERMS in self._columns() and self._read("list the indexes", self._fts_index, None) is not None:
            self._lexical_ready = self._table
            return
        import pyarrow as pa  # lazy: see _schema
        from lancedb.index import FTS  # lazy: with LanceDB

        try:
            with self._writing() as table:
                if TERMS not in table.schema.names:
                    table.add_columns(pa.field(TERMS, pa.string()))
                    rows = table.search().select(["id", "path", "content"]).limit(None).to_arrow()
                    for batch in rows.to_batches(max_chunksize=_SQL_BATCH):
                        ids, paths, contents = (batch.column(n).to_pylist() for n in ("id", "path", "content"))
                        terms = [document_terms(p, c) for p, c in zip(paths, contents)]
                        table.merge_insert("id").when_matched_update_all().execute(
                            pa.table({"id": ids, TERMS: terms}))
                if self._fts_index(table) is None:
                    # Whitespace only: the terms are already code-aware (indexing/lexical.py);
                    # lower-casing, English stemming and stop words serve the natural-language part.
                    table.create_index(TERMS, config=FTS(base_tokenizer="whitespace", with_position=False),
                                       replace=True)
            self._lexical_ready = table
        except (StoreError, LockTimeoutError):
            raise
        except Exception as exc:
            raise StoreError(f"cannot build the full-text index of {self.collection} in {self.uri}: {exc}") from exc

    def _refresh_lexical(self, table, threshold: int) -> bool:
        """Fold the rows written since the full-text index was last brought up to date into it
        once there are ``threshold`` of them: a new index
        segment, merged with the newest ones within :data:`FTS_MERGE_BYTES`
        (:func:`_fold_into_index`). The table's data files are not rewritten (compaction is
        :meth:`compact`'s); until the fold the rows are searched exactly, by a flat scan. Call
        under the write lock. Returns whether it folded: the caller then lets the connection go
        and trims, once the lock is released (:meth:`_release_connection`)."""
        index = self._fold_due(table, threshold)
        if index is None:
            return False
        _release_native_memory()  # what the writes since the last fold freed: the fold starts from less
        _fold_into_index(table, index.name)
        return True

    def _fold_due(self, table, threshold: int):
        """The full-text index when ``threshold`` or more rows of ``table`` are outside it, else
        None (also without an index). A read: it needs no lock."""
        index = self._fts_index(table)
        if index is None or table.index_stats(index.name).num_unindexed_rows < threshold:
            return None
        return index

    def settle(self, *, final: bool = True) -> None:
        """Fold the rows still outside the full-text index into it: after a sync's last write
        (``final``) once there are :data:`FTS_REFRESH_ROWS` of them, between its batches once
        there are :data:`FTS_SEGMENT_ROWS`. A write never folds by itself: inside ``upsert`` a
        fold ran while the batch's rows (its objects, their Arrow columns) were still alive,
        about 15 MB more of glibc's heap in use at every fold of part D's 10,000-path sync. A
        fold starts with a ``malloc_trim`` of what the writes since the last one freed, and ends
        by letting the connection go (:meth:`_release_connection`): the resident size at the
        start of that sync's folds went from 382-440 MB to 346-369 MB (docs/performance.md, D).
        A no-op without a table; the write lock is taken only when a fold is due (a look at the
        index's statistics first, as every read, without it: a sync settles after each batch)."""
        table = self._open()
        if table is None:
            return
        threshold = FTS_REFRESH_ROWS if final else FTS_SEGMENT_ROWS
        try:
            if self._fold_due(table, threshold) is None:
                return
            with self._writing() as table:
                folded = self._refresh_lexical(table, threshold)
            if folded:
                self._release_connection()
        except (StoreError, LockTimeoutError):
            raise
        except Exception as exc:
            if self._answered_absent(exc):
                return
            raise StoreError(f"refresh of the full-text index of {self.collection} failed: {exc}") from exc

    def upsert(self, objects: Sequence[VectorObject]) -> int:
        if not objects:
            return 0
        import pyarrow as pa  # lazy: see _schema

        dimension = int(np.asarray(objects[0].vector).shape[0])
        # One row per id, the newest fence's (the last of equal ones): merge_insert refuses a
        # source that matches a stored row twice, and would insert a new id twice.
        newest: dict[str, VectorObject] = {}
        for obj in objects:
            if obj.id not in newest or obj.fence >= newest[obj.id].fence:
                newest[obj.id] = obj
        objects = list(newest.values())
        columns = {name: [getattr(o, name) for o in objects] for name in _PROPERTIES}
        columns[TERMS] = [document_terms(o.path, o.content) for o in objects]
        matrix = np.stack([np.asarray(o.vector, dtype=np.float32) for o in objects])
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dimension)
        try:
            columns[NAME_VECTOR] = vector_array([o.name_vector for o in objects], dimension)
        except ValueError as exc:
            raise StoreError(f"upsert of {len(objects)} objects into {self.collection}: a name vector: {exc}") from None
        unknown_names = columns[NAME_VECTOR].null_count > 0
        if unknown_names and not (np.isfinite(matrix).all() and
                                  all(np.isfinite(o.name_vector).all() for o in objects if o.name_vector is not None)):
            raise StoreError(f"upsert of {len(objects)} objects into {self.collection}: a vector holds NaN or infinity")
        data = pa.Table.from_pydict(columns, schema=self._schema(dimension))
        if self._open() is not None:
            self._ensure_name_vectors()  # a table from before them gets its columns first
        try:
            with self._writing() as table:
                if unknown_names and table.schema.field("vector").type.list_size != dimension:
                    raise StoreError(f"upsert of {len(objects)} objects into {self.collection}: vectors of "
                                     f"{dimension} dimensions, the table's are {table.schema.field('vector').type.list_size}")
                result = (
                    table.merge_insert("id")
                    .when_matched_update_all(where="target.fence <= source.fence")
                    .when_not_matched_insert_all()
                    # A null name vector (never computed) is what LanceDB's vector check calls bad;
                    # the vectors' values and dimension were checked above, so only those nulls
                    # meet "null" (which would null a vector of the wrong dimension too).
                    .execute(data, on_bad_vectors="null" if unknown_names else "error")
                )
        except (StoreError, LockTimeoutError):
            raise
        except Exception as exc:
            self._forget_if_gone(exc)
            raise StoreError(f"upsert of {len(objects)} objects into {self.collection} failed: {exc}") from exc
        return int(result.num_inserted_rows + result.num_updated_rows)

    def _release_connection(self) -> None:
        """Let go of the LanceDB connection and table (the next call opens them again, a few
        milliseconds) and give what Lance freed back to the system. What Lance keeps for an open
        connection grows with the rows written through it (about 150 bytes a row in glibc's
        bytes in use: 30 -> 79 MB over a 10,000-path sync's 315,000 rows; in a loop of writes
        alone, all of that growth was freed when the connection went), so a long sync that kept
        one connection grew with its change list. :meth:`settle` calls this after it folded rows
        into the full-text index (every :data:`FTS_SEGMENT_ROWS` rows between a large sync's
        batches: every sixth batch; reopening after every write cost up to a fifth more upsert
        time) (docs/performance.md, D)."""
        self._conn = self._table = self._names_ready = self._lexical_ready = None
        _release_native_memory()

    def delete(self, ids: Sequence[str], fence: int) -> None:
        if not ids:
            return
        try:
            with self._writing() as table:
                for part in _in_lists(ids):
                    table.delete(f"id IN ({part}) AND fence <= {int(fence)}")
        except (StoreError, LockTimeoutError):
            raise
        except Exception as exc:
            if self._answered_absent(exc):
                return  # nothing left to delete
            raise StoreError(f"delete of {len(ids)} objects from {self.collection} failed: {exc}") from exc

    def _require(self):
        table = self._open()
        if table is None:
            raise StoreError(f"collection {self.collection} does not exist in {self.uri}")
        return table

    def _read(self, what: str, read, absent):
        """``read(table)`` on the latest version; ``absent`` when there is no table (never made,
        or dropped by another instance since this one opened it). StoreError when LanceDB fails."""
        table = self._open()
        if table is None:
            return absent
        try:
            table.checkout_latest()
            return read(table)
        except Exception as exc:  # lancedb raises plain exceptions
            if not self._answered_absent(exc):
                raise StoreError(f"{what} of {self.collection} in {self.uri} failed: {exc}") from exc
        return absent

    def _scan(self, columns: Sequence[str], where: str | None = None):
        def read(table):
            query = table.search().select(list(columns))
            if where:
                query = query.where(where)
            return query.limit(None).to_arrow()

        return self._read("scan", read, None)

    def chunk_indexes(self, repo: str, paths: Sequence[str]) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for part in _in_lists(list(dict.fromkeys(paths))):
            data = self._scan(["path", "chunk_index"], f"repo = {_quote(repo)} AND path IN ({part})")
            if data is None:
                return {}
            for path, index in zip(data.column("path").to_pylist(), data.column("chunk_index").to_pylist()):
                found.setdefault(path, []).append(index)
        return found

    def search(self, vector: np.ndarray, k: int, filters: SearchFilter | None = None) -> list[SearchHit]:
        where = where_clause(filters)

        query_vector = np.asarray(vector, dtype=np.float32)

        def read(table):
            query = table.search(query_vector, vector_column_name="vector").distance_type("cosine")
            if where:
                query = query.where(where, prefilter=True)
            names = [NAME_VECTOR] if self._names_ready is table or NAME_VECTOR in table.schema.names else []
            return query.limit(k).select([*_HIT_COLUMNS, *names, "_distance"]).to_list()

        rows = self._read("search", read, [])
        return [SearchHit(**{name: row[name] for name in _HIT_COLUMNS}, score=1.0 - float(row["_distance"]),
                          name_score=name_similarity(query_vector, row.get(NAME_VECTOR))) for row in rows]

    def lexical_search(self, terms: str, k: int, filters: SearchFilter | None = None) -> list[SearchHit]:
        """LanceDB's native full-text search (BM25) over :data:`TERMS`, ``filters`` as a pre-filter.
        A table from before the lexical index or the name vectors is migrated first
        (:meth:`_ensure_lexical`, :meth:`_ensure_name_vectors`)."""
        if not terms.strip() or self._open() is None:
            return []
        self._ensure_name_vectors()
        self._ensure_lexical()
        where = where_clause(filters)

        def read(table):
            query = table.search(terms, query_type="fts", fts_columns=TERMS)
            if where:
                query = query.where(where, prefilter=True)
            return query.limit(k).select([*_HIT_COLUMNS, "_score"]).to_list()

        rows = self._read("lexical search", read, [])
        return [SearchHit(**{name: row[name] for name in _HIT_COLUMNS}, score=float(row["_score"])) for row in rows]

    def count(self, repo: str | None = None) -> int:
        return int(self._read("count", lambda table: table.count_rows(f"repo = {_quote(repo)}" if repo else None), 0))

    def inventory(self, repo: str) -> Iterator[StoredChunk]:
        if self._open() is None:
            return
        names = [NAME_VECTOR] if NAME_VECTOR in self._columns() else []
        data = self._scan(["id", "path", "chunk_index", "content", "content_sha256", *names], f"repo = {_quote(repo)}")
        if data is None:
            return
        for batch in data.to_batches(max_chunksize=2048):
            named = (batch.column(NAME_VECTOR).is_valid().to_pylist() if names else [False] * batch.num_rows)
            for i, row in enumerate(batch.select(["id", "path", "chunk_index", "content", "content_sha256"]).to_pylist()):
                yield StoredChunk(**row, named=named[i])

    def objects(self, repo: str) -> Iterator[VectorObject]:
        """Every object of ``repo`` with its vector, read from the latest version at the call (one
        scan: a write committed afterwards is not seen)."""
        if self._open() is not None:
            self._ensure_name_vectors()  # a table from before them gets its (empty) columns first
        data = self._scan([*_PROPERTIES, "vector", NAME_VECTOR], f"repo = {_quote(repo)}")
        if data is None:
            return
        for batch in data.to_batches(max_chunksize=1024):
            vectors = batch.column("vector").flatten().to_numpy(zero_copy_only=False)
            width = len(vectors) // max(1, batch.num_rows)
            name_vectors = vector_list(batch.column(NAME_VECTOR), width)
            for i, row in enumerate(batch.select(list(_PROPERTIES)).to_pylist()):
                yield VectorObject(**row, vector=vectors[i * width:(i + 1) * width].astype(np.float32),
                                   name_vector=name_vectors[i])

    def compact(self, keep_seconds: float, *, dry_run: bool = False) -> Compaction:
        """LanceDB's maintenance of the table (``Table.optimize``, the way its docs ask for after
        many small writes: merge small files, fold new rows into the indexes, remove versions
        older than ``cleanup_older_than``; then the full-text index's segments, which the syncs'
        refreshes leave, merged into one: :func:`_fold_into_index`), under the write lock, so no
        upsert or delete runs meanwhile and the rows stay exactly as they were.
        ``keep_seconds``: versions younger than that stay, for readers still on them (0 only when
        no other process reads the table; LanceDB warns, and is told here that it was meant).
        ``optimize`` prunes before it updates the indexes, and that update commits one more
        version, so a second ``optimize`` (nothing left to merge: it writes no version) prunes
        the one the first left behind; a pass over a compacted table therefore removes nothing.
        ``dry_run``: the versions that would go, nothing changed. Bytes are those of the
        table's directory (None on an object store). Raises StoreError."""
        table = self._open()
        if table is None:
            return Compaction(self.collection, 0, 0, [], None, None)
        older_than = timedelta(seconds=keep_seconds)
        try:
            if dry_run:
                table.checkout_latest()
                versions = self._versions(table)
                cutoff = time.time() - keep_seconds
                doomed = [v for v, at in versions[:-1] if at < cutoff]
                size = self._disk_bytes()
                return Compaction(self.collection, len(versions), len(versions) - len(doomed), doomed, size, size)
            with self._writing() as table:
                before, bytes_before = self._versions(table), self._disk_bytes()
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than=0\)")
                    table.optimize(cleanup_older_than=older_than)
                    index = self._fts_index(table)
                    if index is not None and table.index_stats(index.name).num_indices > 1:
                        _fold_into_index(table, index.name, merge_all=True)
                    table.optimize(cleanup_older_than=older_than)
                after = self._versions(table)
        except (StoreError, LockTimeoutError):
            raise
        except Exception as exc:  # lancedb raises plain exceptions
            raise StoreError(f"compaction of {self.collection} in {self.uri} failed: {exc}") from exc
        kept = {v for v, _ in after}
        return Compaction(self.collection, len(before), len(after), [v for v, _ in before if v not in kept],
                          bytes_before, self._disk_bytes())

    @staticmethod
    def _versions(table) -> list[tuple[int, float]]:
        """The table's versions, oldest first, with their commit times (Unix seconds)."""
        return sorted((int(v["version"]), v["timestamp"].timestamp()) for v in table.list_versions())

    def _disk_bytes(self) -> int | None:
        """Bytes under the table's directory (data, versions, indexes); None on an object store."""
        if "://" in self.uri and not self.uri.startswith("file://"):
            return None
        return tree_size(Path(self.uri.removeprefix("file://")) / f"{self.collection}.lance")

    def drop(self) -> None:
        try:
            if self._open() is not None:
                self._db.drop_table(self.collection)
        except Exception as exc:
            raise StoreError(f"cannot drop table {self.collection} in {self.uri}: {exc}") from exc
        self._table = None

    def export(self, with_vectors: bool = False) -> Iterator[dict]:
        columns = list(EXPORT_FIELDS) + (["vector"] if with_vectors else [])
        if self._open() is not None:
            self._ensure_name_vectors()  # a table from before them gets its (empty) columns first
        data = self._scan(columns)
        if data is None:
            return
        data = data.sort_by("id")
        for batch in data.to_batches(max_chunksize=1024):
            yield from batch.to_pylist()
