"""The domain's Prometheus metrics (prometheus-client), defined here and counted where the work
happens: ingestion by content strategy, object-storage transfers, git clones and fetches, the
three caches, index freshness, and seed 002's cold storage (bundle backups and restores).

The names are seed 004's Phase 4 list ("Add Prometheus metrics") and seed 002's "Key Metrics"
under our prefix ``codeindex_``. prometheus-client costs 20 to 60 ms to import on these
machines, and the embedded CLI never serves metrics, so nothing is defined (and the client is
not imported) until a process that serves them calls :func:`enable` (``workers.metrics`` does,
on import: the worker, ``codeindex metrics``). Until then every recording function here is a
no-op that costs one attribute test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Histogram buckets (seconds) for one file's content, one transfer, one git clone or fetch.
FILE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
GIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Bundle sizes in bytes: 64 KiB to 16 GiB by powers of 4.
BUNDLE_BUCKETS = tuple(float(1 << n) for n in range(16, 35, 2))
#: The caches ``cache_type`` names (DESIGN.md "Data"): the embedding cache (SQLite or the
#: PostgreSQL table), a reader's download cache and its clone cache (``indexing.content``).
CACHE_TYPES = ("embedding", "download", "clone")


class _Metrics:
    """The metric objects, made once by :func:`enable`."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram  # lazy: only where metrics are served (docstring)

        strategy = ["content_strategy"]
        self.ingestion_files = Counter(
            "codeindex_ingestion_files", "Files whose content an embedding batch read, by content strategy "
            "(inline, object_storage, git_reference, path; seed 004).", strategy)
        self.ingestion_bytes = Counter(
            "codeindex_ingestion_bytes", "Bytes of file content an embedding batch read, by content strategy.", strategy)
        self.ingestion_seconds = Histogram(
            "codeindex_ingestion_duration_seconds", "Seconds to obtain one file's verified content for embedding "
            "(from the message, a download, a clone or the work tree), by content strategy.", strategy,
            buckets=FILE_BUCKETS)
        self.upload_seconds = Histogram(
            "codeindex_storage_upload_duration_seconds", "Seconds of one successful object-storage upload, "
            "by backend (s3, local).", ["backend"], buckets=FILE_BUCKETS)
        self.download_seconds = Histogram(
            "codeindex_storage_download_duration_seconds", "Seconds of one successful object-storage download, "
            "by backend (s3, local, presigned_url).", ["backend"], buckets=FILE_BUCKETS)
        self.git_seconds = Histogram(
            "codeindex_git_clone_duration_seconds", "Seconds of one successful git clone or fetch of a repository "
            "by URL (an owner's clone or a reader's clone cache), by operation.", ["operation"], buckets=GIT_BUCKETS)
        self.cache_requests = Counter(
            "codeindex_cache_requests", "Cache lookups, by cache type (embedding: per chunk text; download: per "
            "object; clone: per file read through it) and result (hit, miss).", ["cache_type", "result"])
        self.cache_size = Gauge(
            "codeindex_cache_size_bytes", "Bytes a cache holds, as of its last write by this worker (embedding: "
            "the SQLite file or the PostgreSQL table with its indexes).", ["cache_type"],
            multiprocess_mode="mostrecent")
        self.cache_limit = Gauge(
            "codeindex_cache_limit_bytes", "The size limit of a cache that is evicted to one (download, clone: "
            "least recently used first), as of its last eviction on this worker.", ["cache_type"],
            multiprocess_mode="mostrecent")
        self.cleanup_removed = Counter(
            "codeindex_cleanup_removed", "Items cleanup removed, by rule (runs, failures, bundles, downloads, "
            "clones, embeddings, compaction: old table versions; `codeindex cleanup`, beat's passes).", ["rule"])
        self.freshness = Gauge(
            "codeindex_index_freshness_seconds", "Seconds from the time of a repository's indexed commit (its "
            "committer time) to the commit of its index, as of its last sync that advanced the commit.",
            ["repo_id"], multiprocess_mode="mostrecent")
        self.cold_storage_ops = Counter(
            "codeindex_cold_storage_ops", "Cold-storage operations (git bundles in object storage, seed 002) by "
            "operation (backup, restore) and outcome (success, failure: a restore's refused bundle counts one).",
            ["operation", "outcome"])
        self.last_backup = Gauge(
            "codeindex_last_backup_timestamp_seconds", "Unix time of a repository's last successful backup "
            "(a git bundle in object storage).", ["repo_id"], multiprocess_mode="max")
        self.bundle_bytes = Histogram(
            "codeindex_bundle_size_bytes", "Size of each bundle a backup uploaded.", buckets=BUNDLE_BUCKETS)
        self.restore_seconds = Histogram(
            "codeindex_restore_duration_seconds", "Seconds of one successful restore of a clone from bundles "
            "(download, checksum, trial clone, move into place).", buckets=GIT_BUCKETS)
        self.artifact_ops = Counter(
            "codeindex_artifact_ops", "Index artifact pushes and pulls (seed 000) by operation (push, pull) and "
            "outcome (ok; refused: a checksum, an unsafe member, an incompatible or oversized artifact).",
            ["operation", "outcome"])
        self.artifact_bytes = Histogram(
            "codeindex_artifact_size_bytes", "Size of each artifact archive pushed or pulled, by operation.",
            ["operation"], buckets=BUNDLE_BUCKETS)
        self.artifact_seconds = Histogram(
            "codeindex_artifact_duration_seconds", "Seconds of one successful push (snapshot, pack, upload) or "
            "pull (download, checks, install), by operation.", ["operation"], buckets=GIT_BUCKETS)
        self.hit_rate = CacheHitRate(self.cache_requests)


