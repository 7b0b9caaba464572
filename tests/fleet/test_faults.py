"""Faults on a real fleet (real Redis, PostgreSQL, `codeindex worker` processes, beat). Each
test ends with the index equal to a fresh full index of the same commit."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import git
from tests.fleet.conftest import CLI, assert_index_exact, make_repo, wait_for
from tests.integration.test_sync_exact import edit_function


def run_of(fleet, run_id: str):
    return fleet.state().get_run(run_id)


def start_sync(fleet, root: Path, *args: str) -> str:
    """Enqueue a sync with --no-wait; its run id."""
    out = fleet.cli("sync", "--root", str(root), "--repo", root.name, "--no-wait", *args).stdout
    return out.strip().splitlines()[-1]


def final_run(fleet, run_id: str):
    """The run that carries out ``run_id``'s work: itself, or the run it was re-issued as (its
    worker died), followed as far as the re-issues go; None while it is unknown."""
    run = run_of(fleet, run_id)
    while run is not None and run.status == "reissued":
        run = run_of(fleet, run.message.split("re-issued as run ")[1].split()[0])
    return run


def wait_run(fleet, run_id: str, timeout: float = 90, status: str = "succeeded"):
    run = wait_for(lambda: (r := final_run(fleet, run_id)) is not None and r.status not in ("running",) and r,
                   timeout, f"run {run_id} to finish")
    assert run.status == status, f"run {run_id} ended {run.status}: {run.message}"
    return run


def edit_some(root: Path, count: int, marker: str) -> list[str]:
    files = sorted(p for p in root.rglob("*.py") if ".git" not in p.parts)[:count]
    for path in files:
        edit_function(path, marker)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", f"edit {marker}")
    return [p.relative_to(root).as_posix() for p in files]


@pytest.mark.parametrize("point", ["planned", "half-embedded", "embedded"])
def test_sigkill_mid_sync_then_shard_declared_dead(fleet, tmp_path: Path, point: str) -> None:
    fleet.start_worker("a")
    fleet.start_worker("b")
    fleet.start_beat()
    root = make_repo(tmp_path, "victim", 40, 30)
    fleet.registry().assign(root.name, "a")
    run_id = start_sync(fleet, root, "--all")
    # Kill the owner's whole process group at the chosen point of the run.
    if point == "planned":
        wait_for(lambda: run_of(fleet, run_id), 60, "the plan")
    elif point == "half-embedded":
        wait_for(lambda: (r := run_of(fleet, run_id)) and r.files_done >= r.files_total // 2 > 0, 60, "half the batches")
    else:
        wait_for(lambda: (r := run_of(fleet, run_id)) and r.files_done >= r.files_total > 0, 60, "every batch")
    fleet.kill("a", signal.SIGKILL)
    # Beat declares the silent shard offline, moves the repository and the queued messages to b;
    # messages a had reserved come back after the visibility timeout and are moved too.
    wait_for(lambda: fleet.shard_status("a") == "offline", 30, "shard a offline")
    wait_for(lambda: fleet.owner(root.name) == "b", 30, "the repository to move to b")
    run = wait_for(lambda: (r := final_run(fleet, run_id)) and r.status != "running" and r, 90,
                   "the interrupted run, or the run it was re-issued as, to finish on b")
    assert run.status == "succeeded", run.message
    assert fleet.queue_depth("shard.a") == 0
    assert_index_exact(fleet, root, tmp_path)


def test_same_message_delivered_twice_concurrently(fleet, tmp_path: Path) -> None:
    from celery import Celery

    from indexing.messages import SyncRequest

    fleet.start_worker("a", concurrency=2)
    fleet.start_worker("b")
    root = make_repo(tmp_path, "twice", 30, 20)
    fleet.registry().assign(root.name, "a")
    request = SyncRequest(run_id=str(uuid.uuid4()), repo_id=root.name, root=str(root), collection="codeindex",
                          source="all")
    client = Celery("test-client", broker=fleet.redis_server.url, backend=fleet.redis_server.url)
    task_id = str(uuid.uuid4())
    for _ in range(2):  # one message id, delivered twice
        client.send_task("codeindex.sync.plan", args=[request.model_dump(mode="json")], task_id=task_id,
                         queue="shard.a")
    wait_run(fleet, request.run_id)
    time.sleep(3)  # let the second delivery's chord finish too
    wait_for(lambda: fleet.queue_depth("shard.a") == 0 and fleet.queue_depth("embed") == 0, 60, "queues empty")
    assert fleet.state().get_repo(root.name).committed_fence >= 1
    assert_index_exact(fleet, root, tmp_path)


def test_two_syncs_of_one_repository_at_once(fleet, tmp_path: Path) -> None:
    fleet.start_worker("a", concurrency=2)
    fleet.start_worker("b")
    root = make_repo(tmp_path, "race", 30, 20)
    fleet.sync(root, "--all")
    edit_some(root, 10, "race")
    procs = [subprocess.Popen([CLI, "sync", "--root", str(root), "--repo", root.name, "--detect-changes",
                               "--format", "json"], env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outcomes = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    # Each sync either committed, or was refused because a newer one committed first (exit 3).
    assert all(code == 0 or (code == 3 and "stale" in err) for code, _, err in outcomes), outcomes
    assert any(code == 0 for code, _, _ in outcomes)
    assert_index_exact(fleet, root, tmp_path)


def test_stale_writer_whose_lock_expired_is_refused(fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writer A holds the lock, stalls past its ttl; B takes the lock, indexes a newer commit and
    commits. A's late upserts carry an older fencing token: the store keeps B's objects and the
    state refuses A's commit."""
    from config.settings import configure
    from indexing.errors import StaleFenceError
    from indexing.messages import BatchJob, CommitJob, SyncRequest
    from indexing.sync import PlanLimits, commit_sync, index_batch, plan_sync
    from workers import locks, runtime
    from workers.locks import redis_repo_lock

    root = make_repo(tmp_path, "stale", 20, 10)
    settings = configure(broker_url=fleet.redis_server.url, result_backend=fleet.redis_server.url,
                         state_url=fleet.dsn, home=fleet.home, embedder="hashing", lock_ttl=1.0)
    runtime.reset()
    rt = runtime.runtime()
    try:
        state, store = rt.state, rt.vector_store("codeindex")
        cache, embedder = rt.embedding_cache, rt.embedder
        limits = PlanLimits(settings.max_file_size, 64, 1 << 20, 0.2)
        redis = rt.redis

        def plan_and_index(handle_note: str):
            request = SyncRequest(run_id=str(uuid.uuid4()), repo_id=root.name, root=str(root),
                                  collection="codeindex", source="all")
            fence = state.grant_fence(root.name, str(root), "codeindex")
            plan = plan_sync(request, state, rt.file_filter(root), limits)
            context = dict(run_id=request.run_id, repo_id=root.name, root=str(root), collection="codeindex",
                           fence=fence, commit=plan.commit)
            results = [r for files in plan.batches(64, 1 << 20)
                       for r in index_batch(BatchJob(**context, files=files), store, cache, embedder,
                                            settings.max_file_size)]
            job = CommitJob(**context, advance_commit=plan.advance_commit, trigger=handle_note,
                            started_at="2026-01-01T00:00:00.000+00:00", files=plan.files)
            return fence, job, results, BatchJob(**context, files=plan.to_index())

        edit_some(root, 5, "v1")
        with ExitStack() as a_holds:
            with monkeypatch.context() as stalled:
                # A stalls (a long GC pause, a partition): its lock is never renewed.
                stalled.setattr(locks, "_renew", lambda lock, handle, every: None)
                a_handle = a_holds.enter_context(redis_repo_lock(redis, root.name, ttl=1.0, timeout=5))
            a_fence, a_job, _, a_batch = plan_and_index("A")
            time.sleep(1.5)  # A's lock expires
            edit_some(root, 5, "v2")  # the repository moves on
            with redis_repo_lock(redis, root.name, ttl=5.0, timeout=5):
                b_fence, b_job, b_results, _ = plan_and_index("B")
                commit_sync(b_job, b_results, state, store)
            assert b_fence > a_fence
            # The work tree moves on again (uncommitted), so A's late writes differ from B's.
            for path in sorted(p for p in root.rglob("*.py") if ".git" not in p.parts)[:5]:
                edit_function(path, "v3")
            # A wakes up: its upserts carry the older token and change nothing...
            before = fleet.export(root.name)
            a_results = index_batch(a_batch, store, cache, embedder, settings.max_file_size)
            assert fleet.export(root.name) == before
            # ... and its commit is refused by the fencing token.
            with pytest.raises(StaleFenceError):
                commit_sync(a_job, a_results, state, store)
        assert a_handle.lost
        assert state.get_repo(root.name).committed_fence == b_fence
    finally:
        configure()
        runtime.reset()
    assert_index_exact(fleet, root, tmp_path)


