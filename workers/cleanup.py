"""The cleanup rules over a runtime, and their registry: what beat's cleanup tasks and
``codeindex cleanup`` run.

A rule is a function ``rule(rt, dry_run, limit) -> CleanupResult``: it removes at most
``limit`` items in one pass (the next pass goes on where it stopped), removes nothing when
nothing is due (a second pass after a complete one removes nothing), and with ``dry_run``
names what it would remove and changes nothing. Adding a rule is adding it to :data:`RULES`
(and to a pass of :data:`PASSES` for beat to run it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from config.celery import shard_queue
from indexing import metrics
from indexing.bundles import delete_bundles, expired, list_bundles
from indexing.cleanup import CleanupResult, collect_embeddings, compaction_result, cutoff, eviction_result, \
    referenced_keys
from indexing.errors import CodeindexError, DamagedStoreError, UsageError
from workers.artifacts import prune_artifacts
from workers.runtime import Runtime

log = logging.getLogger("codeindex.cleanup")


class Rule(Protocol):
    """One cleanup rule (see the module docstring). Raises CodeindexError when a dependency fails."""

    def __call__(self, rt: Runtime, dry_run: bool, limit: int) -> CleanupResult: ...


def runs(rt: Runtime, dry_run: bool, limit: int) -> CleanupResult:
    """Finished sync runs older than ``run_retention_days``."""
    ids = rt.readonly_state().expired_runs(cutoff(rt.settings.run_retention_days), limit)
    if ids and not dry_run:
        rt.state.delete_runs(ids)
    return CleanupResult("runs", ids, dry_run=dry_run, more=len(ids) >= limit)


def failures(rt: Runtime, dry_run: bool, limit: int) -> CleanupResult:
    """Failure records older than ``run_retention_days`` that were replayed (one never replayed
    stays: its work is still to do)."""
    ids = rt.readonly_state().expired_failures(cutoff(rt.settings.run_retention_days), limit)
    if ids and not dry_run:
        rt.state.delete_failures(ids)
    return CleanupResult("failures", [str(i) for i in ids], dry_run=dry_run, more=len(ids) >= limit)


def bundles(rt: Runtime, dry_run: bool, limit: int) -> CleanupResult:
    """Bundle retention: each repository added by URL keeps its newest ``backup_keep`` bundles,
    those younger than ``backup_keep_days`` and the bases kept ones need; at most ``limit``
    bundles of at most ``backup_max_per_pass`` repositories a pass."""
    store, s = rt.object_store, rt.settings
    result = CleanupResult("bundles", dry_run=dry_run)
    if store is None:
        result.note = "no object store"
        return result
    pruned = 0
    for stats in rt.readonly_state().repo_stats():
        if not stats.url:
            continue
        if pruned >= s.backup_max_per_pass or len(result.removed) >= limit:
            result.more = True
            break
        old = expired(list_bundles(store, stats.repo_id), keep=s.backup_keep, keep_days=s.backup_keep_days)
        if len(result.removed) + len(old) > limit:
            old, result.more = old[:limit - len(result.removed)], True
        if not dry_run:
            delete_bundles(store, old)
        result.removed += [r.key for r in old]
        result.bytes_freed += sum(r.size for r in old)
        pruned += bool(old)
    return result


def downloads(rt: Runtime, dry_run: bool, limit: int) -> CleanupResult:
    """The reader's download cache, least recently used first, to ``download_cache_bytes``."""
    cache = rt.content_reader.downloads
    return eviction_result("downloads", cache.evict(dry_run=dry_run, limit=limit), dry_run=dry_run, limit=limit)


def clones(rt: Runtime, dry_run: bool, limit: int) -> CleanupResult:
    """The reader's clone cache, least recently used first, to ``clone_cache_bytes``."""
    cache = rt.content_reader.clones
    return eviction_result("clones", cache.evict(dry_run=dry_run, limit=limit), dry_run=dry_run, limit=limit)


def embeddings(rt: Runtime, dry_run: bool, limit: int) -> CleanupResult:
    """Embedding-cache entries that no collection's objects use any more (model id and chunk
    hash in no store). Refused while a collection's store holds fewer objects than the state
    records: its missing objects are indexed again from this cache (``verify --repair``)."""
    state = rt.readonly_state()
    chunks: dict[str, int] = {}
    for stats in state.repo_stats():
        chunks[stats.collection] = chunks.get(stats.collection, 0) + stats.chunks
    referenced: set[tuple[str, str]] = set()
    for collection, expected in sorted(chunks.items()):
        rows = list(rt.vector_store(collection).export())
        if len(rows) < expected:
            raise DamagedStoreError(f"collection {collection} holds {len(rows)} objects, the state records {expected}: "
                                    "no embedding is collected until `codeindex verify --repair` mends it")
        referenced |= referenced_keys(rows)
    return collect_embeddings(rt.embedding_cache, referenced, dry_run=dry_run, limit=limit)


