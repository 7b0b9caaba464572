"""Cleanup tasks, scheduled by beat (queue ``maintenance``): retention of finished sync runs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from config.kinds import TaskKind
from workers.app import codeindex_task
from workers.runtime import runtime


@codeindex_task("codeindex.cleanup.retention", kind=TaskKind.CLEANUP)
def retention(self) -> dict:
    """Delete finished sync runs older than ``run_retention_days``. Returns how many, and the cutoff."""
    rt = runtime()
    cutoff = datetime.now(timezone.utc) - timedelta(days=rt.settings.run_retention_days)
    deleted = rt.state.delete_runs_before(cutoff.isoformat(timespec="milliseconds"))
    return {"runs_deleted": deleted, "cutoff": cutoff.isoformat()}
