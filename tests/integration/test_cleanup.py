"""The cleanup rules on a real embedded index (eager tasks, SQLite state, LanceDB on disk, the
hashing embedder): compaction after many small syncs keeps the index exact, every rule is
bounded and idempotent, caches are evicted least recently used first, and the embedding cache
loses exactly the entries no index uses."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import git, sync


def configure_home(home: Path, **overrides):
    """An embedded index in ``home`` with the hashing embedder and ``overrides``; its runtime."""
    from config.settings import configure
    from workers import runtime
    from workers.app import apply_settings

    settings = configure(home=home, embedder="hashing", **overrides)
    runtime.reset()
    apply_settings(settings)
    return runtime.runtime()


@pytest.fixture
def small_repo(tmp_path: Path) -> Path:
    """A git repository of five small Python files."""
    root = tmp_path / "small"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    for i in range(5):
        (root / f"m{i}.py").write_text(f"def f{i}():\n    return {i}\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "five files")
    return root


@pytest.fixture
def home(tmp_path: Path):
    from workers import runtime

    yield tmp_path / "home"
    runtime.reset()


def run(rt, *names: str, dry_run: bool = False, limit: int | None = None) -> dict:
    from workers.cleanup import run_rules

    return {r.rule: r for r in run_rules(rt, list(names) or None, dry_run=dry_run, limit=limit)}


def full_export(rt) -> list[dict]:
    rows = list(rt.vector_store(rt.settings.collection).export(with_vectors=True))
    return [{**row, "vector": np.asarray(row["vector"], dtype=np.float32).tobytes()} for row in rows]


def test_compaction_after_200_small_syncs_keeps_the_index_exact(small_repo: Path, home: Path) -> None:
    rt = configure_home(home, compaction_keep_seconds=0)
    assert sync(small_repo, "all")["errors"] == 0
    began = time.monotonic()
    for n in range(200):
        path = small_repo / f"m{n % 5}.py"
        path.write_text(path.read_text() + f"\n\ndef g{n}():\n    return {n}\n")
        assert sync(small_repo, changes=[(path.name, "modified")])["errors"] == 0
    synced = time.monotonic() - began
    table = rt.vector_store(rt.settings.collection)
    before, pre = full_export(rt), table.compact(0, dry_run=True)

    dry = run(rt, "compaction", dry_run=True)["compaction"]
    assert dry.removed and full_export(rt) == before and table.compact(0, dry_run=True) == pre
    result = run(rt, "compaction")["compaction"]
    post = table.compact(0, dry_run=True)
    print(f"\n200 syncs in {synced:.1f} s; compaction: versions {pre.versions_before} -> {post.versions_before}, "
          f"disk {pre.bytes_before} -> {post.bytes_before} bytes ({result.note})")
    assert result.error is None and len(result.removed) >= 200 and result.bytes_freed > 0
    assert post.versions_before == 1 < pre.versions_before
    assert post.bytes_before < pre.bytes_before
    assert full_export(rt) == before  # ids, hashes, models and vectors, byte for byte
    assert run(rt, "compaction")["compaction"].removed == []  # a second pass removes nothing
    assert full_export(rt) == before
    assert sync(small_repo, "all")["errors"] == 0  # still writable and in step: nothing to do
    assert full_export(rt) == before


def test_every_rule_is_bounded_and_a_second_pass_removes_nothing(small_repo: Path, home: Path) -> None:
    from indexing.ids import sha256_hex
    from indexing.state import RunRecord

    rt = configure_home(home, compaction_keep_seconds=0, run_retention_days=1e-6, download_cache_bytes=2000)
    assert sync(small_repo, "all")["errors"] == 0
    (small_repo / "m0.py").write_text("def changed():\n    return 'new'\n")
    assert sync(small_repo, changes=[("m0.py", "modified")])["errors"] == 0  # its old chunk is unreferenced now
    rt.embedding_cache.put_many("hashing-384", {f"{i:064x}": np.ones(4, dtype=np.float32) for i in range(3)})
    for i in range(3):
        rt.state.start_run(RunRecord(id=f"old-{i}", repo_id="small", trigger="cli", status="succeeded",
                                     started_at="2020-01-01T00:00:00.000+00:00"))
        rt.state.record_failure(None, "codeindex.embed.batch", {"args": [], "kwargs": {}}, "boom")
    for failure in rt.state.failures()[:2]:
        rt.state.mark_failure_replayed(failure.id)
    downloads = rt.content_reader.downloads
    downloads.max_bytes = 10**9  # filled past the limit first, as another setting would have
    for i in range(4):
        data = bytes([i]) * 1000
        downloads.put(sha256_hex(data), data)
    downloads.max_bytes = 2000
    time.sleep(0.2)  # past the retention of 1e-6 days

    first = run(rt, limit=2)
    assert {name: r.error for name, r in first.items() if r.error} == {}
    assert len(first["runs"].removed) == 2 and first["runs"].more  # bounded: two of the three
    assert len(first["failures"].removed) == 2 and len(first["downloads"].removed) == 2
    assert len(first["embeddings"].removed) == 2 and first["embeddings"].more
    rest = run(rt)
    assert len(rest["runs"].removed) >= 1 and len(rest["embeddings"].removed) >= 2
    again = run(rt)
    assert {name: r.removed for name, r in again.items() if r.removed} == {}
    assert [f.replayed_at for f in rt.state.failures()] == [None]  # the record never replayed stays


def test_cache_eviction_is_lru_down_to_the_limit(home: Path) -> None:
    from indexing.ids import sha256_hex

    rt = configure_home(home, download_cache_bytes=10**9, clone_cache_bytes=10**9)
    downloads, clones = rt.content_reader.downloads, rt.content_reader.clones
    now = time.time()
    order = []
    for i in range(10):
        data = f"object {i} ".encode() * 100
        checksum = sha256_hex(data)
        downloads.put(checksum, data)
        os.utime(downloads.root / checksum[:2] / checksum, (now - 1000 + i * 10, now - 1000 + i * 10))
        order.append(f"{checksum[:2]}/{checksum}")
    downloads.get(order[0][3:])  # used just now: the most recent of all
    order = order[1:] + order[:1]
    size = sum(p.stat().st_size for p in downloads.root.rglob("*") if p.is_file())
    for i in range(4):
        clone = clones.root / f"{i:016x}.git"
        (clone / "objects").mkdir(parents=True)
        (clone / "objects" / "pack").write_bytes(b"x" * 5000)
        os.utime(clone, (now - 100 * (4 - i), now - 100 * (4 - i)))
    rt = configure_home(home, download_cache_bytes=size // 2, clone_cache_bytes=11_000)

    dry = run(rt, "downloads", "clones", dry_run=True)
    assert dry["downloads"].removed and size == sum(p.stat().st_size for p in downloads.root.rglob("*") if p.is_file())
    result = run(rt, "downloads", "clones")
    assert result["downloads"].removed == dry["downloads"].removed == order[:len(result["downloads"].removed)]
    left = sum(p.stat().st_size for p in rt.content_reader.downloads.root.rglob("*") if p.is_file())
    assert left <= size // 2 and left == size - result["downloads"].bytes_freed
    assert result["clones"].removed == ["0000000000000000.git", "0000000000000001.git"]  # the two oldest
    assert sorted(p.name for p in clones.root.glob("*.git")) == ["0000000000000002.git", "0000000000000003.git"]
    assert run(rt, "downloads", "clones")["downloads"].removed == []


def test_embedding_gc_removes_exactly_the_unreferenced(small_repo: Path, home: Path) -> None:
    from indexing.cleanup import referenced_keys

    rt = configure_home(home)
    assert sync(small_repo, "all")["errors"] == 0
    for i in (1, 2):
        (small_repo / f"m{i}.py").write_text(f"def h{i}():\n    return 'replaced'\n")
    assert sync(small_repo, changes=[("m1.py", "modified"), ("m2.py", "modified")])["errors"] == 0
    cache = rt.embedding_cache
    cache.put_many("another-model", {"ab" * 32: np.zeros(4, dtype=np.float32)})
    referenced = referenced_keys(rt.vector_store(rt.settings.collection).export())
    expected = {f"{m}/{h}" for m, h in set(cache.keys()) - referenced}
    # The two replaced chunks, the names they defined (f1, f2: their name vectors' texts) and
    # the other model's entry; h1 and h2's names are referenced by the new objects.
    assert len(expected) == 5

    assert set(run(rt, "embeddings", dry_run=True)["embeddings"].removed) == expected
    assert set(run(rt, "embeddings")["embeddings"].removed) == expected
    assert set(cache.keys()) == referenced
    objects = rt.vector_store(rt.settings.collection).count()
    assert len(referenced) == 2 * objects  # each chunk defines one function: its text and its names
    summary = sync(small_repo, "all", reindex=True)  # every chunk written again: all from the cache
    assert summary["errors"] == 0 and summary["chunks_embedded"] == 0 and summary["chunks_reused"] == objects
    assert set(cache.keys()) == referenced  # no names text embedded again either


def test_embedding_gc_refuses_while_a_store_lost_objects(small_repo: Path, home: Path) -> None:
    rt = configure_home(home)
    assert sync(small_repo, "all")["errors"] == 0
    keys = set(rt.embedding_cache.keys())
    rt.vector_store(rt.settings.collection).drop()
    result = run(rt, "embeddings")["embeddings"]
    assert result.error and "verify --repair" in result.error
    assert set(rt.embedding_cache.keys()) == keys