def compaction(rt: Runtime, dry_run: bool, limit: int) -> CleanupResult:
    """Each collection's vector table compacted (``VectorStore.compact``), keeping versions
    younger than ``compaction_keep_seconds``; at most ``limit`` collections a pass."""
    names = sorted({stats.collection for stats in rt.readonly_state().repo_stats()})
    keep = rt.settings.compaction_keep_seconds
    done = [rt.vector_store(name).compact(keep, dry_run=dry_run) for name in names[:limit]]
    return compaction_result(done, dry_run=dry_run, more=len(names) > limit)


def artifacts(rt: Runtime, dry_run: bool, limit: int) -> CleanupResult:
    """Index artifact retention (seed 000): pull-request artifacts after ``artifact_pr_days``,
    main-branch ones after ``artifact_main_days``, promoted ones ``artifact_promoted_days`` after
    their promotion; never the base of a delta that is kept. Enforced here, not by S3 lifecycle
    rules. Nothing to do without an artifact store (a fleet with neither setting)."""
    if rt.settings.artifact_uri is None and rt.object_store is None:
        return CleanupResult("artifacts", dry_run=dry_run, note="no artifact store configured")
    removed = prune_artifacts(rt, limit=limit, dry_run=dry_run)
    return CleanupResult("artifacts", removed=removed, dry_run=dry_run, more=len(removed) >= limit)


#: Every rule by name, in the order ``codeindex cleanup`` runs and prints them.
RULES: dict[str, Rule] = {
    "runs": runs,
    "failures": failures,
    "bundles": bundles,
    "downloads": downloads,
    "clones": clones,
    "embeddings": embeddings,
    "compaction": compaction,
    "artifacts": artifacts,
}

#: Beat's passes (``codeindex.cleanup.<pass>``): the rules each runs. ``caches`` runs on every
#: shard (each worker has its own caches), the others once, on any worker.
PASSES: dict[str, tuple[str, ...]] = {
    "retention": ("runs", "failures"),
    "bundles": ("bundles",),
    "caches": ("downloads", "clones"),
    "embeddings": ("embeddings",),
    "compaction": ("compaction",),
    "artifacts": ("artifacts",),
}


def run_rules(rt: Runtime, names: Iterable[str] | None = None, *, dry_run: bool = False,
              limit: int | None = None) -> list[CleanupResult]:
    """Run the rules ``names`` (default: all, in :data:`RULES` order), each at most ``limit``
    items (default ``cleanup_max_per_pass``). A rule that fails is reported in its result
    (``error``) and logged; the others run. Raises UsageError for an unknown rule."""
    chosen = list(RULES) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in chosen if n not in RULES]
    if unknown:
        raise UsageError(f"unknown cleanup rule {', '.join(unknown)}: the rules are {', '.join(RULES)}")
    limit = rt.settings.cleanup_max_per_pass if limit is None else limit
    results = []
    for name in chosen:
        try:
            result = RULES[name](rt, dry_run, limit)
        except CodeindexError as exc:
            log.warning("cleanup rule %s failed: %s", name, exc)
            result = CleanupResult(name, dry_run=dry_run, error=str(exc))
        if not dry_run:
            metrics.cleanup_removed(name, len(result.removed))
        log.info("cleanup rule=%s removed=%d bytes=%d dry_run=%s more=%s", name, len(result.removed),
                 result.bytes_freed, dry_run, result.more)
        results.append(result)
    return results


def run_pass(rt: Runtime, name: str) -> dict:
    """Beat's pass ``name`` (:data:`PASSES`): its rules' results as JSON-ready data."""
    return {"pass": name, "results": [r.as_dict() for r in run_rules(rt, PASSES[name])]}


def cache_queues(rt: Runtime) -> list[str]:
    """The queues of the shards whose caches a ``caches`` pass must reach: every active shard's
    ``shard.<id>`` in a fleet (no worker reads another's disk); none in the embedded mode."""
    if not rt.in_fleet:
        return []
    return [shard_queue(s.shard_id) for s in rt.registry.shards() if s.status == "active"]