_metrics: _Metrics | None = None


def enable() -> None:
    """Define the metrics (once) in prometheus-client's default registry; from then on the
    recording functions count. Called by ``workers.metrics`` on import."""
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
        from prometheus_client import REGISTRY  # lazy: as in _Metrics

        REGISTRY.register(_metrics.hit_rate)


def enabled() -> bool:
    """True once :func:`enable` ran in this process."""
    return _metrics is not None


def ingested(strategy: str, nbytes: int, seconds: float) -> None:
    """Count one file's content read for embedding: ``strategy`` a content strategy's value,
    ``nbytes`` its size, ``seconds`` the time to obtain and verify it."""
    if _metrics is not None:
        _metrics.ingestion_files.labels(strategy).inc()
        _metrics.ingestion_bytes.labels(strategy).inc(nbytes)
        _metrics.ingestion_seconds.labels(strategy).observe(seconds)


@contextmanager
def transfer(direction: str, backend: str) -> Iterator[None]:
    """Time the object-storage transfer in the ``with`` block: ``direction`` ``upload`` or
    ``download``, ``backend`` ``s3``, ``local`` or ``presigned_url``. A transfer that raises is
    not observed (its failure shows in the breakers and the tasks' retries)."""
    began = time.perf_counter()
    yield
    if _metrics is not None:
        histogram = _metrics.upload_seconds if direction == "upload" else _metrics.download_seconds
        histogram.labels(backend).observe(time.perf_counter() - began)


def cold_storage(operation: str, outcome: str, *, repo_id: str | None = None, size: int | None = None,
                 seconds: float | None = None) -> None:
    """Count one cold-storage ``operation`` (``backup``, ``restore``) with ``outcome``
    (``success``, ``failure``); a successful backup also sets ``repo_id``'s last-backup time and
    observes its bundle's ``size`` (bytes), a successful restore its ``seconds``."""
    if _metrics is None:
        return
    _metrics.cold_storage_ops.labels(operation, outcome).inc()
    if outcome != "success":
        return
    if operation == "backup":
        if repo_id is not None:
            _metrics.last_backup.labels(repo_id).set(time.time())
        if size is not None:
            _metrics.bundle_bytes.observe(size)
    elif operation == "restore" and seconds is not None:
        _metrics.restore_seconds.observe(seconds)


