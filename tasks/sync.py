"""Sync tasks: plan (then replace itself with the embedding chord), commit (the chord body) and
the chord's error callback."""

from __future__ import annotations

import uuid

from celery import chord
from celery.exceptions import Ignore

from config.celery import shard_queue
from config.kinds import TaskKind
from indexing.errors import UsageError
from indexing.messages import CommitJob, FileResult, RunContext, SyncRequest, as_message
from indexing.sync import PreparedSync, finish_sync, prepare_sync, settle_writes
from tasks.embed import batch
from workers.app import codeindex_task
from workers.deadletter import mark_run_failed
from workers.runtime import runtime


@codeindex_task("codeindex.sync.plan", kind=TaskKind.REPO)
def plan(self, request: dict) -> dict:
    """Plan a :class:`SyncRequest` on its owner; return its summary, or replace this task with the
    chord of embedding batches whose body (:func:`commit`) returns it."""
    req = SyncRequest.model_validate(request)
    if (owner := runtime().owner_elsewhere(req.repo_id, req.hops)) is not None:
        return self.replace(plan.s(req.forwarded().model_dump(mode="json")).set(queue=shard_queue(owner)))
    work = _prepared_work(req, self.request.id)
    return self.replace(work) if isinstance(work, chord) else work  # a chord is a dict too


def _prepared_work(req: SyncRequest, task_id: str) -> dict | chord:
    """Prepare ``req``: its summary (a dict) when nothing is left to embed, else the chord that
    does it. Raises Ignore when the run was re-issued since (``workers.reissue``: the new run
    answers the caller). A function of its own so that the plan (one ``PlannedFile`` a path)
    is gone when the chord runs: in eager mode (the embedded sync) Celery runs it inside
    ``replace``, in the plan task's frame (docs/performance.md, D)."""
    prepared = prepare_sync(req, runtime(), task_id=task_id)
    if prepared.superseded:
        raise Ignore()
    if prepared.summary is not None:
        return prepared.summary.model_dump(mode="json")
    return _embedding_chord(prepared, req.run_id)


def _embedding_chord(prepared: PreparedSync, run_id: str) -> chord:
    """The chord of a prepared sync: its embedding batches, then its commit (failure: :func:`fail`);
    every message without its default fields (:func:`~indexing.messages.as_message`)."""
    header = [batch.s(as_message(job)) for job in prepared.batch_jobs]
    return chord(header, commit.s(as_message(prepared.commit_job)).on_error(fail.s(run_id=run_id)))


@codeindex_task("codeindex.sync.commit", kind=TaskKind.REPO)
def commit(self, results: list[list[dict]], job: dict) -> dict:
    """Chord body: commit the batches' ``results`` for :class:`CommitJob` ``job``; the summary.

    The store settles first (:func:`~indexing.sync.settle_writes`), while the job and the
    results are still the message's dicts: the fold it may run is a sync's largest transient,
    and the commit's models, two for each path, would otherwise be built under it."""
    settle_writes(RunContext.model_validate(job), runtime())
    work = CommitJob.model_validate(job)
    flat = [FileResult.model_validate(r) for part in results for r in part]
    return finish_sync(work, flat, runtime()).model_dump(mode="json")


@codeindex_task("codeindex.sync.fail", kind=TaskKind.CALLBACK, bind=False)
def fail(request, exc, traceback, run_id: str) -> None:
    """Chord error callback, called by Celery with the failed task's ``request``, ``exc`` and
    ``traceback`` in the process that saw the failure (not bound: see ``codeindex_task``): the
    run is marked failed and the state left as it was, so the next sync redoes exactly the
    missing work."""
    mark_run_failed(runtime(), run_id, f"{type(exc).__name__}: {exc}")


def send_plan(request: SyncRequest):
    """Place ``request``'s repository (the explicit placement before a send: routing never
    places; a dry run only asks where it would go), then send its plan task to the owner's
    queue. Returns the task's ``AsyncResult``, which resolves to the sync's summary (a dict).
    Raises :class:`~indexing.errors.UsageError` when no shard can take it, and
    the registry's errors when it cannot be reached. Used by the CLI and the HTTP trigger."""
    owner = runtime().place(request.repo_id, dry_run=request.dry_run).shard_id
    return plan.apply_async(args=[request.model_dump(mode="json")], queue=shard_queue(owner))


def add_repository(repo_id: str, collection: str, *, root: str = "", url: str | None = None,
                   branch: str | None = None, trigger: str = "repo-add") -> tuple[str, SyncRequest, object]:
    """Add a repository to the fleet and send its first, full sync: a URL repository's source
    (``url``, ``branch``: checked by the caller, never holding credentials) is recorded in the
    state, the repository is placed on a shard, and its plan sent there. Returns the shard id,
    the request and the task's ``AsyncResult``. Raises :class:`~indexing.errors.UsageError`
    when ``repo_id`` is already a repository added by path and a URL is given."""
    rt = runtime()
    if url is not None:
        known = rt.readonly_state().get_repo(repo_id)
        if known is not None and not known.url:
            raise UsageError(f"repository {repo_id!r} is already in the index, added by path ({known.root}); "
                             "choose another name")
        rt.state.set_source(repo_id, collection, url, branch)
    shard = rt.place(repo_id).shard_id
    request = SyncRequest(run_id=str(uuid.uuid4()), repo_id=repo_id, root="" if url else root, url=url,
                          branch=branch if url else None, collection=collection, source="all", trigger=trigger)
    return shard, request, plan.apply_async(args=[request.model_dump(mode="json")], queue=shard_queue(shard))
