"""The shard registry on the real PostgreSQL: registration, heartbeats and staleness on the
database clock, sticky assignments changed by compare-and-set, the moves counter, migrations."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from indexing.errors import CodeindexError, UnknownShardError
from indexing.pg_state import PostgresStateStore
from indexing.postgres import migrate
from workers.registry import REGISTRY_SCHEMA, ShardRegistry


@pytest.fixture
def registry(postgres_dsn: str):
    reg = ShardRegistry(postgres_dsn)
    yield reg
    reg.close()


def set_heartbeat_ago(dsn: str, shard_id: str, seconds: float) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE shards SET last_heartbeat = now() - make_interval(secs => %s) WHERE shard_id = %s",
                     [seconds, shard_id])


def race_all(race, registries) -> None:
    """Run ``race(registry, "shard-<n>")`` for every registry in its own thread, all at once."""
    threads = [threading.Thread(target=race, args=(reg, f"shard-{n}")) for n, reg in enumerate(registries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)


def test_register_then_reregister_keeps_registered_at(registry, postgres_dsn):
    first = registry.register("shard-1", "indexer-0", "10.0.0.5", 100)
    assert (first.shard_id, first.name, first.address, first.capacity, first.status, first.load) == \
        ("shard-1", "indexer-0", "10.0.0.5", 100, "active", 0)
    assert first.registered_at.tzinfo == timezone.utc and first.last_heartbeat == first.registered_at
    assert abs((datetime.now(timezone.utc) - first.registered_at).total_seconds()) < 5
    registry.set_status("shard-1", "offline")
    set_heartbeat_ago(postgres_dsn, "shard-1", 60)
    again = registry.register("shard-1", "indexer-0b", "10.0.0.6", 50)
    assert (again.name, again.address, again.capacity, again.status) == ("indexer-0b", "10.0.0.6", 50, "active")
    assert again.registered_at == first.registered_at
    assert again.last_heartbeat > first.last_heartbeat
    assert registry.get("shard-1") == again


def test_register_refuses_a_bad_capacity_or_id(registry):
    with pytest.raises(ValueError, match="capacity"):
        registry.register("shard-1", "n", "a", 0)
    with pytest.raises(ValueError, match="empty"):
        registry.register("", "n", "a", 1)
    assert registry.shards() == []


def test_heartbeat_and_lag(registry, postgres_dsn):
    registry.register("shard-1", "n", "a", 1)
    set_heartbeat_ago(postgres_dsn, "shard-1", 40)
    stale = registry.get("shard-1")
    assert 39 < stale.heartbeat_lag() < 45
    assert stale.heartbeat_lag(stale.last_heartbeat + timedelta(seconds=7)) == 7
    assert stale.heartbeat_lag(stale.last_heartbeat - timedelta(seconds=7)) == 0
    assert registry.heartbeat("shard-1") is True
    assert registry.get("shard-1").heartbeat_lag() < 5
    assert registry.heartbeat("nope") is False
    assert registry.get("nope") is None


def test_set_status_and_its_errors(registry):
    registry.register("shard-1", "n", "a", 1)
    registry.set_status("shard-1", "draining")
    assert registry.get("shard-1").status == "draining"
    with pytest.raises(ValueError, match="not one of"):
        registry.set_status("shard-1", "sleeping")
    with pytest.raises(UnknownShardError, match="shard-9") as caught:
        registry.set_status("shard-9", "offline")
    assert isinstance(caught.value, CodeindexError) and caught.value.exit_code == 2
    assert registry.get("shard-1").status == "draining"


def test_shards_sorted_with_load(registry):
    for shard_id in ("shard-b", "shard-a", "shard-c"):
        registry.register(shard_id, shard_id, "addr", 10)
    for repo, shard in [("r1", "shard-a"), ("r2", "shard-a"), ("r3", "shard-c")]:
        assert registry.assign(repo, shard)
    assert [(s.shard_id, s.load) for s in registry.shards()] == [("shard-a", 2), ("shard-b", 0), ("shard-c", 1)]


def test_mark_offline_stale_uses_the_database_clock(registry, postgres_dsn):
    for shard_id in ("active-old", "draining-old", "active-fresh", "offline-old"):
        registry.register(shard_id, shard_id, "addr", 1)
    registry.set_status("draining-old", "draining")
    registry.set_status("offline-old", "offline")
    for shard_id in ("active-old", "draining-old", "offline-old"):
        set_heartbeat_ago(postgres_dsn, shard_id, 45)
    assert registry.mark_offline_stale(3600) == []
    assert registry.mark_offline_stale(30) == ["active-old", "draining-old"]
    assert {s.shard_id: s.status for s in registry.shards()} == {
        "active-fresh": "active", "active-old": "offline", "draining-old": "offline", "offline-old": "offline"}
    assert registry.mark_offline_stale(30) == []


def test_assign_moves_and_counts(registry, postgres_dsn):
    registry.register("s1", "s1", "a", 10)
    registry.register("s2", "s2", "a", 10)
    assert registry.assignment("r") is None
    assert registry.assign("r", "s1") is True
    assert registry.assign("r", "s1") is True  # the same shard again: not a move
    assert registry.moves_total() == 0
    assert registry.assign("r", "s2") is True
    assert registry.assignment("r") == "s2" and registry.moves_total() == 1
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assigned_at, moved_at = conn.execute("SELECT assigned_at, moved_at FROM assignments").fetchone()
    assert moved_at is not None and moved_at == assigned_at
    registry.assign("other", "s1")
    assert registry.assignments() == {"r": "s2", "other": "s1"}
    assert registry.assignments("s1") == {"other": "s1"} and registry.assignments("s3") == {}
    assert registry.assign("r", "s1") is True and registry.moves_total() == 2  # moved back: counted again


def test_assign_compare_and_set(registry):
    assert registry.assign("r", "s1", expected="s2") is False  # unassigned, not s2
    assert registry.assignment("r") is None
    assert registry.assign("r", "s1", expected=None) is True
    assert registry.assign("r", "s2", expected=None) is False  # assigned already
    assert registry.assign("r", "s2", expected="s3") is False
    assert registry.assignment("r") == "s1" and registry.moves_total() == 0
    assert registry.assign("r", "s2", expected="s1") is True
    assert registry.assignment("r") == "s2" and registry.moves_total() == 1


def test_racing_compare_and_set_has_exactly_one_winner(postgres_dsn, registry):
    registries = [ShardRegistry(postgres_dsn) for _ in range(2)]
    repos = [f"repo-{i}" for i in range(20)]
    barrier = threading.Barrier(2)
    wins: dict[str, list[str]] = {repo: [] for repo in repos}

    def race(registry: ShardRegistry, shard_id: str) -> None:
        for repo in repos:
            barrier.wait(timeout=10)
            if registry.assign(repo, shard_id, expected=None):
                wins[repo].append(shard_id)
        registry.close()

    race_all(race, registries)
    assert all(len(winners) == 1 for winners in wins.values()), wins
    assert registry.assignments() == {repo: winners[0] for repo, winners in wins.items()}


def test_unconditional_assign_racing_a_first_assignment_still_lands(postgres_dsn, registry):
    registries = [ShardRegistry(postgres_dsn) for _ in range(4)]
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def race(registry: ShardRegistry, shard_id: str) -> None:
        barrier.wait(timeout=10)
        results.append(registry.assign("repo", shard_id))
        registry.close()

    race_all(race, registries)
    assert results == [True] * 4
    # Four writers to four shards, serialised by the row lock: one insert, then three moves.
    assert registry.moves_total() == 3


def _open_registry(dsn: str, start, out) -> None:
    start.wait(10)
    try:
        opened = ShardRegistry(dsn)
        opened.register("s", "s", "a", 1)
        opened.close()
        out.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test with it
        out.put(repr(exc))


def test_migrate_is_idempotent_and_safe_from_two_processes_at_once(postgres_dsn):
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_open_registry, args=(postgres_dsn, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    assert sorted([out.get(timeout=30), out.get(timeout=30)]) == ["ok", "ok"]
    for p in procs:
        p.join(timeout=30)
    # Again, from this process and through the state store: the same schema, nothing lost.
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        migrate(conn, "registry", REGISTRY_SCHEMA)
        migrate(conn, "registry", REGISTRY_SCHEMA)
    store = PostgresStateStore(postgres_dsn)
    assert store.grant_fence("r", "/src/r", "code") == 1
    store.close()
    again = ShardRegistry(postgres_dsn)
    assert [s.shard_id for s in again.shards()] == ["s"]
    again.close()


def test_migrate_adds_a_missing_table_to_an_older_schema(postgres_dsn):
    ShardRegistry(postgres_dsn).close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE registry_counters")
        conn.execute("UPDATE codeindex_migrations SET ddl_sha256 = 'an older release' WHERE component = 'registry'")
    registry = ShardRegistry(postgres_dsn)
    registry.assign("r", "s1")
    registry.assign("r", "s2")
    assert registry.moves_total() == 1
    registry.close()
