"""Beat's shard maintenance (queue ``maintenance``): the heartbeat check and rebalancing. Each
is idempotent and safe to run twice at once: registry moves are compare-and-set, message moves
are at-least-once of idempotent tasks."""

from __future__ import annotations

from config.kinds import TaskKind
from workers.app import codeindex_task
from workers.handover import hand_over
from workers.placement import rebalance
from workers.registry import ShardStatus
from workers.runtime import runtime


@codeindex_task("codeindex.shards.check", kind=TaskKind.MAINTENANCE)
def check(self) -> dict:
    """Mark shards silent for ``offline_after`` seconds (30 s) offline, and hand over the
    repositories and queued messages of every offline and draining shard. Returns what it
    did: ``offline``, ``moved`` (repo -> shard), ``messages``."""
    rt = runtime()
    offline = rt.registry.mark_offline_stale(rt.settings.offline_after)
    done = [hand_over(rt, s.shard_id) for s in rt.registry.shards() if s.status is not ShardStatus.ACTIVE]
    moved = {p.repo_id: p.shard_id for d in done for p in d.moved}
    return {"offline": offline, "moved": moved, "messages": sum(d.messages for d in done)}


@codeindex_task("codeindex.shards.rebalance", kind=TaskKind.MAINTENANCE)
def rebalance_shards(self) -> dict:
    """Move at most ``rebalance_max_moves`` repositories whose ring owner changed (a shard
    joined, or capacities changed). Returns the moves (repo -> [from, to])."""
    rt = runtime()
    if moves := rebalance(rt.registry, rt.settings.rebalance_max_moves):
        rt.owners.forget()
    return {"moves": {m.repo_id: [m.previous, m.shard_id] for m in moves}}
