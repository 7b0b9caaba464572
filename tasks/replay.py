"""Replay of dead-letter records (``codeindex failures replay ID``)."""

from __future__ import annotations

import uuid

from indexing.errors import UsageError
from indexing.messages import BatchJob, SyncRequest
from workers.app import app


def replay(task: str, arguments: dict) -> dict:
    """Re-enqueue a failed task from its recorded ``arguments`` (``{"args": [...], "kwargs": {...}}``).

    A failed ``codeindex.embed.batch`` becomes a new sync of its files: a batch alone would
    upsert without committing, and the sync re-embeds only what is not in the cache. Every
    other task is sent again as recorded; the router sends it to its owner's queue now.
    Returns ``{"task", "task_id", "run_id"}``. Raises UsageError for an unknown task.
    """
    args, kwargs = list(arguments.get("args") or []), dict(arguments.get("kwargs") or {})
    if task == "codeindex.embed.batch":
        job = BatchJob.model_validate(args[0] if args else kwargs["job"])
        request = SyncRequest(run_id=str(uuid.uuid4()), repo_id=job.repo_id, root=job.root,
                              collection=job.collection, source="paths", trigger="replay",
                              changes=[(f.path, "modified") for f in job.files])
        task, args, kwargs = "codeindex.sync.plan", [request.model_dump(mode="json")], {}
    app.loader.import_default_modules()  # the task modules of ``include``, as a worker loads them
    if task not in app.tasks:
        raise UsageError(f"cannot replay unknown task {task!r}")
    result = app.send_task(task, args=args, kwargs=kwargs)
    run_id = next((a.get("run_id") for a in [*args, *kwargs.values()] if isinstance(a, dict) and "run_id" in a), None)
    return {"task": task, "task_id": result.id, "run_id": run_id}
