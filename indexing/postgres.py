"""PostgreSQL access shared by the state store and the shard registry: a connection pool
(psycopg_pool) with timeouts on every connect and statement, errors that name the server but
never the password, and per-component schema migrations under an advisory lock.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from indexing.errors import StoreError

log = logging.getLogger("codeindex.postgres")

T = TypeVar("T")

#: Which schema each component migrated to (component -> SHA-256 of its DDL).
_MIGRATIONS_DDL = ("CREATE TABLE IF NOT EXISTS codeindex_migrations (component text PRIMARY KEY, "
                   "ddl_sha256 text NOT NULL, migrated_at timestamptz NOT NULL)")
#: The pg_advisory_xact_lock key that serialises migrations (any fixed bigint).
_MIGRATION_LOCK = int.from_bytes(hashlib.sha256(b"codeindex.migrate").digest()[:8], "big", signed=True)


def _digest(statements: Sequence[str]) -> str:
    return hashlib.sha256("\n;\n".join(statements).encode()).hexdigest()


def _migrated(conn: psycopg.Connection, component: str, digest: str) -> bool:
    cur = conn.cursor(row_factory=tuple_row)
    if cur.execute("SELECT to_regclass('codeindex_migrations')").fetchone()[0] is None:
        return False
    row = cur.execute("SELECT ddl_sha256 FROM codeindex_migrations WHERE component = %s", [component]).fetchone()
    return row is not None and row[0] == digest


def migrate(conn: psycopg.Connection, component: str, statements: Sequence[str]) -> None:
    """Bring ``component``'s tables to ``statements`` (idempotent DDL, run in order); safe when
    several processes start at once.

    Cheap when current (one lookup, no lock), so every process may call it on start. Otherwise
    the DDL runs in one transaction under an advisory lock, so two migrations never interleave.
    ``conn`` should be in autocommit mode.
    """
    digest = _digest(statements)
    if _migrated(conn, component, digest):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
        conn.execute(_MIGRATIONS_DDL)
        if _migrated(conn, component, digest):
            return
        for statement in statements:
            conn.execute(statement)
        conn.execute("INSERT INTO codeindex_migrations VALUES (%s, %s, now()) ON CONFLICT (component) DO UPDATE "
                     "SET ddl_sha256 = excluded.ddl_sha256, migrated_at = excluded.migrated_at",
                     [component, digest])


def open_migrated(database: str | PgDatabase, component: str, statements: Sequence[str], *, migrated: bool = True,
                  **options) -> PgDatabase:
    """``database`` (a DSN, opened with ``options``, or a shared :class:`PgDatabase`) with
    ``component``'s tables migrated (unless ``migrated`` is False: a read-only user). A pool
    opened here is closed again when the migration fails, or it would go on reconnecting in
    the background. Raises StoreError."""
    owned = not isinstance(database, PgDatabase)
    db = PgDatabase(database, **options) if owned else database
    if migrated:
        try:
            db.run(lambda conn: migrate(conn, component, statements), transaction=False)
        except BaseException:
            if owned:
                db.close()
            raise
    return db


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


class _ConnectionLost(Exception):
    """A connection broke before its work committed: the work may run again on a fresh one."""

    def __init__(self, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.error = error


class PgDatabase:
    """A pool of connections to one PostgreSQL database (psycopg_pool's ``ConnectionPool``).

    ``connect_timeout`` (seconds) bounds each connection attempt and the wait for a pooled
    connection: a publisher facing an unreachable server fails after it with a
    :class:`StoreError` instead of hanging. ``statement_timeout_ms`` bounds every statement,
    lock waits included. A pooled connection is checked before it is lent; work whose
    connection broke while it ran is run once more on a fresh connection (for a transaction:
    only when the break came before its COMMIT was sent). ``readonly``
    connections refuse writes in the server too. ``what`` names the database in messages.

    A pool is not fork-safe (psycopg_pool's docs): its connections and threads belong to the
    process that opened it. Used in a forked child, this object opens a new pool there and
    leaves the parent's untouched.
    """

    def __init__(self, dsn: str, *, what: str, connect_timeout: float = 5.0,
                 statement_timeout_ms: int = 30_000, readonly: bool = False, max_size: int = 4) -> None:
        self.what, self.readonly, self.timeout = what, readonly, float(connect_timeout)
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
        self._max_size = max_size
        self._pool, self._pid = self._open(), os.getpid()
        self._inherited: list[ConnectionPool] = []

    def _open(self) -> ConnectionPool:
        # ``check``: each connection is tested (one empty query) before it is lent, so the
        # connections a server restart broke are replaced instead of failing their next use.
        return ConnectionPool(self._conninfo, min_size=1, max_size=self._max_size, timeout=self.timeout,
                              kwargs={"autocommit": True, "row_factory": dict_row},
                              check=ConnectionPool.check_connection, name=f"codeindex {self.what}", open=True)

    def _here(self) -> ConnectionPool:
        """This process's pool: a forked child keeps the parent's out of use (and uncollected,
        so its finaliser never touches the parent's sockets) and opens its own."""
        if self._pid != os.getpid():
            self._inherited.append(self._pool)
            self._pool, self._pid = self._open(), os.getpid()
        return self._pool

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text.strip()

    def close(self) -> None:
        """Close every connection of this process's pool (its own threads end too)."""
        if self._pid == os.getpid():
            self._pool.close(timeout=1.0)

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
        """``work(conn)`` in one transaction; its result. Raises StoreError on a read-only database."""
        if self.readonly:
            raise StoreError(f"the {self.what} is open read-only (dry run): nothing may be written")
        return self.run(work, transaction=True)

    def run(self, work: Callable[[psycopg.Connection], T], *, transaction: bool) -> T:
        """``work(conn)``, in a transaction or not, on a pooled connection; run once more on a
        fresh connection when the first broke before committing. Raises :class:`StoreError`."""
        try:
            for attempt in Retrying(retry=retry_if_exception_type(_ConnectionLost), stop=stop_after_attempt(2),
                                    reraise=True, before_sleep=self._log_reconnect):
                with attempt:
                    return self._once(work, transaction)
        except _ConnectionLost as lost:
            raise self._error(lost.error) from lost.error
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _log_reconnect(self, state) -> None:
        log.warning("postgres connection lost, reconnecting what=%s target=%s error=%s",
                    self.what, self.target, self._scrub(str(state.outcome.exception())))

    def _once(self, work: Callable[[psycopg.Connection], T], transaction: bool) -> T:
        try:
            with self._here().connection() as conn:
                committing = False
                try:
                    if not transaction:
                        return work(conn)
                    with conn.transaction():
                        result = work(conn)
                        committing = True
                    return result
                except psycopg.Error as exc:
                    if conn.broken and not committing:
                        raise _ConnectionLost(exc) from exc
                    raise self._error(exc, "; the write may or may not have been committed"
                                      if committing and conn.broken else "") from exc
        except PoolTimeout:
            raise StoreError(f"cannot reach the {self.what} at {self.target}: no connection within "
                             f"{self.timeout:g}s (is PostgreSQL running and accepting connections?)") from None

    def _error(self, exc: BaseException, suffix: str = "") -> StoreError:
        return StoreError(f"{self.what} at {self.target}: {self._scrub(str(exc))}{suffix}")
