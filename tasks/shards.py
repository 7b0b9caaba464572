"""Beat's maintenance tasks (queue ``maintenance``): the heartbeat check, rebalancing and
retention. Each is idempotent and safe to run twice at once: registry moves are
compare-and-set, message moves are at-least-once of idempotent tasks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from config.settings import get_settings
from workers import resources
from workers.app import codeindex_task
from workers.requeue import requeue_from
from workers.routing import reassign_from, rebalance, router


@codeindex_task("codeindex.shards.check", max_retries=0)
def check(self) -> dict:
    """Mark shards silent for ``offline_after`` seconds (30 s) offline, hand the repositories
    of offline and draining shards to their next owners, and move the messages left in
    their queues. Returns what it did: ``offline``, ``moved`` (repo -> shard), ``messages``."""
    settings = get_settings()
    registry = resources.registry(settings)
    offline = registry.mark_offline_stale(settings.offline_after)
    gone = [s.shard_id for s in registry.shards() if s.status != "active"]
    moved = {}
    for shard_id in gone:
        moved.update({p.repo_id: p.shard_id for p in reassign_from(registry, shard_id)})
    if moved:
        router().forget()
    messages = requeue_from(gone) if gone else 0
    _mark_checked(settings)
    return {"offline": offline, "moved": moved, "messages": messages}


@codeindex_task("codeindex.shards.rebalance", max_retries=0)
def rebalance_shards(self) -> dict:
    """Move at most ``rebalance_max_moves`` repositories whose ring owner changed (a shard
    joined, or capacities changed). Returns the moves (repo -> [from, to])."""
    settings = get_settings()
    moves = rebalance(resources.registry(settings), settings.rebalance_max_moves)
    if moves:
        router().forget()
    return {"moves": {m.repo_id: [m.previous, m.shard_id] for m in moves}}


@codeindex_task("codeindex.cleanup.retention", max_retries=0)
def retention(self) -> dict:
    """Delete finished sync runs older than ``run_retention_days``. Returns how many."""
    settings = get_settings()
    cutoff = datetime.now(timezone.utc) - timedelta(days=settings.run_retention_days)
    deleted = resources.state_store(settings).delete_runs_before(cutoff.isoformat(timespec="milliseconds"))
    return {"runs_deleted": deleted, "cutoff": cutoff.isoformat()}


def _mark_checked(settings) -> None:
    """Count heartbeat checks in Redis (``codeindex:beat:checks``, ``codeindex:beat:last_check``):
    how an operator, and the one-beat test, see that exactly one beat schedules."""
    client = resources.redis(settings)
    if client is not None:
        pipe = client.pipeline()
        pipe.incr("codeindex:beat:checks")
        pipe.set("codeindex:beat:last_check", datetime.now(timezone.utc).isoformat())
        pipe.execute()
