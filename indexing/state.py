"""Sync state: collections and their model, repositories, file hashes, sync runs, failures.

The embedded default keeps it in SQLite under ``.codeindex/``; a fleet keeps the same
records in PostgreSQL. A file whose hash matches its state is UNCHANGED and costs nothing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from indexing.errors import StaleFenceError, StoreError

_SQL_BATCH = 500


def utcnow() -> str:
    """The current UTC time as ISO 8601 with seconds (``2026-11-21T20:31:00.000+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def seconds_since(iso: str | None) -> float | None:
    """Seconds (one decimal) from the ISO-8601 time ``iso`` (UTC when it names no zone) to now;
    None for None or an empty string."""
    if not iso:
        return None
    moment = datetime.fromisoformat(iso)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return round((datetime.now(timezone.utc) - moment).total_seconds(), 1)


@dataclass(frozen=True, slots=True)
class CollectionMeta:
    """The embedding model a collection was built with; another model is refused."""

    name: str
    embedding_model: str
    dimension: int
    distance: str


@dataclass(frozen=True, slots=True)
class RepoRecord:
    """A repository in the index: ``fence`` is the last fencing token granted for it,
    ``committed_fence`` the token of the last sync that committed. A granted token above the
    committed one belongs to a sync that is running or that failed, maybe after upserts."""

    repo_id: str
    root: str
    collection: str
    last_commit: str | None
    fence: int
    committed_fence: int = 0
    filter_fingerprint: str | None = None  # the filter settings the index was last evaluated under
    url: str | None = None  # a repository added by git URL (no credentials); None: added by path (``root``)
    branch: str | None = None


@dataclass(frozen=True, slots=True)
class FileState:
    """What was indexed of one file: content hash, size in bytes, number of chunks; ``linked``:
    the path leads through a symlink, so its content can change without the path being named."""

    path: str
    sha256: str
    size: int
    chunk_count: int
    encoding: str
    language: str
    fence: int
    indexed_at: str
    linked: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "linked", bool(self.linked))


