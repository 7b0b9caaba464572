"""What beat runs, and how only one beat runs it.

The schedule (seed 002 "FAQ: what happens if a pod dies"; DESIGN.md "Sharding"):

- ``codeindex.shards.check`` every ``heartbeat_check_interval`` (10 s): shards silent for
  30 s go offline, their repositories and queued messages move to the next owners;
- ``codeindex.shards.rebalance`` every ``rebalance_interval`` (60 s), at most
  ``rebalance_max_moves`` repositories a pass;
- ``codeindex.cleanup.retention`` hourly: sync runs, and replayed failure records, older than
  ``run_retention_days``;
- ``codeindex.backup.schedule`` every ``backup_interval`` (900 s): a bundle of each repository
  whose index moved past its last bundle and has been quiet for ``backup_quiet_seconds``;
- ``codeindex.cleanup.bundles`` hourly: bundle retention (``backup_keep``, ``backup_keep_days``);
- ``codeindex.cleanup.caches`` and ``codeindex.cleanup.embeddings`` every ``cleanup_interval``
  (3600 s): LRU eviction of every worker's download and clone caches, and the embedding-cache
  entries no index uses;
- ``codeindex.cleanup.artifacts`` every ``cleanup_interval``: index artifact retention (seed
  000: pull-request 7 days, main 30 days, promoted longer);
- ``codeindex.cleanup.compaction`` every ``compaction_interval`` (a day): each collection's
  vector table compacted, versions older than ``compaction_keep_seconds`` removed.

Every cleanup rule removes at most ``cleanup_max_per_pass`` items a pass (workers/cleanup.py).

Each entry expires after its own interval, so a backlog of missed checks is not run later.
Entries name their task only: its kind (``config.kinds``) decides the queue.

Single instance: celery-redbeat keeps the schedule in Redis and holds a Redis lock
(``redbeat::lock``) while it schedules; a second ``codeindex beat`` waits on that lock and
takes over within ``lock_timeout`` seconds when the first dies (redbeat docs, "Configuration").
"""

from __future__ import annotations

from config.settings import Settings

SCHEDULER = "redbeat.RedBeatScheduler"


def beat_schedule(settings: Settings) -> dict[str, dict]:
    """The ``beat_schedule`` mapping for ``settings`` (intervals in seconds)."""
    def entry(task: str, every: float) -> dict:
        return {"task": task, "schedule": every, "options": {"expires": every}}

    return {
        "shards-check": entry("codeindex.shards.check", settings.heartbeat_check_interval),
        "shards-rebalance": entry("codeindex.shards.rebalance", settings.rebalance_interval),
        "cleanup-retention": entry("codeindex.cleanup.retention", 3600.0),
        "backup-schedule": entry("codeindex.backup.schedule", settings.backup_interval),
        "cleanup-bundles": entry("codeindex.cleanup.bundles", 3600.0),
        "cleanup-caches": entry("codeindex.cleanup.caches", settings.cleanup_interval),
        "cleanup-embeddings": entry("codeindex.cleanup.embeddings", settings.cleanup_interval),
        "cleanup-compaction": entry("codeindex.cleanup.compaction", settings.compaction_interval),
        "cleanup-artifacts": entry("codeindex.cleanup.artifacts", settings.cleanup_interval),
    }


def beat_config(settings: Settings, redis_url: str) -> dict[str, object]:
    """Celery settings for ``codeindex beat``: the schedule and redbeat's lock.

    ``redbeat_lock_timeout`` is how long a dead beat's lock lasts before another takes over;
    it must exceed beat's ``beat_max_loop_interval`` (redbeat renews the lock every loop).
    """
    loop = max(1.0, min(5.0, settings.heartbeat_check_interval / 2))
    return {
        "beat_schedule": beat_schedule(settings),
        "beat_scheduler": SCHEDULER,
        "beat_max_loop_interval": loop,
        "redbeat_redis_url": redis_url,
        "redbeat_redis_options": {"socket_timeout": 10, "socket_connect_timeout": 10, "retry_period": 60},
        "redbeat_key_prefix": "codeindex:redbeat:",
        "redbeat_lock_key": "codeindex:redbeat::lock",
        "redbeat_lock_timeout": int(loop * 5),
    }