def git_network(operation: str, seconds: float) -> None:
    """Observe one successful git ``operation`` (``clone`` or ``fetch``) of ``seconds``."""
    if _metrics is not None:
        _metrics.git_seconds.labels(operation).observe(seconds)


def cache_lookups(cache_type: str, hits: int, misses: int) -> None:
    """Count ``hits`` and ``misses`` of the cache ``cache_type`` (one of :data:`CACHE_TYPES`)."""
    if _metrics is not None:
        if hits:
            _metrics.cache_requests.labels(cache_type, "hit").inc(hits)
        if misses:
            _metrics.cache_requests.labels(cache_type, "miss").inc(misses)


def cache_size(cache_type: str, nbytes: int) -> None:
    """Set the size of the cache ``cache_type`` to ``nbytes``."""
    if _metrics is not None:
        _metrics.cache_size.labels(cache_type).set(nbytes)


def cache_limit(cache_type: str, nbytes: int) -> None:
    """Set the size limit of the cache ``cache_type`` to ``nbytes`` (beside its size)."""
    if _metrics is not None:
        _metrics.cache_limit.labels(cache_type).set(nbytes)


def cleanup_removed(rule: str, count: int) -> None:
    """Count ``count`` items a pass of cleanup ``rule`` removed (dry runs count nothing)."""
    if _metrics is not None and count:
        _metrics.cleanup_removed.labels(rule).inc(count)


def freshness(repo_id: str, commit_time: float, indexed_time: float) -> None:
    """Set the freshness of ``repo_id``: ``indexed_time - commit_time`` (Unix seconds both)."""
    if _metrics is not None:
        _metrics.freshness.labels(repo_id).set(max(0.0, indexed_time - commit_time))


class CacheHitRate:
    """``codeindex_cache_hit_rate`` by cache type, derived at scrape time from
    ``codeindex_cache_requests_total`` of ``source`` (the counter itself, or the multiprocess
    collector that adds up a worker's processes): hits over lookups since the process (or the
    worker) started, 0 before any lookup. Seed 004 names it a gauge; for a rate over a window
    use ``rate()`` of the counter."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily  # lazy: as in _Metrics

        counts: dict[str, dict[str, float]] = {}
        for family in self.source.collect():
            for sample in family.samples:
                if sample.name == "codeindex_cache_requests_total":
                    by_result = counts.setdefault(sample.labels["cache_type"], {})
                    result = sample.labels["result"]
                    by_result[result] = by_result.get(result, 0.0) + sample.value
        gauge = GaugeMetricFamily("codeindex_cache_hit_rate", "Share of cache lookups that hit, by cache type, "
                                  "since the worker started (seed 004; target above 0.6).", labels=["cache_type"])
        for cache_type, by_result in sorted(counts.items()):
            looked = by_result.get("hit", 0.0) + by_result.get("miss", 0.0)
            gauge.add_metric([cache_type], by_result.get("hit", 0.0) / looked if looked else 0.0)
        yield gauge

    def describe(self) -> list[Any]:
        """Nothing: the registry then checks no name of this collector against the others."""
        return []


def artifact_op(operation: str, outcome: str, *, size: int | None = None, seconds: float | None = None) -> None:
    """Count one artifact ``operation`` (``push``, ``pull``) with ``outcome`` (``ok``,
    ``refused``); a successful one also observes its archive's ``size`` (bytes) and ``seconds``."""
    if _metrics is None:
        return
    _metrics.artifact_ops.labels(operation, outcome).inc()
    if size is not None:
        _metrics.artifact_bytes.labels(operation).observe(size)
    if seconds is not None:
        _metrics.artifact_seconds.labels(operation).observe(seconds)
