"""Sync state in PostgreSQL, shared by every worker of a fleet (the records of :mod:`indexing.state`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, fields

import psycopg

from indexing.errors import StaleFenceError, StoreError
from indexing.postgres import PgDatabase, open_migrated
from indexing.state import (
    FAILURE_COLUMNS, FAILURE_COUNTS_SQL, REPO_COLUMNS, REPO_STATS_SQL, CollectionMeta, FailureRecord, FileState, RepoRecord, RepoStats,
    RunRecord, RunStatus, utcnow,
)

#: Rows per statement when file states are written or read by the thousand.
_BATCH = 5000

#: The state's tables, in creation order. Each statement is idempotent; a column added after a
#: release goes at the end as ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``. Timestamps are
#: ISO-8601 text, as in SQLite, so both stores return the same strings. Keys and times sort
#: bytewise (COLLATE "C"), as SQLite sorts them. The shard registry's tables are
#: ``workers.registry``'s.
STATE_SCHEMA: list[str] = [
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
    # The single-schema bookkeeping of earlier versions; codeindex_migrations replaced it.
    "DROP TABLE IF EXISTS codeindex_schema",
    "ALTER TABLE repos ADD COLUMN IF NOT EXISTS filter_fingerprint text",
    "ALTER TABLE files ADD COLUMN IF NOT EXISTS linked boolean NOT NULL DEFAULT false",
    "ALTER TABLE sync_runs ADD COLUMN IF NOT EXISTS owner text NOT NULL DEFAULT ''",
    "ALTER TABLE sync_runs ADD COLUMN IF NOT EXISTS task_id text NOT NULL DEFAULT ''",
    "ALTER TABLE sync_runs ADD COLUMN IF NOT EXISTS request text NOT NULL DEFAULT ''",
    "CREATE INDEX IF NOT EXISTS sync_runs_running ON sync_runs (status, shard_id)",
    "ALTER TABLE repos ADD COLUMN IF NOT EXISTS url text",
    "ALTER TABLE repos ADD COLUMN IF NOT EXISTS branch text",
]


_RUN_COLUMNS = [f.name for f in fields(RunRecord)]
_FILE_FIELDS = [f.name for f in fields(FileState)]
_FILE_COLUMNS = ", ".join(_FILE_FIELDS)
# The rows travel as one JSON array per statement: psycopg dumps 10,000-element Python lists
# as arrays slower than the server inserts them; json.dumps is C.
_UPSERT_FILES = (
    "INSERT INTO files (repo_id, path, sha256, size, chunk_count, encoding, language, fence, indexed_at, linked) "
    "SELECT %s::text, * FROM json_to_recordset(%s::json) AS t(path text, sha256 text, size bigint, "
    "chunk_count integer, encoding text, language text, fence bigint, indexed_at text, linked boolean) "
    "ON CONFLICT (repo_id, path) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, "
    "chunk_count = excluded.chunk_count, encoding = excluded.encoding, language = excluded.language, "
    "fence = excluded.fence, indexed_at = excluded.indexed_at, linked = excluded.linked")


class PostgresStateStore:
    """Sync state in PostgreSQL: the semantics of :class:`~indexing.state.SQLiteStateStore`.

    ``database`` is a DSN, or a :class:`~indexing.postgres.PgDatabase` shared with the shard
    registry. The schema is created or migrated at construction. With ``readonly=True``
    nothing is ever written (not even the schema), and a database without the tables reads
    as an empty state. ``connect_timeout`` is in seconds, rounded up (libpq waits at least 2);
    ``statement_timeout_ms`` bounds every statement, lock waits included.
    Raises :class:`StoreError` for a database error, :class:`StaleFenceError` from
    :meth:`commit_files` when a newer writer already committed.
    """

    def __init__(self, database: str | PgDatabase, *, readonly: bool = False, connect_timeout: float = 5.0,
                 statement_timeout_ms: int = 30_000) -> None:
        readonly = database.readonly if isinstance(database, PgDatabase) else readonly
        self.db = open_migrated(database, "state", STATE_SCHEMA, migrated=not readonly, what="state store",
                                connect_timeout=connect_timeout, statement_timeout_ms=statement_timeout_ms,
                                readonly=readonly)
        self.readonly = self.db.readonly

    def close(self) -> None:
        """Close the store's connections."""
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
        rows = self._query(f"SELECT {REPO_COLUMNS} FROM repos WHERE repo_id = %s", [repo_id])
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

    def set_source(self, repo_id: str, collection: str, url: str, branch: str) -> None:
        self.db.write(lambda conn: conn.execute(
            "INSERT INTO repos (repo_id, root, collection, fence, updated_at, url, branch) "
            "VALUES (%s, '', %s, 0, %s, %s, %s) ON CONFLICT (repo_id) DO UPDATE SET url = excluded.url, "
            "branch = excluded.branch", [repo_id, collection, utcnow(), url, branch]))

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

    def linked_paths(self, repo_id: str) -> list[str]:
        return [r["path"] for r in self._query("SELECT path FROM files WHERE repo_id = %s AND linked ORDER BY path",
                                               [repo_id])]

    def all_file_states(self, repo_id: str) -> list[FileState]:
        return [FileState(**r) for r in self._query(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE repo_id = %s ORDER BY path", [repo_id])]

    def indexed_chunks(self, repo_id: str) -> int:
        rows = self._query("SELECT COALESCE(SUM(chunk_count), 0)::bigint AS n FROM files WHERE repo_id = %s", [repo_id])
        return int(rows[0]["n"]) if rows else 0

    def commit_files(self, repo_id: str, fence: int, upserts: Sequence[FileState],
                     deletes: Sequence[str], last_commit: str | None,
                     filter_fingerprint: str | None = None) -> None:
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
                         "last_commit = COALESCE(%s, last_commit), "
                         "filter_fingerprint = COALESCE(%s, filter_fingerprint) WHERE repo_id = %s",
                         [fence, utcnow(), last_commit or None, filter_fingerprint or None, repo_id])

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

    def running_runs(self, *, repo_id: str | None = None, shard_id: str | None = None) -> list[RunRecord]:
        return [RunRecord(**r) for r in self._query(
            f"SELECT {', '.join(_RUN_COLUMNS)} FROM sync_runs WHERE status = %s "
            "AND (%s::text IS NULL OR repo_id = %s) AND (%s::text IS NULL OR shard_id = %s) ORDER BY started_at, seq",
            [RunStatus.RUNNING, repo_id, repo_id, shard_id, shard_id])]

    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        return [RunRecord(**r) for r in self._query(
            f"SELECT {', '.join(_RUN_COLUMNS)} FROM sync_runs ORDER BY started_at DESC, seq DESC LIMIT %s",
            [limit])]

    def record_failure(self, run_id: str | None, task: str, arguments: dict, error: str) -> None:
        self.db.write(lambda conn: conn.execute(
            "INSERT INTO failures (run_id, task, arguments, error, created_at) VALUES (%s, %s, %s, %s, %s)",
            [run_id, task, json.dumps(arguments, sort_keys=True, default=str), error, utcnow()]))

    def failures(self, limit: int = 20) -> list[FailureRecord]:
        """The newest dead-letter records, newest first."""
        return [FailureRecord(**r) for r in self._query(
            f"SELECT {FAILURE_COLUMNS} FROM failures ORDER BY id DESC LIMIT %s", [limit])]

    def get_failure(self, failure_id: int) -> FailureRecord | None:
        rows = self._query(f"SELECT {FAILURE_COLUMNS} FROM failures WHERE id = %s", [failure_id])
        return FailureRecord(**rows[0]) if rows else None

    def failure_counts(self) -> dict[str, int]:
        rows = self._query(FAILURE_COUNTS_SQL)  # no rows: the tables are not created yet
        row = rows[0] if rows else {}
        return {"pending": int(row.get("pending") or 0), "replayed": int(row.get("replayed") or 0)}

    def mark_failure_replayed(self, failure_id: int) -> None:
        self.db.write(lambda conn: conn.execute(
            "UPDATE failures SET replayed_at = %s WHERE id = %s", [utcnow(), failure_id]))

    def expired_runs(self, cutoff: str, limit: int) -> list[str]:
        return [r["id"] for r in self._query("SELECT id FROM sync_runs WHERE started_at < %s AND status <> %s "
                                             "ORDER BY started_at, id LIMIT %s", [cutoff, RunStatus.RUNNING, limit])]

    def delete_runs(self, run_ids: Sequence[str]) -> int:
        return self.db.write(lambda conn: conn.execute(
            "DELETE FROM sync_runs WHERE status <> %s AND id = ANY(%s)", [RunStatus.RUNNING, list(run_ids)]).rowcount)

    def expired_failures(self, cutoff: str, limit: int) -> list[int]:
        return [r["id"] for r in self._query("SELECT id FROM failures WHERE created_at < %s AND replayed_at IS NOT NULL "
                                             "ORDER BY id LIMIT %s", [cutoff, limit])]

    def delete_failures(self, failure_ids: Sequence[int]) -> int:
        return self.db.write(lambda conn: conn.execute(
            "DELETE FROM failures WHERE replayed_at IS NOT NULL AND id = ANY(%s)", [list(failure_ids)]).rowcount)

    def repo_stats(self) -> list[RepoStats]:
        """Every repository with its files, chunks and bytes indexed, sorted by id."""
        return [RepoStats(**r) for r in self._query(REPO_STATS_SQL)]
