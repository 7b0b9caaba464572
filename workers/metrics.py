"""Prometheus metrics (prometheus-client) of the workers layer: the seed's fleet table plus task
counts, task durations, queues and dead letters. The domain's metrics (ingestion, object
storage, git, caches, freshness, backups) are defined in ``indexing.metrics``, enabled here.

Two kinds, as the Prometheus client docs advise:

- **Fleet gauges** (seed 002 "Key Metrics": ``codeindex_shard_load``, ``codeindex_shard_capacity``,
  ``codeindex_heartbeat_lag_seconds``, ``codeindex_rebalance_count``; plus
  ``codeindex_queue_depth``, ``codeindex_queue_oldest_message_age_seconds``,
  ``codeindex_dead_letters``, ``codeindex_repo_last_indexed_timestamp_seconds``) are read from
  the registry, the state and the broker when scraped, by :class:`FleetCollector`, so any one
  process (``codeindex metrics``) reports the whole fleet.
- **Process counters** (tasks by name, state and queue; task durations; heartbeats; messages
  moved) are counted where the work happens; a worker counts its tasks once
  :func:`count_tasks` connected the task signals. Celery's prefork children are separate
  processes, so a worker serving metrics sets ``PROMETHEUS_MULTIPROC_DIR`` (see
  :func:`serve`) and the client's multiprocess mode adds the children's files up.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone

from celery import signals
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from config.celery import Queue, shard_queue
from indexing import metrics as domain_metrics
from workers.broker import oldest_message_ages, queue_depths
from workers.runtime import runtime

log = logging.getLogger("codeindex.metrics")

TASKS = Counter("codeindex_tasks", "Tasks finished, by task name, queue and outcome.",
                ["task", "queue", "state"])
TASK_SECONDS = Histogram("codeindex_task_duration_seconds", "Task run time, by task name.", ["task"],
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
HEARTBEATS = Counter("codeindex_heartbeats", "Heartbeats this worker wrote, by shard.", ["shard"])
MESSAGES_MOVED = Counter("codeindex_messages_moved", "Messages moved out of dead or drained shards' queues.")
# Every process that imports this module serves metrics (a worker, `codeindex metrics`): the
# domain's are counted from now on.
domain_metrics.enable()

class TaskCounter:
    """Counts finished tasks and their run time from Celery's ``task_prerun``/``task_postrun``
    signals (one per process: it keeps the start times of the tasks running in it)."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def started(self, task_id=None, **_) -> None:
        self._started[task_id] = time.monotonic()

    def finished(self, task_id=None, task=None, state=None, **_) -> None:
        began = self._started.pop(task_id, None)
        if task is None:
            return
        queue = ((getattr(task.request, "delivery_info", None) or {}).get("routing_key")) or "eager"
        TASKS.labels(task=task.name, queue=queue, state=state or "UNKNOWN").inc()
        if began is not None:
            TASK_SECONDS.labels(task=task.name).observe(time.monotonic() - began)


def count_tasks() -> TaskCounter:
    """Count this process's tasks in :data:`TASKS` and :data:`TASK_SECONDS` from now on."""
    counter = TaskCounter()
    signals.task_prerun.connect(counter.started, weak=False)
    signals.task_postrun.connect(counter.finished, weak=False)
    return counter


