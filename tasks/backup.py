"""Backup tasks (seed 002's cold storage): git bundles of an owner's clones in object storage.

``create`` and ``restore`` are bound to the repository (kind ``backup``: its owner's queue,
where its clone is); ``schedule`` is beat's pass that sends ``create`` for repositories whose
index moved past their last bundle. The message is a dict carrying ``repo_id``, as every
repository-bound message does (the router reads it).
"""

from __future__ import annotations

from config.celery import shard_queue
from config.kinds import TaskKind
from workers.app import codeindex_task
from workers.backups import backup_repository, backups_due, restore_repository
from workers.runtime import runtime


@codeindex_task("codeindex.backup.create", kind=TaskKind.BACKUP)
def create(self, job: dict) -> dict:
    """Bundle ``job["repo_id"]``'s clone (``incremental`` optional); the backup's outcome as a dict."""
    if (owner := runtime().owner_elsewhere(job["repo_id"], job.get("hops", 0))) is not None:
        return self.replace(create.s({**job, "hops": job.get("hops", 0) + 1}).set(queue=shard_queue(owner)))
    return backup_repository(runtime(), job["repo_id"], incremental=bool(job.get("incremental"))).as_dict()


@codeindex_task("codeindex.backup.restore", kind=TaskKind.BACKUP)
def restore(self, job: dict) -> dict:
    """Restore ``job["repo_id"]``'s clone from its newest passing bundle (or ``job["bundle"]``)."""
    if (owner := runtime().owner_elsewhere(job["repo_id"], job.get("hops", 0))) is not None:
        return self.replace(restore.s({**job, "hops": job.get("hops", 0) + 1}).set(queue=shard_queue(owner)))
    return restore_repository(runtime(), job["repo_id"], bundle=job.get("bundle")).as_dict()


@codeindex_task("codeindex.backup.schedule", kind=TaskKind.MAINTENANCE)
def schedule(self) -> dict:
    """Beat: send a backup to the owner of each repository due (bounded per pass)."""
    rt = runtime()
    s = rt.settings
    due = backups_due(rt, limit=s.backup_max_per_pass, quiet_seconds=s.backup_quiet_seconds)
    sent = [send_backup(d.repo_id, incremental=s.backup_incremental).id for d in due]
    return {"sent": len(sent), "repositories": [d.repo_id for d in due]}


def send_backup(repo_id: str, *, incremental: bool = False):
    """Place ``repo_id`` and send its backup to the owner; the AsyncResult (a dict when done)."""
    owner = runtime().place(repo_id).shard_id
    return create.apply_async(args=[{"repo_id": repo_id, "incremental": incremental}], queue=shard_queue(owner))


def send_restore(repo_id: str, *, bundle: str | None = None):
    """Place ``repo_id`` and send its restore to the owner; the AsyncResult."""
    owner = runtime().place(repo_id).shard_id
    return restore.apply_async(args=[{"repo_id": repo_id, "bundle": bundle}], queue=shard_queue(owner))
