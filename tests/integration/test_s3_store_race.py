"""The LanceDB store in object storage under concurrent writers on several machines: three
writer processes (``spawn``: LanceDB is not fork-safe) open :class:`LanceDBStore` on the same
``s3://`` table on the moto server of tests/s3.py, each with the fleet's Redis table lock
(workers.locks.redis_lock, one key per table as workers/runtime.py's ``_table_lock`` makes it),
and upsert overlapping slices of the same 300 keys at once after a barrier, as
tests/integration/test_shared_store.py does for a local path. Asserted: every writer
finishes, no key is stored twice, none is lost, and the newest fencing token's content is what
remains. A second test shows that the lock given is the one the writes hold: while another
holder keeps it, upserts and deletes wait (and time out), reads do not.

Why the lock: Lance commits optimistically and two concurrent ``merge_insert`` calls that plan
the same key can both commit (indexing/lance_store.py's docstring). On a local path the store
takes a file lock itself; a file lock cannot cross machines, so a fleet writing S3 passes a
Redis lock.

Measured by hand without the lock (``python -m tests.integration.test_s3_store_race
unlocked 10``: the same race with ``write_lock=None``; lancedb 0.40.0 (lance-table 13.0.0),
moto 5.2.5 in server mode, a 2-CPU machine): without the lock, 4 of 40 runs stored duplicate
keys: 350 rows for 300 keys (50 keys twice) in two runs, 375 rows (75 keys twice) in one, 450
rows (100 keys doubled or tripled) in one; a duplicated key keeps an older writer's row (fence 1
or 2) beside the newest's, so the stale content stays searchable. Every writer exited without an
error in all 40 runs (no commit conflict was reported), no key was ever lost, and the other 36
runs were exact. The conditional-put commits of Lance on S3 do not prevent it: both
``merge_insert`` commits succeed. With the lock (``locked 5`` by hand, and this test), every run
was exact. No test asserts that duplicates happen without the lock: that depends on timing and
on the object store.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import sys
import uuid
from collections import Counter

import numpy as np
import pytest

from indexing.errors import LockTimeoutError, StoreError
from indexing.lance_store import LanceDBStore
from indexing.store import VectorObject
from tests.conftest import join_processes
from tests.s3 import S3Endpoint, s3_server  # noqa: F401 - the session fixture, used by name

KEYS = 300
DIMENSION = 8
COLLECTION = "shared"


def objects(fence: int, start: int, count: int, writer: str) -> list[VectorObject]:
    return [VectorObject(id=f"id-{i:05d}", repo="r", path=f"f{i}.py", chunk_index=0, start_line=1, end_line=2,
                         content=f"{writer} wrote {i}", language="python", content_sha256=writer, commit="c",
                         indexed_at="t", embedding_model="m", fence=fence,
                         vector=np.full(DIMENSION, fence, dtype=np.float32)) for i in range(start, start + count)]


def table_lock_key(uri: str, collection: str) -> str:
    """The Redis key of a table's write lock, made as workers/runtime.py's ``_table_lock`` makes it."""
    return f"codeindex:lock:table:{hashlib.sha256(uri.encode()).hexdigest()[:16]}:{collection}"


def open_store(uri: str, options: dict[str, str], redis_url: str | None, lock_timeout: float = 120.0) -> LanceDBStore:
    """The table ``uri``/shared; with ``redis_url``, every write holds the Redis table lock."""
    if redis_url is None:
        return LanceDBStore(uri, COLLECTION, storage_options=options)
    import redis

    from workers.locks import redis_lock

    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    key = table_lock_key(uri, COLLECTION)
    return LanceDBStore(uri, COLLECTION, storage_options=options, write_lock=lambda: redis_lock(
        client, key, what=f"table {COLLECTION} at {uri}", ttl=30.0, timeout=lock_timeout))


def writer(uri: str, options: dict[str, str], redis_url: str | None, fence: int, barrier, errors) -> None:
    try:
        store = open_store(uri, options, redis_url)
        store.ensure_collection(DIMENSION)
        barrier.wait(timeout=120)
        # Every writer inserts and updates the same keys, in overlapping slices, at the same time.
        for start in range(0, KEYS, 50):
            store.upsert(objects(fence, start, min(75, KEYS - start), f"w{fence}"))
    except BaseException as exc:  # reported to the parent, which asserts on it
        errors.put(f"writer {fence}: {type(exc).__name__}: {exc}"[:600])
        raise SystemExit(1) from None


def race(endpoint: S3Endpoint, redis_url: str | None) -> dict:
    """Seed half the keys (fence 0), run the three writers (fences 1, 2, 3) and read the table
    back: ``{"exitcodes", "errors", "rows", "keys", "duplicated", "contents"}``. The bucket is
    dropped afterwards."""
    bucket = f"codeindex-race-{uuid.uuid4().hex[:12]}"
    endpoint.store(bucket).ensure_bucket()
    uri = f"s3://{bucket}/lancedb"
    options = s3_options(endpoint)
    try:
        seed = LanceDBStore(uri, COLLECTION, storage_options=options)
        seed.ensure_collection(DIMENSION)
        seed.upsert(objects(0, 0, KEYS // 2, "seed"))  # half the keys exist (updates), half are new (inserts)
        ctx = multiprocessing.get_context("spawn")
        barrier, errors = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=writer, args=(uri, options, redis_url, fence, barrier, errors))
                 for fence in (1, 2, 3)]
        for proc in procs:
            proc.start()
        messages = join_processes(procs, errors, timeout=240)
        rows = list(LanceDBStore(uri, COLLECTION, storage_options=options).export())
        counts = Counter(r["id"] for r in rows)
        return {"exitcodes": [p.exitcode for p in procs], "errors": messages, "rows": len(rows), "keys": len(counts),
                "duplicated": sum(1 for n in counts.values() if n > 1),
                "contents": Counter(r["content_sha256"] for r in rows)}
    finally:
        endpoint.drop_bucket(bucket)


def s3_options(endpoint: S3Endpoint) -> dict[str, str]:
    """LanceDB's storage options for ``endpoint``, from the runtime's own builder."""
    from config.settings import Settings
    from workers.runtime import Runtime

    return Runtime(Settings(s3_endpoint_url=endpoint.url, s3_region=endpoint.region,
                            s3_access_key_id=endpoint.access_key,
                            s3_secret_access_key=endpoint.secret_key)).s3_storage_options()


def test_writers_on_s3_with_the_redis_table_lock_lose_nothing_and_never_duplicate_a_key(
        s3_server: S3Endpoint, redis_url: str) -> None:
    outcome = race(s3_server, redis_url)
    assert outcome["exitcodes"] == [0, 0, 0], outcome["errors"]
    assert outcome["rows"] == outcome["keys"] == KEYS, (
        f"{outcome['rows']} rows for {outcome['keys']} keys ({outcome['duplicated']} stored more than once)")
    # Fenced upserts: whatever the interleaving, the newest token's content is what remains.
    assert outcome["contents"] == {"w3": KEYS}


def test_every_write_waits_for_the_table_lock_and_reads_do_not(s3_server: S3Endpoint, redis_url: str) -> None:
    """The lock given is the one the writes hold: while another holder has the table's Redis
    lock, upserts and deletes wait for it (here: give up after 0.5 s, naming the lock) and
    reads go on; once it is released, writes go through."""
    import redis

    from workers.locks import redis_lock

    bucket = f"codeindex-race-{uuid.uuid4().hex[:12]}"
    s3_server.store(bucket).ensure_bucket()
    uri = f"s3://{bucket}/lancedb"
    try:
        store = open_store(uri, s3_options(s3_server), redis_url, lock_timeout=0.5)
        store.ensure_collection(DIMENSION)
        assert store.upsert(objects(1, 0, 10, "first")) == 10
        client = redis.Redis.from_url(redis_url, socket_timeout=10)
        with redis_lock(client, table_lock_key(uri, COLLECTION), what="the test's hold", ttl=30.0, timeout=5.0):
            with pytest.raises((StoreError, LockTimeoutError), match="locked by another writer"):
                store.upsert(objects(2, 0, 20, "blocked"))
            with pytest.raises((StoreError, LockTimeoutError), match="locked by another writer"):
                store.delete([f"id-{i:05d}" for i in range(5)], fence=9)
            assert store.count() == 10  # reads take no lock
            assert {r["content_sha256"] for r in store.export()} == {"first"}
        assert store.upsert(objects(2, 0, 20, "after")) == 20
        store.delete([f"id-{i:05d}" for i in range(5)], fence=2)
        assert store.count() == 15
    finally:
        s3_server.drop_bucket(bucket)


if __name__ == "__main__":  # the measurement of the docstring: python -m ... unlocked|locked RUNS
    from tests.s3 import s3_endpoint_for_tests

    mode, runs = sys.argv[1], int(sys.argv[2])
    endpoint = s3_endpoint_for_tests()
    url = None
    if mode == "locked":
        from pathlib import Path
        from tempfile import mkdtemp

        from tests.conftest import RedisServer

        redis_server = RedisServer(Path(mkdtemp()))
        redis_server.start()
        url = redis_server.url
    try:
        for run in range(runs):
            result = race(endpoint, url)
            print(f"run {run + 1}: exitcodes={result['exitcodes']} rows={result['rows']} keys={result['keys']} "
                  f"duplicated={result['duplicated']} contents={dict(result['contents'])} "
                  f"errors={result['errors']}", flush=True)
    finally:
        if endpoint.server is not None:
            endpoint.server.stop()
        if url is not None:
            redis_server.stop()
