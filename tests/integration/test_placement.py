"""Placement is explicit and routing only reads, on the real Redis and PostgreSQL: sending a
message never writes to the registry, an unplaced repository is refused by the router and
placed by the call that precedes a send, and a publisher facing an unreachable registry fails
within its timeout with a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from config.kinds import TaskKind
from indexing.errors import StoreError
from indexing.messages import SyncRequest
from tests.conftest import free_port


def registry_rows(dsn: str) -> dict[str, list[tuple]]:
    """Every row of the registry's tables."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in ("shards", "assignments", "registry_counters")}


@pytest.fixture
def publisher(tmp_path: Path, redis_url: str, postgres_dsn: str):
    """This process as a fleet's publisher (a Redis broker, PostgreSQL), with shards a and b."""
    from config.settings import configure
    from workers import runtime
    from workers.app import apply_settings

    settings = configure(broker_url=redis_url, result_backend=redis_url, state_url=postgres_dsn,
                         home=tmp_path / "home", embedder="hashing")
    apply_settings(settings)
    runtime.reset()
    rt = runtime.runtime()
    for shard in ("a", "b"):
        rt.registry.register(shard, shard, "127.0.0.1", 10)
    yield rt
    runtime.reset()
    apply_settings(configure())


def request_for(repo_id: str) -> dict:
    return SyncRequest(run_id=str(uuid.uuid4()), repo_id=repo_id, root="/nowhere", collection="codeindex",
                       source="all").model_dump(mode="json")


def test_sending_writes_nothing_and_an_unplaced_repository_is_refused(publisher, postgres_dsn, redis_url) -> None:
    import redis

    from tasks.sync import commit, plan
    from workers.placement import UnplacedRepositoryError

    before = registry_rows(postgres_dsn)
    with pytest.raises(UnplacedRepositoryError, match="repository fresh is not placed on any shard"):
        plan.apply_async(args=[request_for("fresh")])
    assert registry_rows(postgres_dsn) == before  # refused, and nothing was written

    placed = publisher.place("fresh")  # the explicit placement that precedes a first send
    after_placing = registry_rows(postgres_dsn)
    assert [row[:2] for row in after_placing["assignments"]] == [("fresh", placed.shard_id)]

    publisher.owners.forget()  # a cold cache: routing reads the registry
    plan.apply_async(args=[request_for("fresh")])
    commit.apply_async(args=[[], {"repo_id": "fresh"}])
    assert registry_rows(postgres_dsn) == after_placing
    broker = redis.Redis.from_url(redis_url)
    assert broker.llen(f"shard.{placed.shard_id}") == 2
    other = "b" if placed.shard_id == "a" else "a"
    assert broker.llen(f"shard.{other}") == 0


def test_routing_follows_a_moved_repository_without_writing(publisher, postgres_dsn) -> None:
    from workers.registry import ShardStatus

    owner = publisher.place("moving").shard_id
    other = "b" if owner == "a" else "a"
    publisher.registry.set_status(owner, ShardStatus.DRAINING)
    before = registry_rows(postgres_dsn)
    publisher.owners.forget()
    # The router keeps reading the stored owner (beat or a drain moves it, not a send)...
    assert publisher.queue_for(TaskKind.REPO, "moving") == f"shard.{owner}"
    assert registry_rows(postgres_dsn) == before
    # ... and the explicit placement before the next send moves it off the draining shard.
    assert publisher.place("moving").shard_id == other
    publisher.owners.forget()
    assert publisher.queue_for(TaskKind.REPO, "moving") == f"shard.{other}"


def test_a_dry_run_asks_where_it_would_go_and_writes_nothing(publisher, postgres_dsn) -> None:
    before = registry_rows(postgres_dsn)
    preview = publisher.place("dry", dry_run=True)
    assert preview.shard_id in ("a", "b") and not preview.moved
    assert registry_rows(postgres_dsn) == before


def test_an_unreachable_registry_fails_the_publisher_within_its_timeout(tmp_path: Path, redis_url: str) -> None:
    from config.settings import configure
    from tasks.sync import plan
    from workers import runtime
    from workers.app import apply_settings

    dead = f"postgresql://codeindex:s3cr3t@127.0.0.1:{free_port()}/registry"
    apply_settings(configure(broker_url=redis_url, result_backend=redis_url, state_url=dead,
                             home=tmp_path / "home", embedder="hashing"))
    runtime.reset()
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"cannot reach the state store and shard registry at "
                                             r"postgresql://codeindex@127\.0\.0\.1:\d+/registry") as caught:
            plan.apply_async(args=[request_for("any")])
        assert time.monotonic() - started < 8  # the 5 s connect timeout, not a hang
        assert "s3cr3t" not in str(caught.value)
    finally:
        runtime.reset()
        apply_settings(configure())


def test_the_cli_reports_an_unreachable_registry_in_one_line(tmp_path: Path, redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    env.update({"CODEINDEX_BROKER_URL": redis_url, "CODEINDEX_RESULT_BACKEND": redis_url,
                "CODEINDEX_STATE_URL": f"postgresql://codeindex@127.0.0.1:{free_port()}/registry",
                "CODEINDEX_HOME": str(tmp_path / "home"), "CODEINDEX_EMBEDDER": "hashing"})
    started = time.monotonic()
    result = subprocess.run([str(Path(sys.executable).with_name("codeindex")), "sync", "--all", "--root",
                             str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 15
    assert result.returncode == 4, result.stderr
    assert result.stderr.startswith("error: cannot reach the state store and shard registry")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_moving_queued_messages_counts_what_it_moved(publisher, redis_url) -> None:
    """Celery's move() returns its filter's State, not the one it counts in; the count of
    moved messages (and codeindex_messages_moved_total) must be the real one."""
    import redis
    from prometheus_client import REGISTRY

    from tasks.sync import plan
    from workers.requeue import requeue_from

    def moved_total() -> float:
        return REGISTRY.get_sample_value("codeindex_messages_moved_total") or 0.0

    publisher.registry.assign("queued", "a")
    for _ in range(3):
        plan.apply_async(args=[request_for("queued")], queue="shard.a")
    publisher.registry.assign("queued", "b")  # a drained, say: the messages must follow
    before = moved_total()
    assert requeue_from(publisher, ["a"]) == 3
    broker = redis.Redis.from_url(redis_url)
    assert (broker.llen("shard.a"), broker.llen("shard.b")) == (0, 3)
    assert moved_total() - before == 3
    assert requeue_from(publisher, ["a"]) == 0  # nothing left to move
