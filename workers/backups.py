"""Cold storage on a worker: back up, restore and prune the bundles of the repositories it owns.

The git and object-storage work is :mod:`indexing.bundles`; this module finds the clone, the
object store and the repository's source from the runtime, holds the repository lock around
every git write of the clone (as the sync's fetch does), and decides what beat and a drain
back up. Only repositories added by URL have a clone to keep: one added by path has its work
tree as its source of truth.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from indexing.bundles import (
    BackupResult, RestoreResult, create_bundle, list_bundles, list_restores, record_restore, restore_bundle,
)
from indexing.errors import StoreError, UsageError
from indexing.git_source import repo_dir_name
from indexing.objects import ObjectStore
from indexing.state import RepoRecord, RepoStats
from workers.runtime import Runtime

log = logging.getLogger("codeindex.backups")


def _object_store(rt: Runtime) -> ObjectStore:
    store = rt.object_store
    if store is None:
        raise UsageError("backups need object storage that every worker reaches: set CODEINDEX_OBJECT_STORE_URI "
                         "(s3://bucket/prefix)")
    return store


def _url_record(rt: Runtime, repo_id: str) -> RepoRecord:
    record = rt.readonly_state().get_repo(repo_id)
    if record is None:
        raise UsageError(f"no repository {repo_id!r} in the index")
    if not record.url:
        raise UsageError(f"repository {repo_id!r} was added by path ({record.root}): its work tree is its source, "
                         "there is no clone to back up")
    return record


def clone_path(rt: Runtime, repo_id: str) -> Path:
    """Where this worker keeps ``repo_id``'s bare clone (the sync's ``GitMirror`` path)."""
    return rt.data_dir / f"{repo_dir_name(repo_id)}.git"


def work_dir(rt: Runtime) -> Path:
    """The temporary files of backups and restores (beside the clones, on the same disk)."""
    return rt.data_dir / ".cache" / "bundles"


def backup_repository(rt: Runtime, repo_id: str, *, incremental: bool = False) -> BackupResult:
    """Bundle this worker's clone of ``repo_id`` into object storage, under the repository lock.
    Raises UsageError (not a URL repository, no object store), StoreError, LockTimeoutError."""
    record = _url_record(rt, repo_id)
    store = _object_store(rt)
    with rt.repo_lock(repo_id):
        return create_bundle(clone_path(rt, repo_id), repo_id=repo_id, url=record.url or "",
                             branch=record.branch or "main", store=store, work_dir=work_dir(rt),
                             shard_id=rt.shard_id, incremental=incremental)


def restore_repository(rt: Runtime, repo_id: str, *, bundle: str | None = None, reason: str = "requested") -> RestoreResult:
    """Replace this worker's clone of ``repo_id`` by one restored from its newest bundle that
    passes (or ``bundle`` and those before it), under the repository lock; the restore is
    recorded beside the bundles. No bundle passing leaves the clone as it was (the next sync
    clones or fetches). Raises UsageError, BundleError for an unknown ``bundle``, StoreError."""
    record = _url_record(rt, repo_id)
    store = _object_store(rt)
    with rt.repo_lock(repo_id):
        result = restore_bundle(store, repo_id, clone_path(rt, repo_id), work_dir(rt), bundle=bundle,
                                branch=record.branch or "main")
    record_restore(store, result, shard_id=rt.shard_id, reason=reason)
    return result


def describe_backups(rt: Runtime, repo_id: str) -> dict:
    """The bundles kept for ``repo_id`` (oldest first, each with its URI) and the restores recorded."""
    store = _object_store(rt)
    where = store.describe().rstrip("/")
    bundles = [{**r.as_dict(), "uri": f"{where}/{r.key}"} for r in list_bundles(store, repo_id)]
    return {"repo_id": repo_id, "store": where, "bundles": bundles, "restores": list_restores(store, repo_id)}


@dataclass(frozen=True, slots=True)
class Due:
    """A repository whose index moved past its last bundle: its id and why it is due."""

    repo_id: str
    reason: str


def backups_due(rt: Runtime, *, limit: int, quiet_seconds: float, now: datetime | None = None,
                only: set[str] | None = None) -> list[Due]:
    """Repositories added by URL (those in ``only`` when given) whose last indexed commit is not
    their newest bundle's head and whose index has not changed for ``quiet_seconds`` (seed
    002's "inactive repositories"), at most ``limit``, the longest unbacked first. StoreError."""
    store = _object_store(rt)
    moment = now or datetime.now(timezone.utc)
    due: list[tuple[str, Due]] = []
    for stats in rt.readonly_state().repo_stats():
        if not stats.url or not stats.last_commit or (only is not None and stats.repo_id not in only):
            continue
        if quiet_seconds and _changed_within(stats, moment, quiet_seconds):
            continue
        bundles = list_bundles(store, stats.repo_id)
        if bundles and bundles[-1].head == stats.last_commit:
            continue
        since = bundles[-1].created if bundles else ""
        reason = (f"indexed {stats.last_commit[:12]}, last bundle {bundles[-1].head[:12]}" if bundles
                  else "no bundle yet")
        due.append((since, Due(stats.repo_id, reason)))
    return [d for _, d in sorted(due, key=lambda pair: pair[0])][:limit]


def _changed_within(stats: RepoStats, moment: datetime, seconds: float) -> bool:
    if not stats.indexed_at:
        return False
    return (moment - datetime.fromisoformat(stats.indexed_at)).total_seconds() < seconds


def backup_before_hand_over(rt: Runtime, repo_ids: list[str], deadline: float, *, incremental: bool) -> dict:
    """Seed 002's drain: back up each of ``repo_ids`` that changed since its last bundle,
    stopping at ``deadline`` (``time.monotonic()``). Returns what was backed up and what was
    left undone, which is logged (the next owner's beat pass backs those up from its clone)."""
    done, skipped, failed = [], [], []
    due = {d.repo_id for d in backups_due(rt, limit=len(repo_ids) or 1, quiet_seconds=0, only=set(repo_ids))}
    pending = [r for r in repo_ids if r in due]
    for i, repo_id in enumerate(pending):
        if time.monotonic() >= deadline:
            skipped = pending[i:]
            break
        try:
            result = backup_repository(rt, repo_id, incremental=incremental)
            done.append({"repo_id": repo_id, "outcome": result.outcome.value,
                         "bundle": result.record.key if result.record else None})
        except (StoreError, UsageError) as exc:
            failed.append({"repo_id": repo_id, "error": str(exc)})
            log.warning("drain: backup of %s failed: %s", repo_id, exc)
    if skipped:
        log.warning("drain: the grace period left %d repositories without a fresh bundle: %s (the next owner "
                    "restores their last bundle and fetches)", len(skipped), ", ".join(skipped))
    return {"backed_up": done, "left": skipped, "failed": failed,
            "unchanged": [r for r in repo_ids if r not in due]}

