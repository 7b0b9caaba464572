"""The shard registry in PostgreSQL: which shards exist, their health, and which shard owns
each repository (sticky assignments, changed by compare-and-set so that racing placements agree).

Heartbeats and staleness use the database clock, so workers' clocks never disagree about it.
The registry's tables are defined here (:data:`REGISTRY_SCHEMA`), beside the state's in
``indexing.pg_state``, and migrated on their own.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from indexing.errors import UnknownShardError

if TYPE_CHECKING:
    import psycopg

    from indexing.postgres import PgDatabase

log = logging.getLogger("codeindex.registry")


class ShardStatus(enum.StrEnum):
    """A shard's place in the fleet (seed 002): ``active`` takes new repositories; ``draining``
    hands its repositories over and takes none; ``offline`` stopped heartbeating or exited."""

    ACTIVE = "active"
    DRAINING = "draining"
    OFFLINE = "offline"


#: The registry's tables, in creation order; idempotent, as ``indexing.pg_state.STATE_SCHEMA``.
REGISTRY_SCHEMA: list[str] = [
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
]


class _Any(enum.Enum):
    ANY = "ANY"


#: ``assign(..., expected=ANY)``: write whatever the current assignment is.
ANY = _Any.ANY


@dataclass(frozen=True, slots=True)
class Shard:
    """A registered worker shard and the number of repositories assigned to it (``load``)."""

    shard_id: str
    name: str
    address: str
    capacity: int
    status: ShardStatus
    last_heartbeat: datetime  # aware, UTC
    registered_at: datetime
    load: int

    def heartbeat_lag(self, now: datetime | None = None) -> float:
        """Seconds since the last heartbeat (0 when a clock runs behind the database's)."""
        now = now or datetime.now(timezone.utc)
        return max(0.0, (now - self.last_heartbeat).total_seconds())


_SELECT_SHARDS = (
    "SELECT s.shard_id, s.name, s.address, s.capacity, s.status, s.last_heartbeat, s.registered_at, "
    "(SELECT count(*) FROM assignments a WHERE a.shard_id = s.shard_id) AS load FROM shards s")


def _shard(row: dict) -> Shard:
    return Shard(**{**row, "status": ShardStatus(row["status"]),
                    "last_heartbeat": row["last_heartbeat"].astimezone(timezone.utc),
                    "registered_at": row["registered_at"].astimezone(timezone.utc)})


class ShardRegistry:
    """Shards and repository assignments in PostgreSQL; migrates its tables at construction.

    ``database`` is a DSN or a :class:`~indexing.postgres.PgDatabase` shared with the state
    store; ``connect_timeout`` (seconds) bounds the wait for a connection, so that a caller
    facing an unreachable registry fails instead of hanging.
    Raises :class:`~indexing.errors.StoreError` for a database error or an unreachable server.
    """

    def __init__(self, database: str | PgDatabase, *, connect_timeout: float = 5.0) -> None:
        from indexing.postgres import open_migrated  # lazy: psycopg and its pool only in a fleet

        self.db = open_migrated(database, "registry", REGISTRY_SCHEMA, what="shard registry",
                                connect_timeout=connect_timeout)

    def close(self) -> None:
        """Close the registry's connections."""
        self.db.close()

    # shards

    def register(self, shard_id: str, name: str, address: str, capacity: int) -> Shard:
        """Add or update a shard: status active, heartbeat now; ``registered_at`` is kept from
        its first registration. Raises ValueError for an empty id or a capacity below 1."""
        if not shard_id:
            raise ValueError("a shard id must not be empty")
        if capacity < 1:
            raise ValueError(f"shard {shard_id}: capacity must be at least 1, not {capacity}")

        def work(conn: psycopg.Connection) -> Shard:
            conn.execute(
                "INSERT INTO shards VALUES (%s, %s, %s, %s, 'active', now(), now()) ON CONFLICT (shard_id) "
                "DO UPDATE SET name = excluded.name, address = excluded.address, capacity = excluded.capacity, "
                "status = 'active', last_heartbeat = excluded.last_heartbeat",
                [shard_id, name, address, capacity])
            return _shard(conn.execute(f"{_SELECT_SHARDS} WHERE s.shard_id = %s", [shard_id]).fetchone())

        return self.db.write(work)

    def heartbeat(self, shard_id: str) -> bool:
        """Stamp the shard's heartbeat with the database clock; False when the shard is unknown."""
        return self.db.write(lambda conn: conn.execute(
            "UPDATE shards SET last_heartbeat = now() WHERE shard_id = %s", [shard_id]).rowcount) > 0

    def set_status(self, shard_id: str, status: ShardStatus) -> None:
        """Set a shard's status. Raises ValueError for an unknown status, UnknownShardError for an unknown shard."""
        if status not in ShardStatus.__members__.values():
            raise ValueError(f"shard status {status!r} is not one of {', '.join(ShardStatus)}")
        updated = self.db.write(lambda conn: conn.execute(
            "UPDATE shards SET status = %s WHERE shard_id = %s", [status, shard_id]).rowcount)
        if not updated:
            raise UnknownShardError(f"shard {shard_id} is not registered")

    def shards(self) -> list[Shard]:
        """Every shard, sorted by id, with its load."""
        return [_shard(r) for r in self.db.read(f"{_SELECT_SHARDS} ORDER BY s.shard_id")]

    def get(self, shard_id: str) -> Shard | None:
        """One shard, or None."""
        rows = self.db.read(f"{_SELECT_SHARDS} WHERE s.shard_id = %s", [shard_id])
        return _shard(rows[0]) if rows else None

    def mark_offline_stale(self, older_than: float) -> list[str]:
        """Mark offline the active or draining shards without a heartbeat for ``older_than``
        seconds (database clock); their ids, sorted."""
        rows = self.db.write(lambda conn: conn.execute(
            "UPDATE shards SET status = 'offline' WHERE status IN ('active', 'draining') "
            "AND last_heartbeat < now() - make_interval(secs => %s) RETURNING shard_id",
            [float(older_than)]).fetchall())
        stale = sorted(r["shard_id"] for r in rows)
        if stale:
            log.warning("shards marked offline after %.0fs without a heartbeat: %s", older_than, ", ".join(stale))
        return stale

    # assignments

    def assignment(self, repo_id: str) -> str | None:
        """The shard that owns ``repo_id``, or None."""
        rows = self.db.read("SELECT shard_id FROM assignments WHERE repo_id = %s", [repo_id])
        return rows[0]["shard_id"] if rows else None

    def assignments(self, shard_id: str | None = None) -> dict[str, str]:
        """repo_id -> shard_id, of every repository or of those ``shard_id`` owns."""
        if shard_id is None:
            rows = self.db.read("SELECT repo_id, shard_id FROM assignments")
        else:
            rows = self.db.read("SELECT repo_id, shard_id FROM assignments WHERE shard_id = %s", [shard_id])
        return {r["repo_id"]: r["shard_id"] for r in rows}

    def assign(self, repo_id: str, shard_id: str, *, expected: str | None | _Any = ANY) -> bool:
        """Store ``repo_id -> shard_id``; whether it was written.

        With ``expected`` (a shard id, or None for "unassigned") it is a compare-and-set: written
        only when the current assignment equals ``expected``. A change of an existing assignment
        stamps ``moved_at`` and counts one move (:meth:`moves_total`).
        """
        lock_row = "SELECT shard_id FROM assignments WHERE repo_id = %s FOR UPDATE"

        def work(conn: psycopg.Connection) -> bool:
            row = conn.execute(lock_row, [repo_id]).fetchone()
            if row is None:  # a missing row cannot be locked: insert, unless another process just did
                if expected is not ANY and expected is not None:
                    return False
                inserted = conn.execute(
                    "INSERT INTO assignments (repo_id, shard_id, assigned_at) VALUES (%s, %s, now()) "
                    "ON CONFLICT (repo_id) DO NOTHING RETURNING repo_id", [repo_id, shard_id]).fetchone()
                if inserted is not None or expected is None:
                    return inserted is not None
                row = conn.execute(lock_row, [repo_id]).fetchone()  # the concurrent insert, now lockable
            if expected is not ANY and row["shard_id"] != expected:
                return False
            if row["shard_id"] != shard_id:
                conn.execute("UPDATE assignments SET shard_id = %s, assigned_at = now(), moved_at = now() "
                             "WHERE repo_id = %s", [shard_id, repo_id])
                conn.execute("INSERT INTO registry_counters VALUES ('moves', 1) ON CONFLICT (name) "
                             "DO UPDATE SET value = registry_counters.value + 1")
            return True

        return self.db.write(work)

    def moves_total(self) -> int:
        """How many times an existing assignment changed shard, ever (a monotonic counter)."""
        rows = self.db.read("SELECT value FROM registry_counters WHERE name = 'moves'")
        return int(rows[0]["value"]) if rows else 0