def test_redis_restarted_mid_run_worker_resumes(fleet, tmp_path: Path) -> None:
    fleet.start_worker("a")
    root = make_repo(tmp_path, "restart", 40, 30)
    run_id = start_sync(fleet, root, "--all")
    wait_for(lambda: (r := run_of(fleet, run_id)) and r.files_done > 0, 60, "the first batches")
    fleet.redis_server.restart(down_seconds=1.0)  # no persistence: queued messages and chord state are lost
    # The worker reconnects and consumes again: the next sync completes the lost work exactly,
    # because the interrupted run never committed (the state was not advanced).
    wait_for(lambda: fleet.consuming("a"), 60, "worker a to consume again")
    summary = fleet.sync(root, "--all", timeout=120)
    assert summary["errors"] == 0
    assert "resum" in fleet.log("worker-a").lower() or "reconnect" in fleet.log("worker-a").lower() \
        or "connection" in fleet.log("worker-a").lower()
    assert_index_exact(fleet, root, tmp_path)


def break_store(fleet) -> Path:
    """Make the shared vector store fail: its directory becomes a plain file."""
    store, aside = fleet.home / "lancedb", fleet.home / "lancedb.aside"
    store.rename(aside)
    store.write_text("not a directory\n")
    return aside


def mend_store(fleet, aside: Path) -> None:
    (fleet.home / "lancedb").unlink()
    aside.rename(fleet.home / "lancedb")


