"""Routing on a real fleet: each repository's plan and commit run on its owner's shard, the
embedding chord spreads over the workers, and a failing header task leaves the state
unadvanced for the next sync to complete."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fleet.conftest import assert_index_exact, make_repo, wait_for


def test_repositories_run_on_their_owners_and_chords_span_workers(fleet, tmp_path: Path) -> None:
    fleet.start_worker("a")
    fleet.start_worker("b")
    repos = [make_repo(tmp_path, f"repo{i}", 10, 6) for i in range(6)]
    owners = {}
    for root in repos:
        doc = json.loads(fleet.cli("repo", "add", str(root), "--json").stdout)
        assert doc["errors"] == 0 and doc["added"] > 0
        owners[root.name] = doc["shard_id"]
        assert fleet.owner(root.name) == doc["shard_id"]
    assert set(owners.values()) == {"a", "b"}, f"six repositories all on one shard: {owners}"
    runs = {r.repo_id: r for r in fleet.state().list_runs(50)}
    for repo_id, shard in owners.items():
        assert runs[repo_id].status == "succeeded"
        assert runs[repo_id].shard_id == shard, f"{repo_id} committed on {runs[repo_id].shard_id}, owner {shard}"
    for shard in ("a", "b"):
        log = fleet.log(f"worker-{shard}")
        assert "codeindex.embed.batch" in log, f"worker {shard} ran no embedding batch"
    work = tmp_path / "work"
    work.mkdir()
    for root in repos[:2]:
        assert_index_exact(fleet, root, work)


def test_a_plan_delivered_to_a_non_owner_goes_on_to_the_owner(fleet, tmp_path: Path) -> None:
    """A publisher's cached route can be stale (a drain, a rebalance): the plan forwards itself
    to the owner's queue, keeping its task id, so the caller's result still resolves."""
    import uuid

    from celery import Celery

    from indexing.messages import SyncRequest

    fleet.start_worker("a")
    fleet.start_worker("b")
    root = make_repo(tmp_path, "misrouted", 10, 6)
    fleet.registry().assign(root.name, "b")
    request = SyncRequest(run_id=str(uuid.uuid4()), repo_id=root.name, root=str(root), collection="codeindex",
                          source="all")
    client = Celery("test-client", broker=fleet.redis_server.url, backend=fleet.redis_server.url)
    result = client.send_task("codeindex.sync.plan", args=[request.model_dump(mode="json")], queue="shard.a")
    summary = result.get(timeout=90)
    assert summary["errors"] == 0 and summary["added"] > 0
    run = fleet.state().get_run(request.run_id)
    assert run.status == "succeeded" and run.shard_id == "b"
    assert f"task for {root.name} reached shard a, which does not own it: forwarded to shard b" in fleet.log("worker-a")
    assert_index_exact(fleet, root, tmp_path)