class RunStatus(StrEnum):
    """Where a sync run stands. ``partial``: some files failed (reported), the rest went in;
    ``dry-run`` is the status of a summary that wrote nothing (never stored)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    REFUSED = "refused"  # refused to protect the index (mass delete, another model), or bad input
    ABANDONED = "abandoned"  # its process ended (interrupted, killed) before it finished
    REISSUED = "reissued"  # its worker died; the run named in its message does its work
    DRY_RUN = "dry-run"


@dataclass(slots=True)
class RunRecord:
    """One sync run and its counts. ``owner`` is the process running it (``host:pid``),
    ``task_id`` its plan task, ``request`` the :class:`~indexing.messages.SyncRequest` as JSON:
    what a run whose process died is re-issued from."""

    id: str
    repo_id: str
    trigger: str
    status: RunStatus = RunStatus.RUNNING
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: int = 0
    errors: int = 0
    bytes: int = 0
    files_total: int = 0
    files_done: int = 0
    started_at: str = field(default_factory=utcnow)
    finished_at: str | None = None
    message: str = ""
    shard_id: str = ""
    owner: str = ""
    task_id: str = ""
    request: str = ""

    def __post_init__(self) -> None:
        self.status = RunStatus(self.status)


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """A dead-letter record: a task that failed for good, its JSON ``arguments``
    (``{"args": [...], "kwargs": {...}}``) and error text; ``replayed_at`` once re-enqueued."""

    id: int
    run_id: str | None
    task: str
    arguments: str
    error: str
    created_at: str
    replayed_at: str | None = None


@dataclass(frozen=True, slots=True)
class RepoStats:
    """One repository of the index: its root, collection, last indexed commit, and how many
    files, chunks and bytes are indexed."""

    repo_id: str
    root: str
    collection: str
    last_commit: str | None
    files: int
    chunks: int
    bytes: int
    url: str | None = None
    branch: str | None = None
    indexed_at: str | None = None  # when the last sync committed (ISO-8601), None before the first


class StateStore(Protocol):
    """Where sync state lives (SQLite here, PostgreSQL in a fleet). Raises StoreError on failure."""

    def collection_meta(self, name: str) -> CollectionMeta | None:
        """The model collection ``name`` was built with, or None before its first write."""
        ...

    def set_collection_meta(self, meta: CollectionMeta) -> None:
        """Record a collection's model; a collection already recorded keeps its first model."""
        ...

    def get_repo(self, repo_id: str) -> RepoRecord | None:
        """The repository record, or None when it was never synced."""
        ...

    def grant_fence(self, repo_id: str, root: str, collection: str) -> int:
        """Register the repository if new and return its next fencing token (1, 2, ...)."""
        ...

    def set_source(self, repo_id: str, collection: str, url: str, branch: str) -> None:
        """Register a repository added by git URL (``url`` without credentials), or change the
        URL and branch of one registered so; its index is untouched."""
        ...

    def file_states(self, repo_id: str, paths: Sequence[str]) -> dict[str, FileState]:
        """The recorded state of those of ``paths`` that are indexed."""
        ...

    def indexed_paths(self, repo_id: str) -> list[str]:
        """Every indexed path of the repository, sorted."""
        ...

    def linked_paths(self, repo_id: str) -> list[str]:
        """The indexed paths that lead through a symlink (``FileState.linked``), sorted."""
        ...

    def all_file_states(self, repo_id: str) -> list[FileState]:
        """Every indexed file of the repository, sorted by path."""
        ...

    def indexed_chunks(self, repo_id: str) -> int:
        """How many chunks the repository's indexed files have: the objects the store should hold."""
        ...

    def commit_files(self, repo_id: str, fence: int, upserts: Sequence[FileState],
                     deletes: Sequence[str], last_commit: str | None,
                     filter_fingerprint: str | None = None) -> None:
        """Record a sync's file outcomes atomically (and, when given, the new last commit and the
        filter settings' fingerprint); raise StaleFenceError for an outdated ``fence``."""
        ...

    def start_run(self, run: RunRecord) -> None:
        """Record (or restart, for a redelivered message) a running sync."""
        ...

    def advance_run(self, run_id: str, files_done: int) -> None:
        """Add ``files_done`` to the run's progress counter."""
        ...

    def finish_run(self, run: RunRecord) -> None:
        """Store the run's final counts and status."""
        ...

    def get_run(self, run_id: str) -> RunRecord | None:
        """One run, or None."""
        ...

    def running_runs(self, *, repo_id: str | None = None, shard_id: str | None = None) -> list[RunRecord]:
        """The runs still marked running, of one repository or one shard (or all), oldest first."""
        ...

    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        """The newest runs first."""
        ...

    def record_failure(self, run_id: str | None, task: str, arguments: dict, error: str) -> None:
        """Add a dead-letter record: the task name, its JSON arguments and the error text."""
        ...

    def failures(self, limit: int = 20) -> list[FailureRecord]:
        """The newest dead-letter records first."""
        ...

    def get_failure(self, failure_id: int) -> FailureRecord | None:
        """One dead-letter record, or None."""
        ...

    def failure_counts(self) -> dict[str, int]:
        """How many dead-letter records there are: ``{"pending": n, "replayed": m}`` (replayed:
        re-enqueued by ``codeindex failures replay``)."""
        ...

    def mark_failure_replayed(self, failure_id: int) -> None:
        """Stamp ``replayed_at`` on a dead-letter record that was re-enqueued."""
        ...

    def expired_runs(self, cutoff: str, limit: int) -> list[str]:
        """Retention: the ids of at most ``limit`` finished runs started before ISO-8601
        ``cutoff``, oldest first."""
        ...

    def delete_runs(self, run_ids: Sequence[str]) -> int:
        """Delete those of ``run_ids`` that are not running; return how many were deleted."""
        ...

    def expired_failures(self, cutoff: str, limit: int) -> list[int]:
        """Retention: the ids of at most ``limit`` dead-letter records created before ISO-8601
        ``cutoff`` and replayed since (a record never replayed stays: its work is not done), oldest first."""
        ...

    def delete_failures(self, failure_ids: Sequence[int]) -> int:
        """Delete those of ``failure_ids`` that were replayed; return how many were deleted."""
        ...

    def repo_stats(self) -> list[RepoStats]:
        """Every repository, sorted by id."""
        ...


