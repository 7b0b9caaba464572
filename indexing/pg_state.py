"""Sync state in PostgreSQL, shared by every worker of a fleet (the records of :mod:`indexing.state`).

Also the PostgreSQL plumbing the shard registry reuses: :data:`SCHEMA` (every codeindex table),
:func:`migrate`, and :class:`PgConnections` (one connection per thread and process).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from typing import TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row, tuple_row

from indexing.errors import StaleFenceError, StoreError
from indexing.state import CollectionMeta, FileState, RepoRecord, RunRecord, utcnow

log = logging.getLogger("codeindex.postgres")

T = TypeVar("T")

#: Rows per statement when file states are written or read by the thousand.
_BATCH = 5000

#: Every codeindex table, in creation order. Each statement is idempotent; a column added after
#: a release goes at the end as ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``. State timestamps are
#: ISO-8601 text, as in SQLite, so both stores return the same strings; the registry's are
#: timestamptz, compared with the database clock. Keys and times sort bytewise (COLLATE "C"),
#: as SQLite sorts them.
SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS collections (
        name text PRIMARY KEY, embedding_model text NOT NULL, dimension integer NOT NULL,
        distance text NOT NULL, created_at text NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS repos (
        repo_id text COLLATE "C" PRIMARY KEY, root text NOT NULL, collection text NOT NULL,
        last_commit text, fence bigint NOT NULL DEFAULT 0, committed_fence bigint NOT NULL DEFAULT 0,
        updated_at text NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS files (
        repo_id text COLLATE "C" NOT NULL, path text COLLATE "C" NOT NULL, sha256 text NOT NULL,
        size bigint NOT NULL, chunk_count integer NOT NULL, encoding text NOT NULL,
        language text NOT NULL, fence bigint NOT NULL, indexed_at text NOT NULL,
        PRIMARY KEY (repo_id, path))""",
    """CREATE TABLE IF NOT EXISTS sync_runs (
        seq bigint GENERATED ALWAYS AS IDENTITY, id text PRIMARY KEY, repo_id text NOT NULL,
        trigger text NOT NULL, status text NOT NULL, added bigint NOT NULL, updated bigint NOT NULL,
        deleted bigint NOT NULL, unchanged bigint NOT NULL, skipped bigint NOT NULL,
        errors bigint NOT NULL, bytes bigint NOT NULL, files_total bigint NOT NULL,
        files_done bigint NOT NULL, started_at text COLLATE "C" NOT NULL, finished_at text,
        message text NOT NULL, shard_id text NOT NULL DEFAULT '')""",
    "CREATE INDEX IF NOT EXISTS sync_runs_started ON sync_runs (started_at, seq)",
    """CREATE TABLE IF NOT EXISTS failures (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, run_id text, task text NOT NULL,
        arguments text NOT NULL, error text NOT NULL, created_at text NOT NULL, replayed_at text)""",
    """CREATE TABLE IF NOT EXISTS shards (
        shard_id text COLLATE "C" PRIMARY KEY, name text NOT NULL, address text NOT NULL,
        capacity integer NOT NULL CHECK (capacity > 0),
        status text NOT NULL CHECK (status IN ('active', 'draining', 'offline')),
        last_heartbeat timestamptz NOT NULL, registered_at timestamptz NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS assignments (
        repo_id text COLLATE "C" PRIMARY KEY, shard_id text COLLATE "C" NOT NULL,
        assigned_at timestamptz NOT NULL, moved_at timestamptz)""",
    "CREATE INDEX IF NOT EXISTS assignments_shard_id ON assignments (shard_id)",
    # Monotonic counters (``moves``: repositories moved between shards) for the metrics.
    "CREATE TABLE IF NOT EXISTS registry_counters (name text PRIMARY KEY, value bigint NOT NULL)",
    """CREATE TABLE IF NOT EXISTS codeindex_schema (
        id integer PRIMARY KEY CHECK (id = 1), ddl_sha256 text NOT NULL, migrated_at timestamptz NOT NULL)""",
]