#: The gauges :class:`FleetCollector` yields: name -> (help, labels).
FLEET_GAUGES: dict[str, tuple[str, list[str]]] = {
    "codeindex_fleet_up": ("1 when the registry, the state and the broker could be read.", []),
    "codeindex_shard_load": ("Repositories assigned to a shard.", ["shard_id", "status"]),
    "codeindex_shard_capacity": ("Repositories a shard may own.", ["shard_id"]),
    "codeindex_heartbeat_lag_seconds": ("Seconds since a shard's last heartbeat.", ["shard_id"]),
    "codeindex_last_heartbeat": ("Unix time of a shard's last heartbeat (seed 002's alert: "
                                 "time() - codeindex_last_heartbeat > 30).", ["shard_id"]),
    "codeindex_rebalance_count": ("Repositories moved between shards, in total.", []),
    "codeindex_queue_depth": ("Messages waiting in a queue.", ["queue"]),
    "codeindex_queue_oldest_message_age_seconds": (
        "Seconds since the oldest message waiting in a queue was published (its codeindex_sent_at "
        "header); 0 when the queue is empty.", ["queue"]),
    "codeindex_dead_letters": ("Dead-letter records (the failures table: tasks that exhausted their retries), "
                               "by status (pending, replayed).", ["status"]),
    "codeindex_repo_last_indexed_timestamp_seconds": (
        "Unix time a repository's index last committed (absent before its first sync).", ["repo_id"]),
}


class FleetCollector:
    """Reads the registry, the state and the broker at scrape time (a custom collector, per
    the prometheus-client docs "Custom Collectors"): :data:`FLEET_GAUGES`. A failed read
    yields ``codeindex_fleet_up 0`` alone."""

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {name: GaugeMetricFamily(name, text, labels=labels) for name, (text, labels) in FLEET_GAUGES.items()}

    def describe(self) -> list[GaugeMetricFamily]:
        """The families :meth:`collect` yields, without samples (the registry checks their names)."""
        return list(self._families().values())

    def collect(self):
        g = self._families()
        try:
            rt = runtime()
            registry = rt.registry
            shards = registry.shards()
            moves = registry.moves_total()
            queues = [Queue.EMBED.value, Queue.MAINTENANCE.value, *(shard_queue(s.shard_id) for s in shards)]
            depths = queue_depths(queues)
            ages = oldest_message_ages(queues)
            state = rt.readonly_state()
            dead = state.failure_counts()
            repos = state.repo_stats()
        except Exception as exc:
            log.warning("fleet metrics unavailable: %s", exc)
            g["codeindex_fleet_up"].add_metric([], 0)
            yield g["codeindex_fleet_up"]
            return
        g["codeindex_fleet_up"].add_metric([], 1)
        for shard in shards:
            g["codeindex_shard_load"].add_metric([shard.shard_id, shard.status], shard.load)
            g["codeindex_shard_capacity"].add_metric([shard.shard_id], shard.capacity)
            g["codeindex_heartbeat_lag_seconds"].add_metric([shard.shard_id], shard.heartbeat_lag())
            g["codeindex_last_heartbeat"].add_metric([shard.shard_id], shard.last_heartbeat.timestamp())
        g["codeindex_rebalance_count"].add_metric([], moves)
        for name, value in depths.items():
            g["codeindex_queue_depth"].add_metric([name], value)
            g["codeindex_queue_oldest_message_age_seconds"].add_metric([name], ages.get(name, 0.0))
        for status, count in sorted(dead.items()):
            g["codeindex_dead_letters"].add_metric([status], count)
        for repo in repos:
            if repo.indexed_at:
                g["codeindex_repo_last_indexed_timestamp_seconds"].add_metric([repo.repo_id], _unix(repo.indexed_at))
        yield from g.values()


def serve(port: int, fleet: bool, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``port`` from a background thread.

    ``fleet``: include the fleet gauges. With ``PROMETHEUS_MULTIPROC_DIR`` set, the process
    counters of every worker child are aggregated (prometheus-client "Multiprocess Mode").
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess  # lazy: only a worker serving metrics uses it

        registry = CollectorRegistry()
        registry.register(domain_metrics.CacheHitRate(multiprocess.MultiProcessCollector(registry)))
    else:
        registry = REGISTRY
    if fleet:
        registry.register(FleetCollector())
    start_http_server(port, addr=addr, registry=registry)
    log.info("metrics on http://%s:%d/metrics", addr, port)


def _unix(iso: str) -> float:
    """Unix seconds of the ISO-8601 time ``iso`` (UTC when it names no zone)."""
    moment = datetime.fromisoformat(iso)
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
