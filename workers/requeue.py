"""Move the messages left in a dead or drained shard's queue to the repositories' new owners,
so nothing waits forever in a queue nobody reads.

Uses Celery's own message mover (:func:`celery.contrib.migrate.move`), which republishes the
raw message with its headers and properties (task id, chord membership, retries) and then
acknowledges the original: at-least-once, and the tasks are idempotent. Messages a dead worker
had reserved come back to its queue when the broker's visibility timeout expires (kombu's Redis
transport restores them), which is why beat runs this on every check, not once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery.contrib.migrate import move
from kombu import Queue

from config.celery import shard_queue
from indexing.messages import repo_id_of
from workers import metrics
from workers.app import app
from workers.broker import queue_depths
from workers.runtime import Runtime

log = logging.getLogger("codeindex.requeue")


def requeue_from(rt: Runtime, shard_ids: Iterable[str], timeout: float = 1.0) -> int:
    """Move every message queued for ``shard_ids`` to the queue its task routes to now.

    ``timeout``: seconds without a message after which a queue counts as empty.
    A message whose route still names the same queue (its repository could not be placed
    elsewhere), or whose task has no kind, is left where it is. Returns the number of
    messages moved. Raises kombu/redis connection errors when the broker is unreachable.
    """
    sources = [shard_queue(s) for s in shard_ids]
    waiting = [q for q, depth in queue_depths(sources).items() if depth]
    if not waiting:
        return 0
    rt.owners.forget()

    def destination(body, message):
        name = message.headers.get("task", "")
        kind = getattr(app.tasks.get(name), "kind", None)
        args, kwargs = (body[0], body[1]) if isinstance(body, (list, tuple)) and len(body) >= 2 else ((), {})
        target = rt.queue_for(kind, repo_id_of(args, kwargs)) if kind is not None else None
        source = message.delivery_info.get("routing_key")
        if not target or target == source:
            return None
        log.info("moving %s[%s] from %s to %s", name, message.headers.get("id"), source, target)
        return Queue(target, routing_key=target)

    # Count with move()'s callback: the State it returns is its filter's, not the one it counts
    # the moved messages in (celery.contrib.migrate.move), so its ``filtered`` always reads 0.
    moves: list[str] = []
    move(destination, app=app, source=[Queue(q, routing_key=q) for q in waiting], timeout=timeout,
         callback=lambda state, body, message: moves.append(message.headers.get("id")))
    moved = len(moves)
    if moved:
        metrics.MESSAGES_MOVED.inc(moved)
        log.info("moved %d messages out of %s", moved, ", ".join(waiting))
    return moved