_SCHEMA_SHA256 = hashlib.sha256("\n;\n".join(SCHEMA).encode()).hexdigest()
#: The pg_advisory_xact_lock key that serialises migrations (any fixed bigint).
_MIGRATION_LOCK = int.from_bytes(hashlib.sha256(b"codeindex.migrate").digest()[:8], "big", signed=True)


def _schema_current(conn: psycopg.Connection) -> bool:
    cur = conn.cursor(row_factory=tuple_row)
    if cur.execute("SELECT to_regclass('codeindex_schema')").fetchone()[0] is None:
        return False
    row = cur.execute("SELECT ddl_sha256 FROM codeindex_schema WHERE id = 1").fetchone()
    return row is not None and row[0] == _SCHEMA_SHA256


def migrate(conn: psycopg.Connection) -> None:
    """Create or update every codeindex table; safe when several processes start at once.

    Cheap when the schema is current (one lookup, no lock), so every worker may call it on start.
    Otherwise the DDL runs in one transaction under an advisory lock, so two migrations never
    interleave. ``conn`` should be in autocommit mode; inside a caller's transaction the lock
    and the DDL last until that transaction ends.
    """
    if _schema_current(conn):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
        if _schema_current(conn):
            return
        for statement in SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO codeindex_schema VALUES (1, %s, now()) ON CONFLICT (id) DO UPDATE "
                     "SET ddl_sha256 = excluded.ddl_sha256, migrated_at = excluded.migrated_at",
                     [_SCHEMA_SHA256])


def _secrets(dsn: str) -> set[str]:
    """The password(s) a DSN carries, to keep them out of messages, even from a malformed DSN."""
    found = set(re.findall(r"://[^:/@\s]*:([^@\s]+)@", dsn))
    found.update(m.strip("'") for m in re.findall(r"password\s*=\s*('[^']*'|[^\s&]+)", dsn))
    try:
        found.add(conninfo_to_dict(dsn).get("password") or "")
    except psycopg.Error:
        pass
    return {s for s in found if s}


def _describe(params: dict) -> str:
    """``postgresql://user@host:port/dbname``, without the password."""
    user = f"{params['user']}@" if params.get("user") else ""
    return f"postgresql://{user}{params.get('host') or 'localhost'}:{params.get('port') or 5432}/" \
           f"{params.get('dbname') or ''}"


class _Held:
    """A thread's connection and the process that opened it; closed when the thread ends."""

    __slots__ = ("conn", "pid")

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn, self.pid = conn, os.getpid()

    def __del__(self) -> None:
        # In a forked child the socket is the parent's: closing it would end the parent's session.
        if self.pid == os.getpid():
            self.conn.close()


