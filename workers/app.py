"""The Celery application and the task policy every codeindex task shares.

A task declares its stable name and its kind, ``@codeindex_task("codeindex.sync.plan",
kind=TaskKind.REPO)``; retries, backoff, time limits, acknowledgement and the dead-letter
record come from the kind's row in :data:`config.kinds.TASK_KINDS`, set once per kind as
Sentry's ``instrumented_task`` does.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from celery import Celery, Task, signals
from celery.result import allow_join_result

from config.celery import celery_config
from config.kinds import TaskKind, TaskPolicy, task_policy
from config.settings import Settings, get_settings
from indexing.errors import CodeindexError, LockTimeoutError, StoreError, SyncFailedError
from workers import deadletter
from workers.runtime import runtime

log = logging.getLogger("codeindex.tasks")

#: Transient failures: retried with backoff up to the kind's ``max_retries``.
RETRIED = (StoreError, LockTimeoutError)

app = Celery("codeindex", include=["tasks.sync", "tasks.embed", "tasks.shards", "tasks.cleanup", "tasks.backup",
                                    "tasks.artifact"])
app.conf.update(celery_config(get_settings()))

#: Seconds of jitter added to a retry that waits for an open circuit breaker's reset timeout.
BREAKER_RETRY_SPREAD = 2.0

#: The message header holding the Unix time a task message was published, which
#: ``workers.broker.oldest_message_ages`` reads: Celery's protocol 2 headers carry no time
#: (Celery docs, "Message Protocol"). Moved messages keep it (``celery.contrib.migrate``
#: republishes headers as they are); a retry is a new message with a new time.
SENT_AT_HEADER = "codeindex_sent_at"


@signals.before_task_publish.connect(weak=False)
def stamp_sent_at(headers: dict | None = None, **_: object) -> None:
    """Stamp :data:`SENT_AT_HEADER` on every task message this process publishes (Celery's
    ``before_task_publish`` signal gets the headers dict that is then sent)."""
    if headers is not None:
        headers.setdefault(SENT_AT_HEADER, time.time())


class CodeindexTask(Task):
    """Base of every codeindex task: the policy of its kind (:attr:`kind`), transient failures
    retried with exponential backoff and full jitter (Celery's ``autoretry_for``), and a
    failure record for kinds that keep dead letters."""

    kind: TaskKind
    policy: TaskPolicy
    autoretry_for = RETRIED
    retry_backoff = 2
    retry_jitter = True

    def apply_policy(self, policy: TaskPolicy) -> None:
        """Take the retry count, time limits and acknowledgement of ``policy``."""
        self.policy = policy
        self.max_retries = policy.max_retries
        self.time_limit, self.soft_time_limit = policy.time_limit, policy.soft_time_limit
        self.acks_late = self.reject_on_worker_lost = policy.acks_late

    def retry(self, args=None, kwargs=None, exc=None, throw=True, eta=None, countdown=None, max_retries=None,
              **options):
        """Celery's ``Task.retry``, waiting at least until an open circuit breaker lets a trial
        call through when ``exc`` says when that is (``DependencyUnavailableError.retry_after``,
        seconds), plus up to :data:`BREAKER_RETRY_SPREAD` seconds of jitter so that the tasks a
        breaker held back do not all come back at the same instant. The exponential backoff
        alone can retry before the reset timeout: the retry fails fast against the open breaker
        and spends the budget (``max_retries``) without the dependency ever being tried."""
        wait = getattr(exc, "retry_after", None)
        if wait is not None and eta is None:
            countdown = max(countdown or 0.0, wait + random.uniform(0.0, BREAKER_RETRY_SPREAD))
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

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
        """Record the dead letter (kinds that keep them) and mark the run failed."""
        if self.policy.dead_letter:
            deadletter.record_task_failure(runtime(), self.name, args, kwargs, exc)
        else:
            log.error("task %s[%s] failed: %s: %s", self.name, task_id, type(exc).__name__, exc)


def codeindex_task(name: str, *, kind: TaskKind, bind: bool = True):
    """Declare a codeindex task: ``name`` is its stable name (shown in Flower), ``kind`` its row
    in the task-kind table, which sets its queue, retries, limits and acknowledgement. The
    function gets the task as its first argument (``bind``), except an error callback: Celery
    calls an errback ``(request, exc, traceback)`` only when it is not bound, and sends a bound
    one as a task with the failed task's id alone (``celery.backends.base._call_task_errbacks``)."""
    policy = task_policy(kind, get_settings())
    return app.task(name=name, base=CodeindexTask, bind=bind, kind=kind, policy=policy,
                    max_retries=policy.max_retries, retry_backoff_max=policy.retry_backoff_max,
                    time_limit=policy.time_limit, soft_time_limit=policy.soft_time_limit,
                    acks_late=policy.acks_late, reject_on_worker_lost=policy.acks_late)


def apply_settings(settings: Settings) -> None:
    """Re-read the Celery configuration and every task's policy from ``settings`` (the CLI
    calls it after its options, tests after theirs). Raises ValueError for limits that
    contradict each other (``config.celery.celery_config``)."""
    before = (app.conf.broker_url, app.conf.result_backend)
    app.conf.update(celery_config(settings))
    if (app.conf.broker_url, app.conf.result_backend) != before:
        # Once used, Celery keeps the connection pool of the broker and the result backend it
        # had then; a process that changes them (tests switch between the embedded mode and a
        # fleet) must not go on talking to the old ones. Celery has no public reset: these are
        # what its own after-fork handler clears, and where it caches the backend.
        app._pool = None
        if "amqp" in app.__dict__:
            app.amqp._producer_pool = None
        app._backend_cache = None
        app._local = threading.local()
    for task in app.tasks.values():
        if isinstance(task, CodeindexTask):
            task.apply_policy(task_policy(task.kind, settings))
