"""Hand a shard's work to the rest of the fleet: the one procedure behind a worker's SIGTERM
drain, beat's heartbeat check and ``codeindex shards drain``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from workers.placement import Placement, reassign_from
from workers.registry import ShardStatus
from workers.requeue import requeue_from
from workers.runtime import Runtime

log = logging.getLogger("codeindex.handover")


@dataclass(frozen=True, slots=True)
class HandOver:
    """What a hand-over did: the repositories moved (each to its new owner) and the queued
    messages moved after them."""

    shard_id: str
    moved: list[Placement]
    messages: int


def hand_over(rt: Runtime, shard_id: str, *, status: ShardStatus | None = None) -> HandOver:
    """Move ``shard_id``'s repositories to their next owners on the ring, then the messages
    still queued for it, so they follow their repositories.

    ``status`` (``draining`` for a drain) is set first, so no new repository lands there;
    beat hands over shards that are already offline or draining and sets nothing.
    Raises :class:`~workers.placement.NoActiveShardError` when no other shard can take them,
    :class:`~indexing.errors.UnknownShardError`, StoreError, and broker connection errors.
    """
    registry = rt.registry
    if status is not None:
        registry.set_status(shard_id, status)
    moved = reassign_from(registry, shard_id)
    if moved:
        rt.owners.forget()
        log.info("shard %s: %d repositories handed over", shard_id, len(moved))
    messages = requeue_from(rt, [shard_id])
    return HandOver(shard_id, moved, messages)
