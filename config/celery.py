"""The Celery configuration: queue names, the router, acknowledgement and the broker's limits.

Queues are named here and only here (PostHog's ``CeleryQueue`` enum is the model); the
queue of shard X is ``shard.X``, produced by :func:`shard_queue`. Which queue, retries and
time limits each kind of task gets is the table of :mod:`config.kinds`.
"""

from __future__ import annotations

from enum import StrEnum

from config.settings import Settings


class Queue(StrEnum):
    """The queues every worker consumes, beside its own ``shard.<id>`` (:func:`shard_queue`)."""

    EMBED = "embed"  # embedding batches (chord headers): any worker
    MAINTENANCE = "maintenance"  # beat's jobs, chord error callbacks, cleanup


def shard_queue(shard_id: str) -> str:
    """Return the queue name of shard ``shard_id`` (``shard.<shard_id>``)."""
    if not shard_id or any(c.isspace() for c in shard_id):
        raise ValueError(f"invalid shard id {shard_id!r}")
    return f"shard.{shard_id}"


ROUTER = "workers.routing.route_task"  # by name: config/ imports nothing of ours


def celery_config(settings: Settings) -> dict[str, object]:
    """Build the Celery configuration mapping for ``settings``.

    Rules from the Celery docs ("Tasks: acks_late", "Optimizing: prefetch limits", "Redis:
    visibility timeout") and kombu's Redis transport; docs/operations.md explains each one:

    - idempotent tasks acknowledge late and are re-queued when a worker is lost;
    - long tasks prefetch one message at a time;
    - the visibility timeout exceeds the hard time limit and every retry delay, so a message
      is redelivered only when its worker is really gone;
    - results (and a chord's counter) outlive the longest chord;
    - a message no router claims goes to ``maintenance``, which every worker reads, so an
      unknown task is reported by a worker instead of waiting in a queue nobody reads;
    - a worker that loses its broker connection cancels its long-running tasks, which are
      redelivered, instead of finishing work whose acknowledgement can no longer arrive.

    Raises ValueError when the limits contradict each other.
    """
    if settings.task_soft_time_limit >= settings.task_time_limit:
        raise ValueError("task_soft_time_limit must be below task_time_limit")
    if not settings.eager and settings.visibility_timeout <= max(settings.task_time_limit, settings.retry_backoff_max):
        raise ValueError(
            f"visibility_timeout ({settings.visibility_timeout}s) must exceed the hard time limit "
            f"({settings.task_time_limit}s) and the longest retry delay ({settings.retry_backoff_max}s)")
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_always_eager": settings.eager,
        "task_eager_propagates": False,  # errors surface from result.get(), as from a worker
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_default_queue": Queue.MAINTENANCE.value,
        "task_routes": (ROUTER,),
        "task_create_missing_queues": True,
        # kombu's Redis transport puts an unacknowledged message back on its queue once it is
        # older than the visibility timeout; sweeping every tenth of it (at most every 10 s,
        # scanning on every sweep) bounds how long a dead worker's messages stay hidden.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
        },
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 10,
        "redis_socket_timeout": 30,
        "redis_socket_connect_timeout": 10,
        "redis_backend_health_check_interval": 30,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "result_expires": settings.result_expires,
        # Not extended: an extended result stores the task's arguments beside it for
        # result_expires, and an embedding batch's arguments carry up to 5 MB of file content
        # (schema 2, inline): 1,000 files of 10 MB left 38 MB in Redis for a day. Flower takes
        # names and arguments from the task events, not from results.
        "result_extended": False,
        "task_track_started": True,
        "worker_send_task_events": True,  # Flower
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
    }
