"""The Celery configuration: queue names, routes, acknowledgement and time limits.

Queues are named here and only here (PostHog's ``CeleryQueue`` enum is the model); the
queue of shard X is ``shard.X``, produced by :func:`shard_queue`.
"""

from __future__ import annotations

from enum import StrEnum

from config.settings import Settings


class Queue(StrEnum):
    """Every queue a codeindex worker may consume."""

    DEFAULT = "shard.local"  # the single shard of the embedded mode
    EMBED = "embed"  # embedding batches (chord headers): any worker
    MAINTENANCE = "maintenance"  # beat's jobs


def shard_queue(shard_id: str) -> str:
    """Return the queue name of shard ``shard_id`` (``shard.<shard_id>``)."""
    if not shard_id or any(c.isspace() for c in shard_id):
        raise ValueError(f"invalid shard id {shard_id!r}")
    return f"shard.{shard_id}"


def celery_config(settings: Settings) -> dict[str, object]:
    """Build the Celery configuration mapping for ``settings``.

    Rules from the Celery docs ("Tasks: acks_late", "Optimizing: prefetch limits"):
    idempotent tasks acknowledge late and are re-queued when a worker is lost; long tasks
    prefetch one message at a time.
    """
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
        "task_default_queue": Queue.DEFAULT.value,
        "task_routes": {
            "codeindex.embed.*": {"queue": Queue.EMBED.value},
        },
        "result_extended": True,
        "worker_hijack_root_logger": False,
    }
