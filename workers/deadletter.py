"""Dead letters: a task that fails for good leaves its arguments and error as a failure record,
so that ``codeindex failures`` shows it, and a replay (or the next sync) redoes the work."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from celery import Celery

from config.kinds import TASK_KINDS
from indexing.errors import RefusedError, SyncFailedError, UsageError
from indexing.messages import BatchJob, SyncRequest, repo_id_of, run_id_of
from indexing.state import FailureRecord, RunStatus, utcnow
from workers.runtime import Runtime

log = logging.getLogger("codeindex.failures")

#: The task a failed embedding batch is replayed as (a sync of the batch's files).
SYNC_TASK = "codeindex.sync.plan"
EMBED_TASK = "codeindex.embed.batch"


def mark_run_failed(rt: Runtime, run_id: str | None, message: str) -> None:
    """Mark run ``run_id`` failed unless it already finished."""
    if not run_id:
        return
    run = rt.state.get_run(run_id)
    if run is not None and run.status is RunStatus.RUNNING:
        run.status, run.finished_at, run.message = RunStatus.FAILED, utcnow(), message[:1000]
        rt.state.finish_run(run)


def record_task_failure(rt: Runtime, task_name: str, args, kwargs, exc: BaseException) -> None:
    """Record the failure record of a task that failed for good, and mark its run failed.

    Refusals and usage errors are answers, not failures, and a SyncFailedError only relays a
    failure already recorded by the task that failed: skipped. A failure to record is logged,
    never raised: it must not hide the original error.
    """
    if isinstance(exc, (RefusedError, UsageError, SyncFailedError)):
        return
    if rt.settings.home is None and not rt.settings.state_url:
        log.error("task %s failed: %s", task_name, exc)
        return
    run_id = run_id_of(args, kwargs)
    message = f"{type(exc).__name__}: {exc}"
    try:
        rt.state.record_failure(run_id, task_name, {"args": list(args or ()), "kwargs": kwargs or {}}, message)
        mark_run_failed(rt, run_id, message)
    except Exception:
        log.exception("could not record the failure of task %s", task_name)


def replay(app: Celery, rt: Runtime, record: FailureRecord, arguments: Mapping) -> dict:
    """Re-enqueue the task of failure ``record`` from its decoded ``arguments``
    (``{"args": [...], "kwargs": {...}}``) on ``app``.

    A failed ``codeindex.embed.batch`` becomes a new sync of its files: a batch alone would
    upsert without committing, and the sync re-embeds only what is not in the cache. Every
    other task is sent again as recorded; a repository-bound one goes to its owner's queue,
    the repository placed first (its shard may be gone since).
    Returns ``{"task", "task_id", "run_id"}``. Raises UsageError for an unknown task.
    """
    task, args, kwargs = record.task, list(arguments.get("args") or []), dict(arguments.get("kwargs") or {})
    if task == EMBED_TASK:
        job = BatchJob.model_validate(args[0] if args else kwargs["job"])
        request = SyncRequest(run_id=str(uuid.uuid4()), repo_id=job.repo_id, root=job.root,
                              collection=job.collection, source="paths", trigger="replay",
                              changes=[(f.path, "modified") for f in job.files])
        task, args, kwargs = SYNC_TASK, [request.model_dump(mode="json")], {}
    app.loader.import_default_modules()  # the task modules of ``include``, as a worker loads them
    if task not in app.tasks:
        raise UsageError(f"cannot replay unknown task {task!r}")
    repo_id = repo_id_of(args, kwargs)
    kind = getattr(app.tasks[task], "kind", None)
    if kind is not None and TASK_KINDS[kind].queue is None and repo_id is not None:  # bound to its owner
        rt.place(repo_id)
    result = app.tasks[task].apply_async(args=args, kwargs=kwargs)
    return {"task": task, "task_id": result.id, "run_id": run_id_of(args, kwargs)}
