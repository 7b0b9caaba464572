"""The shared-path vector store under concurrent writers (worker processes of one host):
no write is lost, no key is stored twice, and the newest fencing token wins every key."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np

from indexing.lance_store import LanceDBStore
from indexing.store import VectorObject

KEYS = 300


def objects(fence: int, start: int, count: int, writer: str) -> list[VectorObject]:
    return [VectorObject(id=f"id-{i:05d}", repo="r", path=f"f{i}.py", chunk_index=0, start_line=1, end_line=2,
                         content=f"{writer} wrote {i}", language="python", content_sha256=writer, commit="c",
                         indexed_at="t", embedding_model="m", fence=fence,
                         vector=np.full(8, fence, dtype=np.float32)) for i in range(start, start + count)]


def writer(uri: str, fence: int, barrier) -> None:
    store = LanceDBStore(uri, "shared")
    store.ensure_collection(8)
    barrier.wait(timeout=60)
    # Every writer inserts and updates the same keys, in overlapping slices, at the same time.
    for start in range(0, KEYS, 50):
        store.upsert(objects(fence, start, 75 if start + 75 <= KEYS else KEYS - start, f"w{fence}"))


def test_concurrent_writers_lose_nothing_and_never_duplicate_a_key(tmp_path: Path) -> None:
    uri = str(tmp_path / "lancedb")
    seed = LanceDBStore(uri, "shared")
    seed.ensure_collection(8)
    seed.upsert(objects(0, 0, KEYS // 2, "seed"))  # half the keys exist (updates), half are new (inserts)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=writer, args=(uri, fence, barrier)) for fence in (1, 2, 3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    rows = list(LanceDBStore(uri, "shared").export())
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == KEYS, f"{len(ids)} rows for {len(set(ids))} keys"
    # Fenced upserts: whatever the interleaving, the newest token's content is what remains.
    assert {r["content_sha256"] for r in rows} == {"w3"}
