"""The Celery application and the task policy every codeindex task shares.

Retries, backoff, acknowledgement and the dead-letter record are set once, on
:class:`CodeindexTask`, as Sentry's ``instrumented_task`` does; a task definition reads as
a declaration (``@codeindex_task("codeindex.sync.plan")``).
"""

from __future__ import annotations

import logging

from celery import Celery, Task
from celery.result import allow_join_result

from config.celery import celery_config
from config.settings import Settings, get_settings
from indexing.errors import CodeindexError, LockTimeoutError, StoreError, SyncFailedError

log = logging.getLogger("codeindex.tasks")

app = Celery("codeindex", include=["tasks.sync", "tasks.embed", "tasks.shards"])
app.conf.update(celery_config(get_settings()))

# Signal handlers of fleet workers (registration, heartbeat, drain) and of metrics.
from workers import lifecycle, metrics  # noqa: E402,F401  (connects Celery signals)


def apply_settings(settings: Settings) -> None:
    """Re-read the Celery configuration from ``settings`` (the CLI calls it after its options)."""
    app.conf.update(celery_config(settings))


class CodeindexTask(Task):
    """Base of every codeindex task: transient failures retry with exponential backoff and
    jitter (each delay capped well below the broker's visibility timeout), idempotent work
    acknowledges late, and a task that exhausts its retries leaves a failure record."""

    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = (StoreError, LockTimeoutError)
    retry_backoff = 2
    retry_jitter = True

    @property
    def max_retries(self) -> int:  # read per call: settings may change after import (CLI, tests)
        return get_settings().max_retries

    @property
    def retry_backoff_max(self) -> int:
        """Longest retry delay; celery_config checks it stays below the visibility timeout."""
        return get_settings().retry_backoff_max

    def on_replace(self, sig):
        """Run the replacing signature; in eager mode its results already exist when read,
        so the join Celery guards against (a task blocking on subtasks) cannot block."""
        if self.request.is_eager:
            try:
                with allow_join_result():
                    return sig.apply().get()
            except CodeindexError as exc:
                # The replacing work already retried and left its failure record; retrying
                # this task too would redo all of it, so the failure is final here.
                raise SyncFailedError(f"{type(exc).__name__}: {exc}") from exc
        return super().on_replace(sig)

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: D401 - Celery hook
        """Record the dead-letter entry and mark the run failed."""
        from tasks.failures import record_task_failure

        record_task_failure(self.name, args, kwargs, exc)


def codeindex_task(name: str, **options):
    """Declare a codeindex task: ``name`` is its stable name (shown in Flower)."""
    return app.task(name=name, base=CodeindexTask, bind=True, **options)
