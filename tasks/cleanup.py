"""Cleanup tasks, scheduled by beat (queue ``maintenance``): retention of finished sync runs and of bundles."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from config.kinds import TaskKind
from workers.app import codeindex_task
from workers.backups import prune_bundles
from workers.runtime import runtime


@codeindex_task("codeindex.cleanup.retention", kind=TaskKind.CLEANUP)
def retention(self) -> dict:
    """Delete finished sync runs older than ``run_retention_days``. Returns how many, and the cutoff."""
    rt = runtime()
    cutoff = datetime.now(timezone.utc) - timedelta(days=rt.settings.run_retention_days)
    deleted = rt.state.delete_runs_before(cutoff.isoformat(timespec="milliseconds"))
    return {"runs_deleted": deleted, "cutoff": cutoff.isoformat()}


@codeindex_task("codeindex.cleanup.bundles", kind=TaskKind.CLEANUP)
def bundles(self) -> dict:
    """Bundle retention: keep each repository's newest ``backup_keep`` bundles and those younger
    than ``backup_keep_days``, in passes of ``backup_max_per_pass`` repositories."""
    s = runtime().settings
    return prune_bundles(runtime(), keep=s.backup_keep, keep_days=s.backup_keep_days, limit=s.backup_max_per_pass)