class PgConnections:
    """Connections to one PostgreSQL database: one per thread and process, opened on first use.

    A forked child (Celery prefork) never uses its parent's socket: the process id is checked
    on every use. A read is retried once on a fresh connection when its connection broke; a
    write runs in one transaction and is retried once only when the connection broke before
    its COMMIT was sent. Every database error becomes a :class:`StoreError` that names the
    server, never the password. ``readonly`` connections refuse writes in the server too.
    """

    def __init__(self, dsn: str, *, what: str, connect_timeout: float = 5.0,
                 statement_timeout_ms: int = 30_000, readonly: bool = False) -> None:
        self.what, self.readonly = what, readonly
        self._secrets = _secrets(dsn)
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise StoreError(f"{what}: the PostgreSQL DSN is malformed: {self._scrub(str(exc))}") from None
        self.target = _describe(params)
        options = [params.get("options") or "", f"-c statement_timeout={int(statement_timeout_ms)}",
                   "-c TimeZone=UTC", "-c default_transaction_read_only=on" if readonly else ""]
        self._conninfo = make_conninfo(
            dsn, connect_timeout=max(1, math.ceil(connect_timeout)), options=" ".join(filter(None, options)),
            application_name=params.get("application_name") or "codeindex")
        self._local = threading.local()

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _error(self, exc: BaseException, suffix: str = "") -> StoreError:
        return StoreError(f"{self.what} at {self.target}: {self._scrub(str(exc)).strip()}{suffix}")

    def connection(self) -> psycopg.Connection:
        """This thread's connection in this process (autocommit, rows as dicts), opened if needed."""
        held = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid() or held.conn.closed:
            try:
                conn = psycopg.connect(self._conninfo, autocommit=True, row_factory=dict_row)
            except psycopg.Error as exc:
                raise StoreError(f"cannot connect to the {self.what} at {self.target}: "
                                 f"{self._scrub(str(exc)).strip()}") from None
            held = self._local.held = _Held(conn)
        return held.conn

    def close(self) -> None:
        """Close this thread's connection (those of other threads close when their thread ends)."""
        held = self._local.__dict__.pop("held", None)
        if held is not None and held.pid == os.getpid():
            held.conn.close()

    def read(self, sql: str, params: Sequence = (), *, absent_ok: bool = False) -> list[dict]:
        """The rows of one query. ``absent_ok``: a missing table reads as no rows."""
        def work(conn: psycopg.Connection) -> list[dict]:
            try:
                return conn.execute(sql, params).fetchall()
            except pg_errors.UndefinedTable:
                if absent_ok:
                    return []
                raise
        return self.run(work, transaction=False)

    def write(self, work: Callable[[psycopg.Connection], T]) -> T:
        """``work(conn)`` in one transaction; its result. Raises StoreError on a read-only store."""
        if self.readonly:
            raise StoreError(f"the {self.what} is open read-only (dry run): nothing may be written")
        return self.run(work, transaction=True)

    def run(self, work: Callable[[psycopg.Connection], T], *, transaction: bool) -> T:
        """``work(conn)``, in a transaction or not, retried once on a fresh connection when the
        connection broke (for a transaction: before its COMMIT was sent)."""
        retried = False
        while True:
            conn = self.connection()
            committing = False
            try:
                if not transaction:
                    return work(conn)
                with conn.transaction():
                    result = work(conn)
                    committing = True
                return result
            except psycopg.Error as exc:
                if not retried and conn.closed and not committing:
                    log.warning("postgres connection lost, reconnecting what=%s target=%s error=%s",
                                self.what, self.target, self._scrub(str(exc)).strip())
                    retried = True
                    continue
                raise self._error(exc, "; the write may or may not have been committed"
                                 if committing and conn.closed else "") from exc


_RUN_COLUMNS = [f.name for f in fields(RunRecord)]
_FAILURE_COLUMNS = "id, run_id, task, arguments, error, created_at, replayed_at"
_FILE_FIELDS = [f.name for f in fields(FileState)]
_FILE_COLUMNS = ", ".join(_FILE_FIELDS)
# The rows travel as one JSON array per statement: psycopg dumps 10,000-element Python lists
# as arrays slower than the server inserts them; json.dumps is C.
_UPSERT_FILES = (
    "INSERT INTO files (repo_id, path, sha256, size, chunk_count, encoding, language, fence, indexed_at) "
    "SELECT %s::text, * FROM json_to_recordset(%s::json) AS t(path text, sha256 text, size bigint, "
    "chunk_count integer, encoding text, language text, fence bigint, indexed_at text) "
    "ON CONFLICT (repo_id, path) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, "
    "chunk_count = excluded.chunk_count, encoding = excluded.encoding, language = excluded.language, "
    "fence = excluded.fence, indexed_at = excluded.indexed_at")


