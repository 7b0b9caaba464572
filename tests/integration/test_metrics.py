"""The metrics move when their work happens: content read through each content strategy counts
files, bytes and time by strategy; object-storage transfers, git clones and the three caches
count where they run; a sync sets its repository's freshness; the fleet collector reads queue
ages, dead letters and index times from real Redis and PostgreSQL.

``workers.metrics`` enables the domain's metrics on import, as in a worker; values are read
from prometheus-client's registry as deltas (other tests of the session count too).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import workers.metrics  # noqa: F401  # enables indexing.metrics, as a worker does
from indexing.content import CloneCache, ContentEncoder, ContentPolicy, ContentReader, DownloadCache
from indexing.git_source import GitTree
from indexing.messages import Action, BatchJob, PlannedFile
from indexing.objects import LocalObjectStore
from indexing.tree import CommitTree
from tests.conftest import git, make_real_repo, sync


def value(name: str, **labels: str) -> float:
    """The sample ``name`` with ``labels`` in the default registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Samples read now and again later: ``delta.of(name, **labels)`` is the change."""

    def __init__(self, *names: tuple[str, dict]) -> None:
        self.before = {(n, tuple(sorted(l.items()))): value(n, **l) for n, l in names}

    def of(self, name: str, **labels: str) -> float:
        return value(name, **labels) - self.before[(name, tuple(sorted(labels.items())))]


def test_reading_through_each_content_strategy_counts_files_bytes_time_transfers_and_caches(tmp_path: Path) -> None:
    repo = make_real_repo(tmp_path / "repo", celery_files=6, kombu_files=4)
    commit = git(repo, "rev-parse", "HEAD").strip()
    tree = CommitTree(GitTree(repo, commit))
    paths = sorted(p for p in tree.tree.files() if p.endswith(".py") and tree.tree.size(p) > 100)[:5]
    sizes = {p: tree.tree.size(p) for p in paths}
    store = LocalObjectStore(tmp_path / "objects")
    reader = ContentReader(objects=store, downloads=DownloadCache(tmp_path / "downloads", 10**9),
                           clones=CloneCache(tmp_path / "clones", 10**9, timeout_s=60), timeout_s=30)
    base = {"run_id": "r", "repo_id": "metrics", "root": "", "collection": "codeindex", "fence": 1, "commit": commit}
    strategies = ["inline", "object_storage", "git_reference"]
    watched = [(f"codeindex_ingestion_{what}", {"content_strategy": s})
               for what in ("files_total", "bytes_total", "duration_seconds_count") for s in [*strategies, "path"]]
    watched += [("codeindex_storage_upload_duration_seconds_count", {"backend": "local"}),
                ("codeindex_storage_download_duration_seconds_count", {"backend": "presigned_url"}),
                ("codeindex_git_clone_duration_seconds_count", {"operation": "clone"})]
    watched += [("codeindex_cache_requests_total", {"cache_type": c, "result": r})
                for c in ("download", "clone") for r in ("hit", "miss")]
    delta = Delta(*watched)

    def read(strategy: str, rel: str) -> bytes:
        encoder = ContentEncoder(ContentPolicy(strategy, 100 * 1024 if strategy == "inline" else 1, 5 * 1024 * 1024),
                                 store, repo_id="metrics", git_url=repo.as_uri(), branch="main")
        planned = PlannedFile(path=rel, action=Action.ADD)
        job = BatchJob(**base, files=[planned], schema_version=2, contents=encoder.encode(tree, [planned], 10**6))
        assert job.contents[rel].strategy.value == strategy
        return reader.read(job, planned, 10**6)[0]

    try:
        for strategy, rel in zip(strategies, paths):
            assert len(read(strategy, rel)) == sizes[rel]
        read("object_storage", paths[1])   # the download cache has it now
        read("git_reference", paths[3])    # the clone cache has the commit now
        v1 = BatchJob(**{**base, "root": str(repo)}, files=[PlannedFile(path=paths[4], action=Action.ADD)])
        reader.read(v1, v1.files[0], 10**6)
    finally:
        reader.close()
        tree.close()

    expected_files = {"inline": 1, "object_storage": 2, "git_reference": 2, "path": 1}
    expected_bytes = {"inline": sizes[paths[0]], "object_storage": 2 * sizes[paths[1]],
                      "git_reference": sizes[paths[2]] + sizes[paths[3]], "path": sizes[paths[4]]}
    for strategy, count in expected_files.items():
        assert delta.of("codeindex_ingestion_files_total", content_strategy=strategy) == count, strategy
        assert delta.of("codeindex_ingestion_bytes_total", content_strategy=strategy) == expected_bytes[strategy]
        assert delta.of("codeindex_ingestion_duration_seconds_count", content_strategy=strategy) == count
    assert delta.of("codeindex_storage_upload_duration_seconds_count", backend="local") == 1
    assert delta.of("codeindex_storage_download_duration_seconds_count", backend="presigned_url") == 1
    assert delta.of("codeindex_git_clone_duration_seconds_count", operation="clone") == 1
    assert delta.of("codeindex_cache_requests_total", cache_type="download", result="miss") == 1
    assert delta.of("codeindex_cache_requests_total", cache_type="download", result="hit") == 1
    assert delta.of("codeindex_cache_requests_total", cache_type="clone", result="miss") == 1
    assert delta.of("codeindex_cache_requests_total", cache_type="clone", result="hit") == 1
    assert value("codeindex_cache_size_bytes", cache_type="download") == sizes[paths[1]]
    assert value("codeindex_cache_size_bytes", cache_type="clone") > 0
    assert 0 < value("codeindex_cache_hit_rate", cache_type="download") < 1


def test_a_sync_counts_the_embedding_cache_and_sets_its_repository_freshness(index_home: Path, tmp_path: Path) -> None:
    repo = make_real_repo(tmp_path / "fresh", celery_files=8, kombu_files=4)
    repo_id = f"fresh-{uuid.uuid4().hex[:6]}"
    watched = [("codeindex_cache_requests_total", {"cache_type": "embedding", "result": r}) for r in ("hit", "miss")]
    delta = Delta(*watched, ("codeindex_ingestion_files_total", {"content_strategy": "path"}))
    first = sync(repo, source="all", repo_id=repo_id)
    files = first["added"]
    misses = delta.of("codeindex_cache_requests_total", cache_type="embedding", result="miss")
    assert files > 0 and misses > 0
    assert delta.of("codeindex_ingestion_files_total", content_strategy="path") == files
    assert value("codeindex_cache_size_bytes", cache_type="embedding") == \
        sum(p.stat().st_size for p in index_home.glob("embeddings.sqlite*") if not p.name.endswith("-shm"))
    committed = float(git(repo, "show", "-s", "--format=%ct", "HEAD"))
    freshness = value("codeindex_index_freshness_seconds", repo_id=repo_id)
    assert 0 <= freshness <= time.time() - committed + 1

    # One function added at the end of a file: its other chunks come from the cache.
    target = sorted(repo.rglob("*.py"))[0]
    target.write_text(target.read_text() + "\n\ndef added_for_metrics():\n    return 42\n")
    git(repo, "commit", "-q", "-am", "one function more")
    hits = delta.of("codeindex_cache_requests_total", cache_type="embedding", result="hit")
    second = sync(repo, source="all", repo_id=repo_id)
    assert second["updated"] == 1
    assert delta.of("codeindex_cache_requests_total", cache_type="embedding", result="hit") > hits


@pytest.fixture
def fleet_process(tmp_path: Path, redis_url: str, postgres_dsn: str):
    """This process as a member of a fleet (Redis broker, PostgreSQL), with shard ``a``."""
    from config.settings import configure
    from workers import runtime
    from workers.app import apply_settings

    settings = configure(broker_url=redis_url, result_backend=redis_url, state_url=postgres_dsn,
                         home=tmp_path / "home", embedder="hashing")
    apply_settings(settings)
    runtime.reset()
    rt = runtime.runtime()
    rt.registry.register("a", "a", "127.0.0.1", 10)
    yield rt
    runtime.reset()
    apply_settings(configure())


def fleet_samples() -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in workers.metrics.FleetCollector().collect() for s in family.samples}


def test_the_fleet_collector_reads_queue_age_dead_letters_and_index_times(fleet_process) -> None:
    from workers.app import app

    samples = fleet_samples()
    assert samples[("codeindex_fleet_up", ())] == 1
    assert samples[("codeindex_queue_oldest_message_age_seconds", (("queue", "maintenance"),))] == 0
    assert samples[("codeindex_dead_letters", (("status", "pending"),))] == 0

    app.send_task("codeindex.shards.check")  # nobody consumes: it waits in `maintenance`
    time.sleep(1.2)
    state = fleet_process.state
    state.record_failure("run-1", "codeindex.embed.batch", {"repo_id": "x"}, "boom")
    state.record_failure("run-2", "codeindex.embed.batch", {"repo_id": "x"}, "boom")
    state.mark_failure_replayed(state.failures(1)[0].id)
    fence = state.grant_fence("indexed-repo", "/srv/indexed-repo", "codeindex")
    state.commit_files("indexed-repo", fence, [], [], "0" * 40, None)

    samples = fleet_samples()
    assert samples[("codeindex_queue_depth", (("queue", "maintenance"),))] == 1
    assert 1.2 <= samples[("codeindex_queue_oldest_message_age_seconds", (("queue", "maintenance"),))] < 60
    assert samples[("codeindex_dead_letters", (("status", "pending"),))] == 1
    assert samples[("codeindex_dead_letters", (("status", "replayed"),))] == 1
    indexed = samples[("codeindex_repo_last_indexed_timestamp_seconds", (("repo_id", "indexed-repo"),))]
    assert abs(indexed - time.time()) < 60
