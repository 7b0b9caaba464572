"""Cleanup tasks, scheduled by beat (queue ``maintenance``): each runs one pass of the cleanup
rules (``workers.cleanup.PASSES``), every rule bounded by ``cleanup_max_per_pass``."""

from __future__ import annotations

from config.kinds import TaskKind
from workers.app import codeindex_task
from workers.cleanup import cache_queues, run_pass
from workers.runtime import runtime


@codeindex_task("codeindex.cleanup.retention", kind=TaskKind.CLEANUP)
def retention(self) -> dict:
    """Finished sync runs, and replayed failure records, older than ``run_retention_days``."""
    return run_pass(runtime(), "retention")


@codeindex_task("codeindex.cleanup.bundles", kind=TaskKind.CLEANUP)
def bundles(self) -> dict:
    """Bundle retention: each repository's newest ``backup_keep`` bundles and those younger than
    ``backup_keep_days`` stay, with the bases they need."""
    return run_pass(runtime(), "bundles")


@codeindex_task("codeindex.cleanup.caches", kind=TaskKind.CLEANUP)
def caches(self, here: bool = False) -> dict:
    """LRU eviction of the download and clone caches to their limits. Each worker has its own
    caches: beat's message is sent on to every active shard's queue (``here``: evict this one's)."""
    rt = runtime()
    queues = [] if here else cache_queues(rt)
    for queue in queues:
        self.apply_async(kwargs={"here": True}, queue=queue, expires=rt.settings.cleanup_interval)
    return {"pass": "caches", "sent": queues} if queues else run_pass(rt, "caches")


@codeindex_task("codeindex.cleanup.embeddings", kind=TaskKind.CLEANUP)
def embeddings(self) -> dict:
    """Embedding-cache entries that no collection's objects use any more."""
    return run_pass(runtime(), "embeddings")


@codeindex_task("codeindex.cleanup.compaction", kind=TaskKind.CLEANUP)
def compaction(self) -> dict:
    """Each collection's vector table compacted, versions older than ``compaction_keep_seconds`` removed."""
    return run_pass(runtime(), "compaction")


@codeindex_task("codeindex.cleanup.artifacts", kind=TaskKind.CLEANUP)
def artifacts(self) -> dict:
    """Index artifact retention: pull-request, main-branch and promoted artifacts past their days."""
    return run_pass(runtime(), "artifacts")
