"""The :class:`~indexing.embed_cache.EmbeddingCache` protocol, one set of tests over both
implementations: :class:`SQLiteEmbeddingCache` (the embedded mode's file, here a temporary
one) and :class:`PostgresEmbeddingCache` (a fleet's, on the session's PostgreSQL database of
tests/conftest.py; each test uses a model id of its own, and the database's schema is emptied
before each test by the ``postgres_dsn`` fixture).

What the sync relies on: absent keys are absent from ``get_many``'s answer; a vector put is
read back equal, as float32; a key put again keeps its first vector (two workers that embedded
the same text wrote the same vector anyway, and the first one may already have been used);
thousands of keys in one call (more than one statement's batch: 500 for SQLite, 2000 for
PostgreSQL) are all stored and all found; two processes putting the same keys at the same
time, in different orders, both succeed and leave one vector per key; and the fleet-sharing
promise: a vector one instance (a worker) put is found by another instance opened separately
(another worker), which is what saves the model time in a fleet.

The concurrent test makes the two puts meet for sure (a third writer holds the middle key
until both wait for it): with ``put_many`` inserting in the caller's order, PostgreSQL detected
a deadlock between two puts of the same keys in opposite orders in every run (each held the
rows the other needed), and one of them failed with StoreError; inserting in key order (what
indexing/pg_cache.py does now) makes them wait in one order only.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from indexing.embed_cache import SQLiteEmbeddingCache
from indexing.pg_cache import PostgresEmbeddingCache
from tests.conftest import join_processes

DIMENSION = 16


def open_cache(kind: str, where: str):
    """A new cache instance: ``where`` is the SQLite file or the PostgreSQL DSN."""
    return SQLiteEmbeddingCache(Path(where)) if kind == "sqlite" else PostgresEmbeddingCache(where)


def close_cache(cache) -> None:
    if isinstance(cache, PostgresEmbeddingCache):
        cache.db.close()


def stored_rows(kind: str, where: str, model: str) -> int:
    """How many rows the cache's table holds for ``model`` (one per key, if no key is doubled)."""
    if kind == "sqlite":
        import sqlite3

        with sqlite3.connect(where) as conn:
            return conn.execute("SELECT count(*) FROM embeddings WHERE model = ?", [model]).fetchone()[0]
    import psycopg

    with psycopg.connect(where) as conn:
        return conn.execute("SELECT count(*) FROM embeddings WHERE model = %s", [model]).fetchone()[0]