FAILURE_COLUMNS = "id, run_id, task, arguments, error, created_at, replayed_at"
#: Both stores answer :meth:`StateStore.failure_counts` with this query.
FAILURE_COUNTS_SQL = ("SELECT SUM(CASE WHEN replayed_at IS NULL THEN 1 ELSE 0 END) AS pending, "
                      "SUM(CASE WHEN replayed_at IS NULL THEN 0 ELSE 1 END) AS replayed FROM failures")
FILE_COLUMNS = "path, sha256, size, chunk_count, encoding, language, fence, indexed_at, linked"
#: Both stores answer :meth:`StateStore.repo_stats` with this query.
REPO_STATS_SQL = (
    "SELECT r.repo_id, r.root, r.collection, r.last_commit, COUNT(f.path) AS files, "
    "CAST(COALESCE(SUM(f.chunk_count), 0) AS bigint) AS chunks, CAST(COALESCE(SUM(f.size), 0) AS bigint) AS bytes, "
    "r.url, r.branch, CASE WHEN r.committed_fence > 0 THEN r.updated_at END AS indexed_at "
    "FROM repos r LEFT JOIN files f ON f.repo_id = r.repo_id GROUP BY r.repo_id, r.root, r.collection, "
    "r.last_commit, r.url, r.branch, r.committed_fence, r.updated_at ORDER BY r.repo_id")
#: The columns of a :class:`RepoRecord`, as both stores select them.
REPO_COLUMNS = "repo_id, root, collection, last_commit, fence, committed_fence, filter_fingerprint, url, branch"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY, embedding_model TEXT NOT NULL, dimension INTEGER NOT NULL,
    distance TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS repos (
    repo_id TEXT PRIMARY KEY, root TEXT NOT NULL, collection TEXT NOT NULL,
    last_commit TEXT, fence INTEGER NOT NULL DEFAULT 0, committed_fence INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL, filter_fingerprint TEXT, url TEXT, branch TEXT);
