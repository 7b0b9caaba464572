"""Beat's shard maintenance (queue ``maintenance``): the heartbeat check and rebalancing. Each
is idempotent and safe to run twice at once: registry moves are compare-and-set, message moves
are at-least-once of idempotent tasks."""

from __future__ import annotations

from config.kinds import TaskKind
from workers.app import codeindex_task
from workers.handover import hand_over
from workers.placement import rebalance
from workers.registry import ShardStatus
from workers.reissue import reissue_runs
from workers.runtime import runtime


@codeindex_task("codeindex.shards.check", kind=TaskKind.MAINTENANCE)
def check(self) -> dict:
    """Mark shards silent for ``offline_after`` seconds (30 s) offline, hand over the
    repositories and queued messages of every offline and draining shard, and re-issue the runs
    in flight on offline ones. Returns what it did: ``offline``, ``moved`` (repo -> shard),
    ``messages``, ``reissued`` (old run -> new run)."""
    rt = runtime()
    offline = rt.registry.mark_offline_stale(rt.settings.offline_after)
    gone = [s for s in rt.registry.shards() if s.status is not ShardStatus.ACTIVE]
    done = [hand_over(rt, s.shard_id) for s in gone]
    again = [r for s in gone if s.status is ShardStatus.OFFLINE for r in reissue_runs(rt, self.app, s.shard_id)]
    return {"offline": offline, "moved": {p.repo_id: p.shard_id for d in done for p in d.moved},
            "messages": sum(d.messages for d in done), "reissued": {r.old_run_id: r.new_run_id for r in again}}


@codeindex_task("codeindex.shards.rebalance", kind=TaskKind.MAINTENANCE)
def rebalance_shards(self) -> dict:
    """Move at most ``rebalance_max_moves`` repositories whose ring owner changed (a shard
    joined, or capacities changed). Returns the moves (repo -> [from, to])."""
    rt = runtime()
    if moves := rebalance(rt.registry, rt.settings.rebalance_max_moves):
        rt.owners.forget()
    return {"moves": {m.repo_id: [m.previous, m.shard_id] for m in moves}}
