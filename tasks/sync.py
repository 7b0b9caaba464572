"""Sync tasks: plan (then replace itself with the embedding chord) and commit (the chord body)."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from celery import chord

from config.celery import shard_queue
from config.settings import Settings, get_settings
from indexing.messages import BatchJob, CommitJob, FileResult, RunContext, SyncRequest
from indexing.state import RunRecord, utcnow
from indexing.sync import PlanLimits, check_model, commit_sync, plan_sync, record_model, run_record, summarize_plan
from tasks.embed import batch
from tasks.failures import mark_run_failed
from workers import resources
from workers.app import app, codeindex_task
from workers.routing import router

log = logging.getLogger("codeindex.sync")

#: A plan delivered to a shard that no longer owns its repository is sent on at most this often.
MAX_HOPS = 3


def _limits(settings: Settings) -> PlanLimits:
    return PlanLimits(settings.max_file_size, settings.batch_files, settings.batch_bytes, settings.delete_threshold)


@codeindex_task("codeindex.sync.plan")
def plan(self, request: dict) -> dict:
    """Plan a :class:`SyncRequest`; return its summary, or replace this task with the chord
    of embedding batches whose body (:func:`commit`) returns it."""
    req = SyncRequest.model_validate(request)
    settings = get_settings()
    root = Path(req.root)
    embedder = resources.embedder(settings)
    started = utcnow()
    if req.dry_run:
        state = resources.state_store(settings, readonly=True)
        check_model(state, req.collection, embedder)
        result = plan_sync(req, state, resources.file_filter(settings, root), _limits(settings))
        return summarize_plan(req, result, _seconds_since(started)).model_dump(mode="json")

    if not self.request.is_eager and settings.state_url and req.hops < MAX_HOPS:
        # Routing is cached by publishers: a plan that reaches a shard that stopped owning the
        # repository (drained, rebalanced) goes on to the owner, keeping its task id and result.
        router().forget(req.repo_id)
        owner = router().owner(req.repo_id)
        if owner != settings.shard_id:
            log.info("plan of %s reached shard %s, which does not own it: forwarded to shard %s",
                     req.repo_id, settings.shard_id, owner)
            forwarded = req.model_copy(update={"hops": req.hops + 1})
            return self.replace(plan.s(forwarded.model_dump(mode="json")).set(queue=shard_queue(owner)))
    state = resources.state_store(settings)
    with resources.repo_lock(settings, req.repo_id):
        check_model(state, req.collection, embedder)
        previous = state.get_repo(req.repo_id)
        fence = state.grant_fence(req.repo_id, req.root, req.collection)
        result = plan_sync(req, state, resources.file_filter(settings, root), _limits(settings))
    batches = result.batches(settings.batch_files, settings.batch_bytes)
    state.start_run(RunRecord(id=req.run_id, repo_id=req.repo_id, trigger=req.trigger, started_at=started,
                              files_total=sum(len(b) for b in batches), message=result.note,
                              shard_id=settings.shard_id))
    context = RunContext(run_id=req.run_id, repo_id=req.repo_id, root=req.root, collection=req.collection,
                         fence=fence, commit=result.commit)
    job = CommitJob(**context.model_dump(), advance_commit=result.advance_commit, trigger=req.trigger,
                    started_at=started, files=result.files,
                    verify_store=previous is not None and previous.fence > previous.committed_fence)
    if not batches:
        return _commit(job, [])
    record_model(state, req.collection, embedder)
    header = [batch.s(BatchJob(**context.model_dump(), files=files).model_dump(mode="json")) for files in batches]
    body = commit.s(job.model_dump(mode="json")).on_error(fail.s(run_id=req.run_id))
    return self.replace(chord(header, body))


@codeindex_task("codeindex.sync.commit")
def commit(self, results: list[list[dict]], job: dict) -> dict:
    """Chord body: commit the batches' ``results`` for :class:`CommitJob` ``job``."""
    work = CommitJob.model_validate(job)
    flat = [FileResult.model_validate(r) for part in results for r in part]
    return _commit(work, flat)


def _commit(work: CommitJob, results: list[FileResult]) -> dict:
    settings = get_settings()
    state = resources.state_store(settings)
    with resources.repo_lock(settings, work.repo_id):
        summary = commit_sync(work, results, state, resources.vector_store(settings, work.collection))
    summary.seconds = _seconds_since(work.started_at)
    total = sum(1 for f in work.files if f.action.value in ("ADD", "UPDATE"))
    record = run_record(summary, work.trigger, work.started_at, total)
    record.shard_id = settings.shard_id
    state.finish_run(record)
    return summary.model_dump(mode="json")


@app.task(name="codeindex.sync.fail")
def fail(request, exc, traceback, run_id: str) -> None:
    """Chord error callback: the run is marked failed and the state left as it was, so the
    next sync redoes exactly the missing work."""
    mark_run_failed(run_id, f"{type(exc).__name__}: {exc}")


def _seconds_since(iso: str) -> float:
    return round((datetime.fromisoformat(utcnow()) - datetime.fromisoformat(iso)).total_seconds(), 3)