def breaker_state(fleet) -> str | None:
    value = fleet.redis().get("codeindex:vector_store:pybreaker:state")
    return value.decode() if value else None


def test_vector_store_failing_for_a_while_opens_the_breaker_and_loses_nothing(fleet, tmp_path: Path) -> None:
    fleet.start_worker("a")
    fleet.start_worker("b")
    root = make_repo(tmp_path, "outage", 30, 20)
    fleet.sync(root, "--all")
    edit_some(root, 12, "outage")
    aside = break_store(fleet)
    run_id = start_sync(fleet, root, "--detect-changes")
    wait_for(lambda: breaker_state(fleet) == "open", 60, "the vector-store breaker to open")
    time.sleep(1.0)
    mend_store(fleet, aside)
    wait_run(fleet, run_id, timeout=90)
    assert breaker_state(fleet) == "closed"
    assert_index_exact(fleet, root, tmp_path)


def store_writes_refused(fleet, refused: bool) -> None:
    """Make the store's data directory read-only (or writable again): reads, the store check of
    a plan included, still work, writes fail, for workers without DAC override."""
    data = fleet.home / "lancedb" / "codeindex.lance" / "data"
    data.chmod(0o555 if refused else 0o755)


def test_header_task_that_fails_leaves_state_unadvanced_and_replay_completes(fleet, tmp_path: Path) -> None:
    quick = {"CODEINDEX_MAX_RETRIES": "1"}
    fleet.start_worker("a", extra_env=quick, permissions=True)
    fleet.start_worker("b", extra_env=quick, permissions=True)
    root = make_repo(tmp_path, "failing", 30, 20)
    fleet.sync(root, "--all")
    before = fleet.state().get_repo(root.name)
    edit_some(root, 12, "failing")
    store_writes_refused(fleet, True)
    run_id = start_sync(fleet, root, "--detect-changes")
    run = wait_run(fleet, run_id, timeout=90, status="failed")
    assert run.message
    after = fleet.state().get_repo(root.name)
    assert (after.last_commit, after.committed_fence) == (before.last_commit, before.committed_fence)
    failures = json.loads(fleet.cli("failures", "--json").stdout)
    batch_failures = [f for f in failures if f["task"] == "codeindex.embed.batch" and f["run_id"] == run_id]
    assert batch_failures, failures
    store_writes_refused(fleet, False)
    # Replaying a failed batch re-syncs its files...
    replayed = json.loads(fleet.cli("failures", "replay", str(batch_failures[0]["id"]), "--json").stdout)
    wait_run(fleet, replayed["run_id"], timeout=60)
    # ... and the next sync completes exactly the missing work.
    summary = fleet.sync(root, "--detect-changes")
    assert summary["errors"] == 0
    assert fleet.state().get_repo(root.name).last_commit == git(root, "rev-parse", "HEAD").strip()
    assert_index_exact(fleet, root, tmp_path)


def test_a_waiting_sync_whose_header_task_fails_reports_the_failure_and_its_errback_runs(fleet, tmp_path: Path) -> None:
    """The chord's error callback (``codeindex.sync.fail``) is called the way Celery calls a
    new-style errback, ``(request, exc, traceback)``: declared bound, Celery sent it as an
    old-style task with the task id alone, it failed with a TypeError, and a CLI waiting on the
    sync reported that TypeError as a bug (exit 5) instead of the failure (a 2 MB file's batch
    past its soft time limit showed it)."""
    quick = {"CODEINDEX_MAX_RETRIES": "0"}
    fleet.start_worker("a", extra_env=quick, permissions=True)
    root = make_repo(tmp_path, "waiting", 10, 20)
    fleet.sync(root, "--all")
    edit_some(root, 4, "waiting")
    store_writes_refused(fleet, True)
    try:
        proc = fleet.cli("sync", "--root", str(root), "--repo", root.name, "--detect-changes", check=False,
                         timeout=120)
    finally:
        store_writes_refused(fleet, False)
    assert proc.returncode == 4, (proc.returncode, proc.stderr)
    assert "the sync failed" in proc.stderr and "TypeError" not in proc.stderr, proc.stderr
    # The errback ran and marked the run failed; nothing of it raised.
    logs = (fleet.logs / "worker-a.log").read_text(errors="replace")
    assert "missing 2 required positional arguments" not in logs
    assert "Errback 'codeindex.sync.fail' raised" not in logs
    run = next(r for r in fleet.state().list_runs() if r.repo_id == root.name)
    assert run.status == "failed" and run.message, run
