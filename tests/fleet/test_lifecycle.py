"""The life of shards on a real fleet: SIGTERM drain with work in flight, `codeindex shards`
and `shards drain`, rebalancing when a shard joins, and a single scheduling beat."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

from tests.fleet.conftest import assert_index_exact, make_repo, wait_for
from tests.fleet.test_faults import run_of, start_sync


def test_sigterm_drains_with_work_in_flight(fleet, tmp_path: Path) -> None:
    fleet.start_worker("a")
    fleet.start_worker("b")
    root = make_repo(tmp_path, "draining", 40, 30)
    fleet.registry().assign(root.name, "a")
    run_id = start_sync(fleet, root, "--all")
    wait_for(lambda: (r := run_of(fleet, run_id)) and r.files_done > 0, 60, "the first batches")
    started = time.monotonic()
    fleet.kill("a", signal.SIGTERM)
    # a drains at once: no new assignments, its repository goes to b...
    wait_for(lambda: fleet.owner(root.name) == "b", 15, "the repository handed to b")
    # ... it finishes what runs and exits well within the grace period, marked offline.
    fleet.workers["a"].wait(timeout=30)
    assert time.monotonic() - started < 20
    assert fleet.shard_status("a") == "offline"
    run = wait_for(lambda: (r := run_of(fleet, run_id)) and r.status != "running" and r, 90, "the run to finish")
    assert run.status == "succeeded", run.message
    assert "draining" in fleet.log("worker-a")
    assert_index_exact(fleet, root, tmp_path)


def test_shards_listing_and_drain_command(fleet, tmp_path: Path) -> None:
    fleet.start_worker("a", capacity=50)
    fleet.start_worker("b", capacity=100)
    repos = [make_repo(tmp_path, f"r{i}", 4, 2) for i in range(6)]
    for root in repos:
        fleet.cli("repo", "add", str(root), "--no-wait")
    shards = {s["shard_id"]: s for s in json.loads(fleet.cli("shards", "--json").stdout)}
    assert set(shards) == {"a", "b"}
    assert shards["a"]["capacity"] == 50 and shards["b"]["capacity"] == 100
    assert sum(s["load"] for s in shards.values()) == 6
    assert all(s["status"] == "active" and s["heartbeat_lag"] < 5 for s in shards.values())
    drained = json.loads(fleet.cli("shards", "drain", "a", "--json").stdout)
    assert drained["status"] == "draining"
    assert all(owner == "b" for owner in fleet.registry().assignments().values())
    # A new repository never lands on a draining shard.
    extra = make_repo(tmp_path, "late", 4, 2)
    doc = json.loads(fleet.cli("repo", "add", str(extra), "--json").stdout)
    assert doc["shard_id"] == "b" and doc["errors"] == 0
    text = fleet.cli("shards").stdout
    assert "draining" in text and "late" in text
    # Every queued sync still completes: nothing is left in a's queue.
    wait_for(lambda: all(r.status == "succeeded" for r in fleet.state().list_runs(50))
             and len(fleet.state().list_runs(50)) == 7, 90, "every repository indexed")
    assert fleet.queue_depth("shard.a") == 0


def test_rebalancing_moves_only_what_the_ring_gives_a_new_shard(fleet, tmp_path: Path) -> None:
    from workers.placement import RING_VNODES, place
    from workers.ring import HashRing

    fleet.start_worker("a")
    fleet.start_worker("b")
    registry = fleet.registry()
    repo_ids = [f"repo-{i:03d}" for i in range(120)]
    before = {r: place(registry, r).shard_id for r in repo_ids}
    fleet.start_beat()
    fleet.start_worker("c")
    ring = HashRing({"a": 100, "b": 100, "c": 100}, vnodes=RING_VNODES)
    expected = {r for r in repo_ids if ring.owner(r) == "c"}
    wait_for(lambda: {r for r, s in registry.assignments().items() if s == "c"} == expected, 60,
             "rebalancing to give c its share")
    after = registry.assignments()
    moved = {r for r in repo_ids if after[r] != before[r]}
    assert moved == expected, "only the repositories the ring now gives c may move"
    assert 0.2 < len(moved) / len(repo_ids) < 0.47  # about 1/3
    assert registry.moves_total() == len(moved)
    # Bounded rate: each pass moves at most CODEINDEX_REBALANCE_MAX_MOVES (10).
    assert "rebalancing moved" in "".join(fleet.log(f"worker-{s}") for s in "abc")


def checks_run(fleet) -> int:
    """How many heartbeat checks ran: the workers' log lines of their successes."""
    return sum(len(re.findall(r"Task codeindex\.shards\.check\[[^\]]+\] succeeded", fleet.log(p.stem)))
               for p in fleet.logs.glob("worker-*.log"))


def test_only_one_beat_schedules(fleet, tmp_path: Path) -> None:
    fleet.start_worker("a")
    first = fleet.start_beat("beat-1")
    wait_for(lambda: checks_run(fleet) >= 2, 30, "the first checks")
    second = fleet.start_beat("beat-2")
    time.sleep(2)
    checks = checks_run(fleet)
    time.sleep(8)
    rate = (checks_run(fleet) - checks) / 8
    assert rate < 1.6, f"{rate:.1f} checks/s with two beats: both are scheduling (one beat: 1/s)"
    # Kill the scheduling beat: the other takes over once the lock expires.
    holder = fleet.redis().get("codeindex:redbeat::lock")
    assert holder is not None
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    before = checks_run(fleet)
    wait_for(lambda: checks_run(fleet) >= before + 3, 60, "the second beat to take over")
    assert second.poll() is None


def test_metrics_report_the_fleet(fleet, tmp_path: Path) -> None:
    import urllib.request

    from tests.conftest import free_port

    fleet.start_worker("a", capacity=40)
    fleet.registry().assign("some-repo", "a")
    port = free_port()
    proc = fleet._spawn(["metrics", "--port", str(port), "--addr", "127.0.0.1"], "metrics")
    fleet.beats.append(proc)  # stopped with the rest

    def scrape() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return response.read().decode()
        except OSError:
            return None

    text = wait_for(scrape, 30, "the metrics endpoint")
    assert 'codeindex_shard_load{shard_id="a",status="active"} 1.0' in text
    assert 'codeindex_shard_capacity{shard_id="a"} 40.0' in text
    assert 'codeindex_heartbeat_lag_seconds{shard_id="a"}' in text
    assert 'codeindex_queue_depth{queue="shard.a"} 0.0' in text
    assert "codeindex_rebalance_count 0.0" in text
    assert "codeindex_fleet_up 1.0" in text