class PostgresStateStore:
    """Sync state in PostgreSQL: the semantics of :class:`~indexing.state.SQLiteStateStore`.

    The schema is created or migrated at construction. With ``readonly=True`` nothing is ever
    written (not even the schema), and a database without the tables reads as an empty state.
    ``connect_timeout`` is in seconds, rounded up (libpq waits at least 2); ``statement_timeout_ms``
    bounds every statement, lock waits included.
    Raises :class:`StoreError` for a database error, :class:`StaleFenceError` from
    :meth:`commit_files` when a newer writer already committed.
    """

    def __init__(self, dsn: str, *, readonly: bool = False, connect_timeout: float = 5.0,
                 statement_timeout_ms: int = 30_000) -> None:
        self.readonly = readonly
        self.db = PgConnections(dsn, what="state store", connect_timeout=connect_timeout,
                                statement_timeout_ms=statement_timeout_ms, readonly=readonly)
        if not readonly:
            self.db.run(migrate, transaction=False)

    def close(self) -> None:
        """Close this thread's connection."""
        self.db.close()

    def _query(self, sql: str, params: Sequence = ()) -> list[dict]:
        return self.db.read(sql, params, absent_ok=self.readonly)

    # collections and repositories

    def collection_meta(self, name: str) -> CollectionMeta | None:
        rows = self._query("SELECT name, embedding_model, dimension, distance FROM collections WHERE name = %s",
                           [name])
        return CollectionMeta(**rows[0]) if rows else None

    def set_collection_meta(self, meta: CollectionMeta) -> None:
        self.db.write(lambda conn: conn.execute(
            "INSERT INTO collections VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
            [meta.name, meta.embedding_model, meta.dimension, meta.distance, utcnow()]))

    def get_repo(self, repo_id: str) -> RepoRecord | None:
        rows = self._query("SELECT repo_id, root, collection, last_commit, fence, committed_fence FROM repos "
                           "WHERE repo_id = %s", [repo_id])
        return RepoRecord(**rows[0]) if rows else None

    def grant_fence(self, repo_id: str, root: str, collection: str) -> int:
        """Register the repository if new and return its next fencing token (1, 2, ...).

        One upsert: concurrent callers in any process get distinct, consecutive tokens.
        """
        row = self.db.write(lambda conn: conn.execute(
            "INSERT INTO repos (repo_id, root, collection, fence, updated_at) VALUES (%s, %s, %s, 1, %s) "
            "ON CONFLICT (repo_id) DO UPDATE SET root = excluded.root, fence = repos.fence + 1 RETURNING fence",
            [repo_id, root, collection, utcnow()]).fetchone())
        return int(row["fence"])

    # files

    def file_states(self, repo_id: str, paths: Sequence[str]) -> dict[str, FileState]:
        out: dict[str, FileState] = {}
        unique = list(dict.fromkeys(paths))
        for start in range(0, len(unique), _BATCH):
            rows = self._query(f"SELECT {_FILE_COLUMNS} FROM files WHERE repo_id = %s AND path = ANY(%s)",
                               [repo_id, unique[start : start + _BATCH]])
            out.update({row["path"]: FileState(**row) for row in rows})
        return out

    def indexed_paths(self, repo_id: str) -> list[str]:
        return [r["path"] for r in self._query("SELECT path FROM files WHERE repo_id = %s ORDER BY path",
                                               [repo_id])]

    def commit_files(self, repo_id: str, fence: int, upserts: Sequence[FileState],
                     deletes: Sequence[str], last_commit: str | None) -> None:
        """Record the outcome of a sync atomically, refusing a writer older than the last commit.

        The repository row is locked first, so a concurrent commit waits and then sees this
        one's fence. Raises :class:`StaleFenceError` when a sync with a newer fence has committed.
        """
        # One row per path: a path given twice keeps its last state, as SQLite's upserts do.
        files = list({f.path: f for f in upserts}.values())
        deleting = list(dict.fromkeys(deletes))

        def work(conn: psycopg.Connection) -> None:
            row = conn.execute("SELECT committed_fence FROM repos WHERE repo_id = %s FOR UPDATE",
                               [repo_id]).fetchone()
            if row is None:
                raise StoreError(f"repository {repo_id} is not registered in the {self.db.what} at {self.db.target}")
            if row["committed_fence"] > fence:
                raise StaleFenceError(f"sync with fencing token {fence} for {repo_id} is stale: "
                                      f"token {row['committed_fence']} already committed")
            for start in range(0, len(files), _BATCH):
                part = files[start : start + _BATCH]
                conn.execute(_UPSERT_FILES, [repo_id, json.dumps(
                    [{name: getattr(f, name) for name in _FILE_FIELDS} for f in part])])
            for start in range(0, len(deleting), _BATCH):
                conn.execute("DELETE FROM files WHERE repo_id = %s AND path = ANY(%s)",
                             [repo_id, deleting[start : start + _BATCH]])
            conn.execute("UPDATE repos SET committed_fence = %s, updated_at = %s, "
                         "last_commit = COALESCE(%s, last_commit) WHERE repo_id = %s",
                         [fence, utcnow(), last_commit or None, repo_id])

        self.db.write(work)

    # runs and failures

    def start_run(self, run: RunRecord) -> None:
        values = asdict(run)
        # Idempotent: a redelivered plan message restarts the same run.
        self.db.write(lambda conn: conn.execute(
            f"INSERT INTO sync_runs ({', '.join(values)}) VALUES ({', '.join(['%s'] * len(values))}) "
            f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{k} = excluded.{k}' for k in values if k != 'id')}",
            list(values.values())))

    def advance_run(self, run_id: str, files_done: int) -> None:
        self.db.write(lambda conn: conn.execute(
            "UPDATE sync_runs SET files_done = files_done + %s WHERE id = %s", [files_done, run_id]))

    def finish_run(self, run: RunRecord) -> None:
        values = asdict(run)
        run_id = values.pop("id")
        self.db.write(lambda conn: conn.execute(
            f"UPDATE sync_runs SET {', '.join(f'{k} = %s' for k in values)} WHERE id = %s",
            [*values.values(), run_id]))

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._query(f"SELECT {', '.join(_RUN_COLUMNS)} FROM sync_runs WHERE id = %s", [run_id])
        return RunRecord(**rows[0]) if rows else None

    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        return [RunRecord(**r) for r in self._query(
            f"SELECT {', '.join(_RUN_COLUMNS)} FROM sync_runs ORDER BY started_at DESC, seq DESC LIMIT %s",
            [limit])]

    def record_failure(self, run_id: str | None, task: str, arguments: dict, error: str) -> None:
        self.db.write(lambda conn: conn.execute(
            "INSERT INTO failures (run_id, task, arguments, error, created_at) VALUES (%s, %s, %s, %s, %s)",
            [run_id, task, json.dumps(arguments, sort_keys=True, default=str), error, utcnow()]))

    def failures(self, limit: int = 20) -> list[dict]:
        """The newest dead-letter records, newest first."""
        return self._query(f"SELECT {_FAILURE_COLUMNS} FROM failures ORDER BY id DESC LIMIT %s", [limit])

    def get_failure(self, failure_id: int) -> dict | None:
        rows = self._query(f"SELECT {_FAILURE_COLUMNS} FROM failures WHERE id = %s", [failure_id])
        return rows[0] if rows else None

    def mark_failure_replayed(self, failure_id: int) -> None:
        self.db.write(lambda conn: conn.execute(
            "UPDATE failures SET replayed_at = %s WHERE id = %s", [utcnow(), failure_id]))

    def delete_runs_before(self, cutoff: str) -> int:
        return self.db.write(lambda conn: conn.execute(
            "DELETE FROM sync_runs WHERE started_at < %s AND status <> 'running'", [cutoff]).rowcount)

    def repo_stats(self) -> list[dict]:
        """Per repository: id, root, collection, last commit, files and chunks indexed."""
        return self._query(
            "SELECT r.repo_id, r.root, r.collection, r.last_commit, COUNT(f.path) AS files, "
            "COALESCE(SUM(f.chunk_count), 0)::bigint AS chunks, COALESCE(SUM(f.size), 0)::bigint AS bytes "
            "FROM repos r LEFT JOIN files f ON f.repo_id = r.repo_id GROUP BY r.repo_id ORDER BY r.repo_id")