class Caches:
    """The backend of one test: ``open()`` makes another instance on the same storage."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where = kind, where
        self.model = f"test-model-{uuid.uuid4().hex[:12]}"
        self._opened: list = []

    def open(self):
        self._opened.append(open_cache(self.kind, self.where))
        return self._opened[-1]

    def close(self) -> None:
        for cache in self._opened:
            close_cache(cache)


@pytest.fixture(params=["sqlite", "postgres"])
def caches(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Caches]:
    if request.param == "sqlite":
        where = str(tmp_path / "embeddings.sqlite")
    else:
        where = request.getfixturevalue("postgres_dsn")
    made = Caches(request.param, where)
    yield made
    made.close()


def vectors(keys: list[str], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {key: rng.standard_normal(DIMENSION).astype(np.float32) for key in keys}


def keys(count: int, tag: str = "") -> list[str]:
    """``count`` distinct text hashes (SHA-256 hex digits, as the sync's)."""
    import hashlib

    return [hashlib.sha256(f"{tag}text {i}".encode()).hexdigest() for i in range(count)]


def assert_same(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(found) == set(expected)
    for key, vector in expected.items():
        assert found[key].dtype == np.float32
        assert np.array_equal(found[key], vector), key


def test_absent_keys_are_absent(caches: Caches):
    cache = caches.open()
    assert cache.get_many(caches.model, keys(3)) == {}
    assert cache.get_many(caches.model, []) == {}
    cache.put_many(caches.model, vectors(keys(2), seed=1))
    found = cache.get_many(caches.model, keys(4))  # two present, two absent
    assert set(found) == set(keys(2))
    assert cache.get_many(f"{caches.model}-other", keys(2)) == {}  # keyed by model too


def test_put_then_get_returns_equal_float32_vectors(caches: Caches):
    cache = caches.open()
    written = vectors(keys(5), seed=2)
    written[keys(5)[0]] = np.arange(DIMENSION, dtype=np.float64) / 3  # a float64 is stored as float32
    cache.put_many(caches.model, written)
    found = cache.get_many(caches.model, keys(5) + keys(5)[:2])  # a key asked twice is answered once
    assert_same(found, {k: np.asarray(v, dtype=np.float32) for k, v in written.items()})
    assert all(v.shape == (DIMENSION,) for v in found.values())


def test_a_second_put_keeps_the_first_vector(caches: Caches):
    cache = caches.open()
    first = vectors(keys(3), seed=3)
    cache.put_many(caches.model, first)
    second = vectors(keys(4), seed=4)  # the same three keys with other vectors, and one new key
    cache.put_many(caches.model, second)
    found = cache.get_many(caches.model, keys(4))
    assert_same(found, {**second, **first})
    assert stored_rows(caches.kind, caches.where, caches.model) == 4


def test_thousands_of_keys_cross_the_batch_size(caches: Caches):
    cache = caches.open()
    many = vectors(keys(4500), seed=5)  # above SQLite's 500 and PostgreSQL's 2000 a statement
    cache.put_many(caches.model, many)
    assert stored_rows(caches.kind, caches.where, caches.model) == 4500
    found = cache.get_many(caches.model, keys(4600))
    assert_same(found, many)


def put_concurrently(kind: str, where: str, model: str, reverse: bool, count: int, barrier, errors) -> None:
    """Put the ``count`` keys of the race, in order or reversed, once the parent says go (the
    barrier)."""
    try:
        cache = open_cache(kind, where)
        batch = keys(count, tag="race ")
        written = vectors(batch, seed=100 + int(reverse))
        barrier.wait(timeout=60)
        cache.put_many(model, {k: written[k] for k in (reversed(batch) if reverse else batch)})
        close_cache(cache)
    except BaseException as exc:  # reported to the parent, which asserts on it
        barrier.abort()  # the parent stops waiting for this one
        errors.put(f"{'reversed' if reverse else 'ordered'} writer: {type(exc).__name__}: {exc}"[:800])
        raise SystemExit(1) from None


@contextmanager
def third_put_in_flight(kind: str, where: str, model: str, key: str) -> Iterator[None]:
    """A third writer whose put of ``key`` is in flight (inserted, not committed) for the
    ``with`` block, then rolled back: the puts that reach ``key`` meanwhile wait for it, so the
    two racing puts are surely inside their statements at the same time."""
    blob = np.zeros(DIMENSION, dtype=np.float32).tobytes()
    if kind == "sqlite":
        import sqlite3

        conn = sqlite3.connect(where, isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO embeddings VALUES (?, ?, ?)", [model, key, blob])
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    import psycopg

    with psycopg.connect(where) as conn:  # a transaction from the first statement to the rollback
        conn.execute("INSERT INTO embeddings VALUES (%s, %s, %s)", [model, key, blob])
        try:
            yield
        finally:
            conn.rollback()


def test_two_processes_putting_the_same_keys_at_once(caches: Caches):
    """Two workers that embedded the same texts (a fork of a repository, a vendored file) put
    the same 1500 keys (one statement's batch in PostgreSQL) at the same time, each in its own
    order (the order of its chunks): neither fails, and every key holds exactly one vector, one
    of the two written. To make them meet for sure, a third writer's put of the middle key is in
    flight when they start and ends a second later (its key is then written by the two)."""
    caches.open()  # the table exists before the race (as after a worker's start)
    count = 1500
    race = keys(count, tag="race ")
    ctx = multiprocessing.get_context("spawn")
    barrier, errors = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=put_concurrently,
                         args=(caches.kind, caches.where, caches.model, reverse, count, barrier, errors))
             for reverse in (False, True)]
    for proc in procs:
        proc.start()
    try:
        with third_put_in_flight(caches.kind, caches.where, caches.model, race[count // 2]):
            barrier.wait(timeout=60)
            time.sleep(1.0)  # both puts reach the middle key and wait for it
    finally:
        messages = join_processes(procs, errors, timeout=90)
    assert [p.exitcode for p in procs] == [0, 0], "\n".join(messages)
    assert stored_rows(caches.kind, caches.where, caches.model) == count
    candidates = [vectors(race, seed=100 + i) for i in (0, 1)]
    found = caches.open().get_many(caches.model, race)
    assert set(found) == set(race)
    for key, vector in found.items():
        assert np.array_equal(vector, candidates[0][key]) or np.array_equal(vector, candidates[1][key]), key


def test_a_vector_one_worker_put_is_found_by_another(caches: Caches):
    """The fleet-sharing promise: instances opened separately (two workers, here two instances
    with their own connections) share what either has put."""
    worker_a = caches.open()
    worker_b = caches.open()
    from_a = vectors(keys(10, tag="a "), seed=6)
    worker_a.put_many(caches.model, from_a)
    assert_same(worker_b.get_many(caches.model, list(from_a)), from_a)
    from_b = vectors(keys(10, tag="b "), seed=7)
    worker_b.put_many(caches.model, from_b)
    later = caches.open()  # a worker started afterwards
    assert_same(later.get_many(caches.model, list(from_a) + list(from_b)), {**from_a, **from_b})
    assert_same(worker_a.get_many(caches.model, list(from_b)), from_b)