CREATE TABLE IF NOT EXISTS files (
    repo_id TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL, encoding TEXT NOT NULL, language TEXT NOT NULL,
    fence INTEGER NOT NULL, indexed_at TEXT NOT NULL, linked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (repo_id, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sync_runs (
    id TEXT PRIMARY KEY, repo_id TEXT NOT NULL, trigger TEXT NOT NULL, status TEXT NOT NULL,
    added INTEGER NOT NULL, updated INTEGER NOT NULL, deleted INTEGER NOT NULL,
    unchanged INTEGER NOT NULL, skipped INTEGER NOT NULL, errors INTEGER NOT NULL,
    bytes INTEGER NOT NULL, files_total INTEGER NOT NULL, files_done INTEGER NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT, message TEXT NOT NULL, shard_id TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '', task_id TEXT NOT NULL DEFAULT '', request TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT, task TEXT NOT NULL,
    arguments TEXT NOT NULL, error TEXT NOT NULL, created_at TEXT NOT NULL, replayed_at TEXT);
"""


def _parts(values: Sequence, size: int = _SQL_BATCH) -> Iterator[Sequence]:
    """``values`` in slices of at most ``size`` (SQLite's limit on bound parameters)."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


class SQLiteStateStore:
    """Sync state in one SQLite file (rollback journal, one connection per thread).

    With ``readonly=True`` nothing is ever written, and a missing file reads as an empty
    state until a writer creates it (what ``--dry-run`` needs: it must not even create the file).
    Raises :class:`StoreError` for a database error, :class:`StaleFenceError` from
    :meth:`commit_files` when a newer writer already committed.
    """

    def __init__(self, path: Path, readonly: bool = False, timeout: float = 30.0) -> None:
        self.path, self.readonly, self.timeout = Path(path), readonly, timeout
        self._local = threading.local()
        self._absent = readonly and not self.path.exists()
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._conn().executescript(_SCHEMA)
                self._migrate()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the state database {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        """Add the columns later versions introduced to a database an older version created."""
        conn = self._conn()
        for table, column, decl in (("sync_runs", "shard_id", "TEXT NOT NULL DEFAULT ''"),
                                    ("failures", "replayed_at", "TEXT"),
                                    ("repos", "filter_fingerprint", "TEXT"),
                                    ("files", "linked", "INTEGER NOT NULL DEFAULT 0"),
                                    ("sync_runs", "owner", "TEXT NOT NULL DEFAULT ''"),
                                    ("sync_runs", "task_id", "TEXT NOT NULL DEFAULT ''"),
                                    ("sync_runs", "request", "TEXT NOT NULL DEFAULT ''"),
                                    ("repos", "url", "TEXT"), ("repos", "branch", "TEXT")):
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.readonly:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=self.timeout)
            else:
                conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
                # A rollback journal, not WAL: a read-only reader (--dry-run) then creates no
                # -wal/-shm files, so a dry run leaves the index directory byte for byte as it was.
                conn.execute("PRAGMA journal_mode=DELETE")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    class _Tx:
        def __init__(self, store: SQLiteStateStore) -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            if self.store.readonly:
                raise StoreError("the state store is open read-only (dry run)")
            self.conn = self.store._conn()
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                raise StoreError(f"state database {self.store.path}: {error}") from error
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                    return
                except sqlite3.Error as error:  # a full disk, an I/O error at the commit
                    self._rollback()
                    raise StoreError(f"state database {self.store.path}: {error}") from error
            self._rollback()
            if issubclass(exc_type, sqlite3.Error):
                # A failed statement ("database is locked", a full disk) is a store failure.
                raise StoreError(f"state database {self.store.path}: {exc}") from exc

        def _rollback(self) -> None:
            """Roll back, if SQLite has not already: after SQLITE_FULL or an I/O error it rolls
            back by itself, and a failing ROLLBACK must not hide the error that caused it."""
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _tx(self) -> SQLiteStateStore._Tx:
        return SQLiteStateStore._Tx(self)

    def _query(self, sql: str, params: Iterable = ()) -> list[sqlite3.Row]:
        if self._absent:
            if not self.path.exists():
                return []
            self._absent = False  # a writer created it since (a sync this reader follows)
        try:
            return self._conn().execute(sql, list(params)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path}: {exc}") from exc

    # collections and repositories

    def collection_meta(self, name: str) -> CollectionMeta | None:
        rows = self._query("SELECT name, embedding_model, dimension, distance FROM collections WHERE name = ?", [name])
        return CollectionMeta(**dict(rows[0])) if rows else None

    def set_collection_meta(self, meta: CollectionMeta) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR IGNORE INTO collections VALUES (?, ?, ?, ?, ?)",
                         [meta.name, meta.embedding_model, meta.dimension, meta.distance, utcnow()])

    def get_repo(self, repo_id: str) -> RepoRecord | None:
        rows = self._query(f"SELECT {REPO_COLUMNS} FROM repos WHERE repo_id = ?", [repo_id])
        return RepoRecord(**dict(rows[0])) if rows else None

    def grant_fence(self, repo_id: str, root: str, collection: str) -> int:
        """Register the repository if new and return its next fencing token (1, 2, ...)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO repos (repo_id, root, collection, fence, updated_at) VALUES (?, ?, ?, 0, ?) "
                "ON CONFLICT (repo_id) DO UPDATE SET root = excluded.root", [repo_id, root, collection, utcnow()])
            conn.execute("UPDATE repos SET fence = fence + 1 WHERE repo_id = ?", [repo_id])
            return int(conn.execute("SELECT fence FROM repos WHERE repo_id = ?", [repo_id]).fetchone()[0])

    def set_source(self, repo_id: str, collection: str, url: str, branch: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO repos (repo_id, root, collection, fence, updated_at, url, branch) "
                "VALUES (?, '', ?, 0, ?, ?, ?) ON CONFLICT (repo_id) DO UPDATE SET url = excluded.url, "
                "branch = excluded.branch", [repo_id, collection, utcnow(), url, branch])

    # files

    def file_states(self, repo_id: str, paths: Sequence[str]) -> dict[str, FileState]:
        out: dict[str, FileState] = {}
        for part in _parts(list(dict.fromkeys(paths))):
            rows = self._query(
                f"SELECT {FILE_COLUMNS} FROM files "
                f"WHERE repo_id = ? AND path IN ({','.join('?' * len(part))})", [repo_id, *part])
            out.update({row["path"]: FileState(**dict(row)) for row in rows})
        return out

    def indexed_paths(self, repo_id: str) -> list[str]:
        return [r[0] for r in self._query("SELECT path FROM files WHERE repo_id = ? ORDER BY path", [repo_id])]

    def linked_paths(self, repo_id: str) -> list[str]:
        return [r[0] for r in self._query("SELECT path FROM files WHERE repo_id = ? AND linked = 1 ORDER BY path",
                                          [repo_id])]

    def all_file_states(self, repo_id: str) -> list[FileState]:
        return [FileState(**dict(r)) for r in self._query(
            f"SELECT {FILE_COLUMNS} FROM files WHERE repo_id = ? ORDER BY path", [repo_id])]

    def indexed_chunks(self, repo_id: str) -> int:
        rows = self._query("SELECT COALESCE(SUM(chunk_count), 0) FROM files WHERE repo_id = ?", [repo_id])
        return int(rows[0][0]) if rows else 0

    def commit_files(self, repo_id: str, fence: int, upserts: Sequence[FileState],
                     deletes: Sequence[str], last_commit: str | None,
                     filter_fingerprint: str | None = None) -> None:
        """Record the outcome of a sync atomically, refusing a writer older than the last commit.

        Raises :class:`StaleFenceError` when a sync with a newer fence has committed already.
        """
        with self._tx() as conn:
            row = conn.execute("SELECT committed_fence FROM repos WHERE repo_id = ?", [repo_id]).fetchone()
            if row is None:
                raise StoreError(f"repository {repo_id} is not registered in {self.path}")
            if row[0] > fence:
                raise StaleFenceError(
                    f"sync with fencing token {fence} for {repo_id} is stale: token {row[0]} already committed")
            conn.executemany(
                f"INSERT INTO files (repo_id, {FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (repo_id, path) DO UPDATE SET "
                "sha256 = excluded.sha256, size = excluded.size, chunk_count = excluded.chunk_count, "
                "encoding = excluded.encoding, language = excluded.language, fence = excluded.fence, "
                "indexed_at = excluded.indexed_at, linked = excluded.linked",
                [[repo_id, f.path, f.sha256, f.size, f.chunk_count, f.encoding, f.language, f.fence, f.indexed_at,
                  int(f.linked)] for f in upserts])
            conn.executemany("DELETE FROM files WHERE repo_id = ? AND path = ?", [[repo_id, p] for p in deletes])
            conn.execute("UPDATE repos SET committed_fence = ?, updated_at = ? WHERE repo_id = ?",
                         [fence, utcnow(), repo_id])
            if last_commit:
                conn.execute("UPDATE repos SET last_commit = ? WHERE repo_id = ?", [last_commit, repo_id])
            if filter_fingerprint:
                conn.execute("UPDATE repos SET filter_fingerprint = ? WHERE repo_id = ?", [filter_fingerprint, repo_id])

    # runs and failures

    def start_run(self, run: RunRecord) -> None:
        values = asdict(run)
        with self._tx() as conn:
            # Idempotent: a redelivered plan message restarts the same run.
            conn.execute(f"INSERT INTO sync_runs ({','.join(values)}) VALUES ({','.join('?' * len(values))}) "
                         f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{k} = excluded.{k}' for k in values if k != 'id')}",
                         list(values.values()))

    def advance_run(self, run_id: str, files_done: int) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE sync_runs SET files_done = files_done + ? WHERE id = ?", [files_done, run_id])

    def finish_run(self, run: RunRecord) -> None:
        values = asdict(run)
        run_id = values.pop("id")
        with self._tx() as conn:
            conn.execute(f"UPDATE sync_runs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                         [*values.values(), run_id])

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._query("SELECT * FROM sync_runs WHERE id = ?", [run_id])
        return RunRecord(**dict(rows[0])) if rows else None

    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        return [RunRecord(**dict(r)) for r in self._query(
            "SELECT * FROM sync_runs ORDER BY started_at DESC, rowid DESC LIMIT ?", [limit])]

    def running_runs(self, *, repo_id: str | None = None, shard_id: str | None = None) -> list[RunRecord]:
        return [RunRecord(**dict(r)) for r in self._query(
            "SELECT * FROM sync_runs WHERE status = ? AND (? IS NULL OR repo_id = ?) AND (? IS NULL OR shard_id = ?) "
            "ORDER BY started_at, rowid", [RunStatus.RUNNING, repo_id, repo_id, shard_id, shard_id])]

    def record_failure(self, run_id: str | None, task: str, arguments: dict, error: str) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO failures (run_id, task, arguments, error, created_at) VALUES (?, ?, ?, ?, ?)",
                         [run_id, task, json.dumps(arguments, sort_keys=True, default=str), error, utcnow()])

    def failures(self, limit: int = 20) -> list[FailureRecord]:
        """The newest dead-letter records, newest first."""
        return [FailureRecord(**dict(r)) for r in self._query(
            f"SELECT {FAILURE_COLUMNS} FROM failures ORDER BY id DESC LIMIT ?", [limit])]

    def get_failure(self, failure_id: int) -> FailureRecord | None:
        rows = self._query(f"SELECT {FAILURE_COLUMNS} FROM failures WHERE id = ?", [failure_id])
        return FailureRecord(**dict(rows[0])) if rows else None

    def failure_counts(self) -> dict[str, int]:
        rows = self._query(FAILURE_COUNTS_SQL)  # no rows: no state file yet
        row = dict(rows[0]) if rows else {}
        return {"pending": int(row.get("pending") or 0), "replayed": int(row.get("replayed") or 0)}

    def mark_failure_replayed(self, failure_id: int) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE failures SET replayed_at = ? WHERE id = ?", [utcnow(), failure_id])

    def expired_runs(self, cutoff: str, limit: int) -> list[str]:
        return [r["id"] for r in self._query("SELECT id FROM sync_runs WHERE started_at < ? AND status != ? "
                                             "ORDER BY started_at, id LIMIT ?", [cutoff, RunStatus.RUNNING, limit])]

    def delete_runs(self, run_ids: Sequence[str]) -> int:
        with self._tx() as conn:
            return sum(conn.execute(f"DELETE FROM sync_runs WHERE status != ? AND id IN ({','.join('?' * len(part))})",
                                    [RunStatus.RUNNING, *part]).rowcount for part in _parts(run_ids))

    def expired_failures(self, cutoff: str, limit: int) -> list[int]:
        return [r["id"] for r in self._query("SELECT id FROM failures WHERE created_at < ? AND replayed_at IS NOT NULL "
                                             "ORDER BY id LIMIT ?", [cutoff, limit])]

    def delete_failures(self, failure_ids: Sequence[int]) -> int:
        with self._tx() as conn:
            return sum(conn.execute(f"DELETE FROM failures WHERE replayed_at IS NOT NULL AND id IN "
                                    f"({','.join('?' * len(part))})", list(part)).rowcount
                       for part in _parts(failure_ids))

    def repo_stats(self) -> list[RepoStats]:
        """Every repository with its files, chunks and bytes indexed, sorted by id."""
        return [RepoStats(**dict(r)) for r in self._query(REPO_STATS_SQL)]
