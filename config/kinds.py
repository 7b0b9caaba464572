"""The kinds of codeindex tasks and the policy each kind runs under: its queue, retries, time
limits, acknowledgement and dead-letter record.

PostHog's ``CeleryQueue`` made complete, with Sentry's ``instrumented_task`` idea that a task
definition is a declaration: ``@codeindex_task("codeindex.sync.plan", kind=TaskKind.REPO)``.
The router and the task base read a task's kind, never its name; adding a task family is
adding a row to :data:`TASK_KINDS`. docs/architecture.md shows the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from config.celery import Queue
from config.settings import Settings


class TaskKind(StrEnum):
    """What a task is bound to, which decides where and how it runs."""

    REPO = "repo"  # bound to one repository: runs on its owner's queue shard.<id>
    EMBED = "embed"  # an embedding batch of a chord header: any worker
    CALLBACK = "callback"  # a chord's error callback: any worker
    MAINTENANCE = "maintenance"  # beat's shard checks and rebalancing
    CLEANUP = "cleanup"  # retention and eviction, scheduled by beat
    BACKUP = "backup"  # bundles of one repository's clone: runs on its owner's queue shard.<id>
    ARTIFACT = "artifact"  # pack or install one repository's index: runs on its owner's queue shard.<id>


@dataclass(frozen=True, slots=True)
class TaskPolicy:
    """The policy of one kind, resolved against the settings (seconds, counts).

    ``queue`` is None for repository-bound tasks: the router sends them to the owner's
    ``shard.<id>``. ``max_retries``: how often a transient failure (a store, lock or broker
    error) is retried with exponential backoff and full jitter, each delay at most
    ``retry_backoff_max`` seconds. ``acks_late``: the message is acknowledged after the task
    ran and redelivered when its worker is lost (Celery "Tasks: acks_late"; the tasks are
    idempotent). ``dead_letter``: a task that fails for good leaves a failure record that
    ``codeindex failures replay`` can resend.
    """

    kind: TaskKind
    queue: Queue | None
    max_retries: int
    retry_backoff_max: int
    time_limit: int
    soft_time_limit: int
    acks_late: bool
    dead_letter: bool


@dataclass(frozen=True, slots=True)
class KindRow:
    """A row of :data:`TASK_KINDS`. ``None`` takes the setting of the same name
    (``max_retries``, ``task_time_limit``, ``task_soft_time_limit``); a number is a cap in
    seconds that the settings' limits can only lower, so that every limit stays below the
    broker's visibility timeout (``config.celery.celery_config`` checks that against the
    settings)."""

    queue: Queue | None
    max_retries: int | None
    time_limit: int | None
    soft_time_limit: int | None
    acks_late: bool
    dead_letter: bool

    def resolve(self, kind: TaskKind, settings: Settings) -> TaskPolicy:
        """The concrete policy of ``kind`` under ``settings``."""
        hard = settings.task_time_limit if self.time_limit is None else min(self.time_limit, settings.task_time_limit)
        soft = settings.task_soft_time_limit if self.soft_time_limit is None \
            else min(self.soft_time_limit, settings.task_soft_time_limit)
        return TaskPolicy(
            kind=kind, queue=self.queue,
            max_retries=settings.max_retries if self.max_retries is None else self.max_retries,
            retry_backoff_max=settings.retry_backoff_max, time_limit=hard, soft_time_limit=min(soft, hard - 1),
            acks_late=self.acks_late, dead_letter=self.dead_letter)


#: Every kind of task. Sync and embedding work is long, retried and replayable; beat's jobs are
#: short and not retried, because the schedule runs them again within seconds (a check every
#: 10 s, rebalancing every 60 s, retention hourly), and a failure record of one would only be noise.
TASK_KINDS: dict[TaskKind, KindRow] = {
    TaskKind.REPO: KindRow(queue=None, max_retries=None, time_limit=None, soft_time_limit=None,
                           acks_late=True, dead_letter=True),
    TaskKind.EMBED: KindRow(queue=Queue.EMBED, max_retries=None, time_limit=None, soft_time_limit=None,
                            acks_late=True, dead_letter=True),
    TaskKind.CALLBACK: KindRow(queue=Queue.MAINTENANCE, max_retries=0, time_limit=60, soft_time_limit=50,
                               acks_late=True, dead_letter=False),
    TaskKind.MAINTENANCE: KindRow(queue=Queue.MAINTENANCE, max_retries=0, time_limit=120, soft_time_limit=100,
                                  acks_late=True, dead_letter=False),
    TaskKind.CLEANUP: KindRow(queue=Queue.MAINTENANCE, max_retries=0, time_limit=900, soft_time_limit=840,
                              acks_late=True, dead_letter=False),
    # A bundle of a large clone takes minutes: the settings' limits, two retries (a store that
    # failed), replayable; beat sends the next one anyway if a backup is lost.
    TaskKind.BACKUP: KindRow(queue=None, max_retries=2, time_limit=None, soft_time_limit=None,
                             acks_late=True, dead_letter=True),
    # Packing or installing an index reads or writes every row of a repository: the settings'
    # limits, one retry (a store that failed); both are idempotent. No dead letter: the caller
    # (the CLI, CI) waits for the answer and is told; a refused artifact is final, not a task to replay.
    TaskKind.ARTIFACT: KindRow(queue=None, max_retries=1, time_limit=None, soft_time_limit=None,
                               acks_late=True, dead_letter=False),
}


def task_policy(kind: TaskKind, settings: Settings) -> TaskPolicy:
    """The policy tasks of ``kind`` run under with ``settings``."""
    return TASK_KINDS[kind].resolve(kind, settings)
