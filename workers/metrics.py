"""Prometheus metrics (prometheus-client): the seed's fleet table plus task counts, task
durations and queue depths.

Two kinds, as the Prometheus client docs advise:

- **Fleet gauges** (seed 002 "Key Metrics": ``codeindex_shard_load``, ``codeindex_shard_capacity``,
  ``codeindex_heartbeat_lag_seconds``, ``codeindex_rebalance_count``; plus
  ``codeindex_queue_depth``) are read from the registry and the broker when scraped, by
  :class:`FleetCollector`, so any one process (``codeindex metrics``) reports the whole fleet.
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

from celery import signals
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from config.celery import Queue, shard_queue
from workers.broker import queue_depths
from workers.runtime import runtime

log = logging.getLogger("codeindex.metrics")

TASKS = Counter("codeindex_tasks", "Tasks finished, by task name, queue and outcome.",
                ["task", "queue", "state"])
TASK_SECONDS = Histogram("codeindex_task_duration_seconds", "Task run time, by task name.", ["task"],
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
HEARTBEATS = Counter("codeindex_heartbeats", "Heartbeats this worker wrote, by shard.", ["shard"])
MESSAGES_MOVED = Counter("codeindex_messages_moved", "Messages moved out of dead or drained shards' queues.")

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


class FleetCollector:
    """Reads the registry and the broker at scrape time (a custom collector, per the
    prometheus-client docs "Custom Collectors"). A failed read yields ``codeindex_up 0``."""

    def collect(self):
        up = GaugeMetricFamily("codeindex_fleet_up", "1 when the registry and broker could be read.")
        try:
            registry = runtime().registry
            shards = registry.shards()
            moves = registry.moves_total()
            depths = queue_depths([Queue.EMBED.value, Queue.MAINTENANCE.value,
                                   *(shard_queue(s.shard_id) for s in shards)])
        except Exception as exc:
            log.warning("fleet metrics unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        load = GaugeMetricFamily("codeindex_shard_load", "Repositories assigned to a shard.", labels=["shard_id", "status"])
        capacity = GaugeMetricFamily("codeindex_shard_capacity", "Repositories a shard may own.", labels=["shard_id"])
        lag = GaugeMetricFamily("codeindex_heartbeat_lag_seconds", "Seconds since a shard's last heartbeat.",
                                labels=["shard_id"])
        last = GaugeMetricFamily("codeindex_last_heartbeat", "Unix time of a shard's last heartbeat "
                                 "(the seed's alert: time() - codeindex_last_heartbeat > 30).", labels=["shard_id"])
        for shard in shards:
            load.add_metric([shard.shard_id, shard.status], shard.load)
            capacity.add_metric([shard.shard_id], shard.capacity)
            lag.add_metric([shard.shard_id], shard.heartbeat_lag())
            last.add_metric([shard.shard_id], shard.last_heartbeat.timestamp())
        yield from (load, capacity, lag, last)
        moved = GaugeMetricFamily("codeindex_rebalance_count", "Repositories moved between shards, in total.")
        moved.add_metric([], moves)
        yield moved
        depth = GaugeMetricFamily("codeindex_queue_depth", "Messages waiting in a queue.", labels=["queue"])
        for name, value in depths.items():
            depth.add_metric([name], value)
        yield depth


def serve(port: int, fleet: bool, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``port`` from a background thread.

    ``fleet``: include the fleet gauges. With ``PROMETHEUS_MULTIPROC_DIR`` set, the process
    counters of every worker child are aggregated (prometheus-client "Multiprocess Mode").
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess  # lazy: only a worker serving metrics uses it

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    if fleet:
        registry.register(FleetCollector())
    start_http_server(port, addr=addr, registry=registry)
    log.info("metrics on http://%s:%d/metrics", addr, port)
