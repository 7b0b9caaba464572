"""Dead-letter records: a task that exhausted its retries leaves its arguments and error,
so that ``codeindex failures`` shows it and the next sync (or a replay) redoes the work."""

from __future__ import annotations

import logging

from config.settings import get_settings
from indexing.errors import RefusedError, SyncFailedError, UsageError
from indexing.state import utcnow
from workers import resources

log = logging.getLogger("codeindex.failures")


def _run_id(args, kwargs) -> str | None:
    for value in list(args or ()) + list((kwargs or {}).values()):
        if isinstance(value, dict) and isinstance(value.get("run_id"), str):
            return value["run_id"]
    return None


def mark_run_failed(run_id: str | None, message: str) -> None:
    """Mark run ``run_id`` failed unless it already finished."""
    if not run_id:
        return
    state = resources.state_store(get_settings())
    run = state.get_run(run_id)
    if run is not None and run.status == "running":
        run.status, run.finished_at, run.message = "failed", utcnow(), message[:1000]
        state.finish_run(run)


def record_task_failure(task_name: str, args, kwargs, exc: BaseException) -> None:
    """Record a failed task. Refusals and usage errors are answers, not failures, and a
    SyncFailedError only relays a failure already recorded by the task that failed: skipped."""
    if isinstance(exc, (RefusedError, UsageError, SyncFailedError)):
        return
    settings = get_settings()
    if settings.home is None:
        log.error("task %s failed: %s", task_name, exc)
        return
    run_id = _run_id(args, kwargs)
    message = f"{type(exc).__name__}: {exc}"
    try:
        resources.state_store(settings).record_failure(run_id, task_name, {"args": list(args or ()), "kwargs": kwargs or {}}, message)
        mark_run_failed(run_id, message)
    except Exception:  # the failure record must never hide the original error
        log.exception("could not record the failure of task %s", task_name)
