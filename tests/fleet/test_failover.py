"""Failover at the production defaults (visibility timeout 7200 s, heartbeat 10 s, offline after
30 s, checks every 10 s, lock ttl 60 s): a worker SIGKILLed while it holds the plan, one
embedding batch, or the commit of a sync does not leave the waiting CLI hanging for the
visibility timeout. Beat declares the shard offline, breaks its locks and re-issues the run
in flight; the CLI returns success within 45 s plus the sync's own time, the index is exact,
and the dead worker's messages, given back by hand as the visibility timeout would two hours
later, change nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest

from tests.fleet.conftest import CLI, assert_index_exact, make_repo, wait_for

DEFAULTS = {
    "CODEINDEX_VISIBILITY_TIMEOUT": "7200", "CODEINDEX_TASK_TIME_LIMIT": "3600",
    "CODEINDEX_TASK_SOFT_TIME_LIMIT": "3300", "CODEINDEX_RETRY_BACKOFF_MAX": "300", "CODEINDEX_MAX_RETRIES": "5",
    "CODEINDEX_HEARTBEAT_INTERVAL": "10", "CODEINDEX_OFFLINE_AFTER": "30", "CODEINDEX_HEARTBEAT_CHECK_INTERVAL": "10",
    "CODEINDEX_LOCK_TTL": "60", "CODEINDEX_LOCK_TIMEOUT": "600", "CODEINDEX_GRACE_PERIOD": "300",
    "CODEINDEX_ROUTE_CACHE_SECONDS": "5",
}
#: What the issue allows beyond the sync's own time: offline after 30 s, a check every 10 s.
FAILOVER_S = 45


def runs(fleet, repo_id: str) -> list:
    return [r for r in fleet.state().list_runs(50) if r.repo_id == repo_id]


def give_back_unacked(fleet) -> int:
    """Put every message a worker took and never acknowledged back on its queue, as kombu's
    Redis transport does once the visibility timeout has passed (``QoS.restore_visible``)."""
    client = fleet.redis()
    restored = 0
    for tag, raw in client.hgetall("unacked").items():
        message, _exchange, routing_key = json.loads(raw)
        client.lpush(routing_key, json.dumps(message))
        client.hdel("unacked", tag)
        client.zrem("unacked_index", tag)
        restored += 1
    return restored


@pytest.fixture
def defaults_fleet(fleet):
    fleet.env.update(DEFAULTS)
    return fleet


def hold_repo_lock(fleet, repo_id: str):
    """The repository's Redis lock, held by the test (as another sync would hold it)."""
    from workers.locks import redis_repo_lock

    return redis_repo_lock(fleet.redis(), repo_id, ttl=60, timeout=30)


@pytest.mark.parametrize("held", ["plan", "batch", "commit"])
def test_a_worker_killed_holding_part_of_a_sync_does_not_wait_for_the_visibility_timeout(
        defaults_fleet, tmp_path: Path, held: str) -> None:
    fleet = defaults_fleet
    for shard in ("a", "b"):
        fleet.start_worker(shard)
    fleet.start_beat()
    root = make_repo(tmp_path, f"held-{held}", 40, 30)
    fleet.registry().assign(root.name, "a")
    victim = "b" if held == "batch" else "a"
    lock = hold_repo_lock(fleet, root.name) if held in ("plan", "commit") else None
    write_lock = filelock.FileLock(fleet.home / "lancedb" / ".codeindex.write.lock") if held == "batch" else None
    if held == "plan":
        lock.__enter__()  # the plan records its run, then waits for the lock: it holds the plan
    if held == "batch":
        (fleet.home / "lancedb").mkdir(parents=True, exist_ok=True)
        write_lock.acquire()  # every batch waits in its upsert: each worker holds one
    cli = subprocess.Popen([CLI, "sync", "--all", "--root", str(root), "--repo", root.name, "--format", "json"],
                           env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = wait_for(lambda: runs(fleet, root.name) and runs(fleet, root.name)[0], 60, "the run to start")
    if held == "batch":
        wait_for(lambda: fleet.redis().smembers("codeindex:shard:b:runs"), 60, "worker b to hold a batch")
    if held == "commit":
        wait_for(lambda: (r := fleet.state().get_run(first.id)) and r.files_total > 0, 60, "the plan")
        lock.__enter__()  # taken between plan and commit: the commit will wait for it
        wait_for(lambda: (r := fleet.state().get_run(first.id)) and r.files_done >= r.files_total, 90,
                 "every batch to finish")
        time.sleep(1.0)  # the commit is taken by a, and waits for the lock
    fleet.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    if lock is not None:
        lock.__exit__(None, None, None)
    if write_lock is not None:
        write_lock.release()
    out, err = cli.communicate(timeout=FAILOVER_S + 120)
    took = time.monotonic() - killed_at
    if os.environ.get("CODEINDEX_TEST_TIMINGS"):
        sys.stderr.write(f"[failover, worker holding the {held}] the CLI returned {took:.1f}s after the kill\n")
    assert cli.returncode == 0, err
    summary = json.loads(out)
    assert summary["errors"] == 0 and summary["status"] == "succeeded"
    assert took < FAILOVER_S + 30, f"the CLI returned {took:.0f}s after the kill"
    old = fleet.state().get_run(first.id)
    assert old.status == "reissued" and summary["run_id"] in old.message
    assert_index_exact(fleet, root, tmp_path)
    before = fleet.export(root.name)
    # Two hours later the broker gives the dead worker's messages back: they change nothing.
    assert give_back_unacked(fleet) >= 1
    wait_for(lambda: all(fleet.queue_depth(q) == 0 for q in ("shard.a", "shard.b", "embed")) and
             not fleet.redis().hlen("unacked"), 60, "the given-back messages to be consumed")
    time.sleep(3)
    assert fleet.export(root.name) == before
    assert fleet.state().get_run(first.id).status == "reissued"
    assert fleet.state().get_run(summary["run_id"]).status == "succeeded"


def test_sigterm_to_the_last_worker_warns_once_instead_of_failing_the_drain(fleet, tmp_path: Path) -> None:
    fleet.start_worker("only")
    fleet.registry().assign("some-repo", "only")
    fleet.kill("only", signal.SIGTERM)
    fleet.workers["only"].wait(timeout=30)
    log = fleet.log("worker-only")
    assert "repositories stay assigned to it until a shard is active" in log
    assert "drain of shard only failed" not in log and "Traceback" not in log
    assert fleet.owner("some-repo") == "only" and fleet.shard_status("only") == "offline"
