"""The logic of the Redis repository lock and of the shared circuit breakers, on fakeredis (its
Lua extra runs redis-py's lock scripts): exclusion, waiting, renewal, a stalled or cut-off
holder, breaker state shared by clients, answers that do not open it. Failures are injected
by disconnecting the fake server. What crosses processes, and real restarts, are tested
against the real Redis in tests/integration/test_redis_lock_and_breakers.py."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import fakeredis
import numpy as np
import pybreaker
import pytest
import redis

from indexing.errors import (
    BrokerUnavailableError,
    ChangeListError,
    DependencyUnavailableError,
    LockTimeoutError,
    MassDeleteError,
    StaleFenceError,
    StoreError,
)
from indexing.store import VectorObject
from workers import locks
from workers.breakers import Dependency, GuardedEmbedder, GuardedVectorStore, call_through, make_breaker
from workers.locks import redis_lock_key, redis_repo_lock


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)


def _fail(exc: BaseException):
    raise exc


# --- the lock ---------------------------------------------------------------------------------

def test_lock_excludes_other_threads(client) -> None:
    inside, most = [0], [0]
    counter = threading.Lock()

    def worker() -> None:
        for _ in range(2):
            with redis_repo_lock(client, "repo-t", ttl=5, timeout=10):
                with counter:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.1)
                with counter:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert most[0] == 1 and inside[0] == 0
    assert client.get(redis_lock_key("repo-t")) is None


def test_lock_wait_times_out_with_a_clear_error(client) -> None:
    with redis_repo_lock(client, "repo-busy", ttl=5, timeout=1):
        started = time.monotonic()
        with (pytest.raises(LockTimeoutError, match="repository repo-busy is locked"),
              redis_repo_lock(client, "repo-busy", ttl=5, timeout=0.3)):
            pytest.fail("took a lock that another holder has")
        assert 0.25 <= time.monotonic() - started < 2


def test_renewal_keeps_the_lock_past_its_ttl(client) -> None:
    with redis_repo_lock(client, "repo-long", ttl=1, timeout=1) as handle:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            with pytest.raises(LockTimeoutError), redis_repo_lock(client, "repo-long", ttl=1, timeout=0):
                pass
            time.sleep(0.25)
        assert handle.renewals >= 5 and not handle.lost
    assert client.get(redis_lock_key("repo-long")) is None


def test_a_stalled_holder_loses_the_lock_and_cannot_release_the_next_one(
        client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    key = redis_lock_key("repo-stall")
    with monkeypatch.context() as stalled:
        # A stalled holder (a long GC pause, a frozen VM) never gets to renew its lock.
        stalled.setattr(locks, "_renew", lambda lock, handle, every: None)
        first_cm = redis_repo_lock(client, "repo-stall", ttl=0.6, timeout=1)
        first = first_cm.__enter__()
    second_cm = redis_repo_lock(client, "repo-stall", ttl=5, timeout=3)
    second = second_cm.__enter__()  # waits for the first one's ttl to run out
    token = client.get(key)
    with caplog.at_level(logging.WARNING, logger="codeindex.locks"):
        first_cm.__exit__(None, None, None)  # the stalled holder wakes up and leaves: no error
    assert first.lost and "expired" in first.lost_reason
    assert "lost before release" in caplog.text
    assert client.get(key) == token  # the second holder's lock is untouched
    second_cm.__exit__(None, None, None)
    assert not second.lost and client.get(key) is None


def test_the_lock_is_released_when_the_block_raises(client) -> None:
    with pytest.raises(RuntimeError, match="boom"), redis_repo_lock(client, "repo-x", ttl=5, timeout=1):
        raise RuntimeError("boom")
    assert client.get(redis_lock_key("repo-x")) is None
    with redis_repo_lock(client, "repo-x", ttl=5, timeout=0):
        pass


def test_a_holder_whose_lock_vanished_sees_it_lost(client) -> None:
    with redis_repo_lock(client, "repo-gone", ttl=0.9, timeout=1) as handle:
        client.delete(redis_lock_key("repo-gone"))  # what a restart without persistence does
        deadline = time.monotonic() + 3
        while not handle.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handle.lost and "renewal refused" in handle.lost_reason


def test_renewals_failing_for_a_whole_ttl_mark_the_lock_lost(server, client, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="codeindex.locks"):
        with redis_repo_lock(client, "repo-cut", ttl=0.9, timeout=1) as handle:
            server.connected = False  # Redis unreachable: the lock may still be ours until its ttl runs out
            time.sleep(0.5)
            assert not handle.lost and "retrying" in caplog.text
            deadline = time.monotonic() + 3
            while not handle.lost and time.monotonic() < deadline:
                time.sleep(0.05)
            assert handle.lost and "not renewed for 0.9s" in handle.lost_reason
    assert "release of repository repo-cut failed" in caplog.text  # released into an unreachable Redis: logged, not raised


def test_unreachable_redis_is_a_broker_error_not_contention(server, client) -> None:
    server.connected = False
    with (pytest.raises(BrokerUnavailableError, match="cannot reach Redis to lock repository repo-d"),
          redis_repo_lock(client, "repo-d", ttl=5, timeout=1)):
        pass
    assert BrokerUnavailableError("x").exit_code == 4


@pytest.mark.parametrize(("ttl", "every"), [(0, None), (-1, None), (1.0, 0), (1.0, 1.0), (1.0, 2.0)])
def test_lock_timings_are_checked(client, ttl: float, every: float | None) -> None:
    with pytest.raises(ValueError), redis_repo_lock(client, "repo-v", ttl=ttl, timeout=1, renew_every=every):
        pass


# --- the breakers -------------------------------------------------------------------------------

def test_failures_open_the_breaker_for_every_client_of_the_same_redis(server, client) -> None:
    cb = make_breaker(Dependency.VECTOR_STORE, client)
    calls: list[int] = []
    for attempt in range(5):  # default fail_max
        expected = DependencyUnavailableError if attempt == 4 else ConnectionError
        with pytest.raises(expected):
            call_through(cb, _fail, ConnectionError("store down"))
    with pytest.raises(DependencyUnavailableError, match="vector_store is unavailable.*tried again at"):
        call_through(cb, calls.append, 1)
    assert calls == []
    assert client.get("codeindex:vector_store:pybreaker:state") == b"open"
    # Another worker's breaker, on its own client of the same Redis, is open too...
    other = make_breaker(Dependency.VECTOR_STORE, fakeredis.FakeRedis(server=server))
    with pytest.raises(DependencyUnavailableError):
        call_through(other, calls.append, 1)
    assert calls == []
    # ... and another dependency has a breaker of its own.
    assert call_through(make_breaker(Dependency.EMBEDDER, client), len, "ok") == 2


def test_an_open_breaker_closes_after_a_successful_trial(client) -> None:
    store = _FlakyStore()
    cb = make_breaker(Dependency.VECTOR_STORE, client, fail_max=2, reset_timeout=1)
    guarded_store = GuardedVectorStore(store, lambda: cb)
    store.down = True
    with pytest.raises(StoreError) as first:
        guarded_store.count()
    assert type(first.value) is StoreError
    with pytest.raises(DependencyUnavailableError):
        guarded_store.count()
    opened = time.monotonic()
    with pytest.raises(DependencyUnavailableError):
        guarded_store.count()
    assert store.calls == 2  # the open breaker did not call the store

    store.down = False
    time.sleep(max(0.0, 1.05 - (time.monotonic() - opened)))
    assert guarded_store.count() == 7
    assert cb.current_state == pybreaker.STATE_CLOSED and cb.fail_counter == 0
    assert client.get("codeindex:vector_store:pybreaker:state") == b"closed"


def test_a_store_down_at_ensure_collection_opens_the_breaker_and_its_successes_do_not_reset_it(client) -> None:
    """ensure_collection reads the store: with the store down it is the call that fails, so its
    failures count (the breaker opens, then it fails without calling the store); a working
    ensure_collection between failing upserts (a store refusing writes) does not reset the count."""
    store = _FlakyStore(down=True)
    cb = make_breaker(Dependency.VECTOR_STORE, client, fail_max=2, reset_timeout=60)
    guarded_store = GuardedVectorStore(store, lambda: cb)
    with pytest.raises(StoreError) as first:
        guarded_store.ensure_collection(4)
    assert type(first.value) is StoreError and cb.fail_counter == 1
    with pytest.raises(DependencyUnavailableError):
        guarded_store.ensure_collection(4)
    with pytest.raises(DependencyUnavailableError):
        guarded_store.ensure_collection(4)
    assert store.ensured == 2  # the open breaker did not call the store
    cb.reset_timeout = 0.5  # once the reset timeout has passed, the next call is the trial
    time.sleep(0.6)
    store.down = False
    guarded_store.ensure_collection(4)
    assert store.ensured == 3
    writes_refused = _FlakyStore(down=False)
    cb = make_breaker(Dependency.VECTOR_STORE, fakeredis.FakeRedis(), fail_max=2, reset_timeout=60)
    guarded_store = GuardedVectorStore(writes_refused, lambda: cb)
    for _ in range(2):
        guarded_store.ensure_collection(4)
        with pytest.raises((StoreError, DependencyUnavailableError)):
            guarded_store.upsert([_vector_object(0)])
    assert cb.current_state == pybreaker.STATE_OPEN


@pytest.mark.parametrize("answer", [
    StaleFenceError("older fence"),
    MassDeleteError.for_counts(9, 10, 0.5),
    ChangeListError("bad change list"),
])
def test_answers_do_not_open_the_breaker(client, answer: Exception) -> None:
    cb = make_breaker(Dependency.VECTOR_STORE, client)
    for _ in range(7):
        with pytest.raises(type(answer)):
            call_through(cb, _fail, answer)
    assert cb.current_state == pybreaker.STATE_CLOSED and cb.fail_counter == 0


def test_in_memory_breaker_for_the_embedded_mode(client) -> None:
    store = _FlakyStore(down=True)
    cb = make_breaker(Dependency.VECTOR_STORE, None, fail_max=1, reset_timeout=60)
    guarded_store = GuardedVectorStore(store, lambda: cb)
    for _ in range(2):
        with pytest.raises(DependencyUnavailableError, match="vector_store"):
            guarded_store.count()
    assert store.calls == 1
    assert client.keys("codeindex:*") == []


def test_setting_up_a_breaker_on_an_unreachable_redis_raises(server, client) -> None:
    server.connected = False
    with pytest.raises(redis.RedisError):
        make_breaker(Dependency.VECTOR_STORE, client)


def test_guarded_vector_store_passes_through_to_a_real_store(tmp_path: Path, client) -> None:
    from indexing.lance_store import LanceDBStore

    cb = make_breaker(Dependency.VECTOR_STORE, client)
    store = GuardedVectorStore(LanceDBStore(tmp_path / "lancedb", "chunks"), lambda: cb)
    store.ensure_collection(4)
    objects = [_vector_object(i) for i in range(3)]
    assert store.upsert(objects) == 3
    assert store.count() == 3 and store.count("repo") == 3
    assert store.chunk_indexes("repo", ["a.py"]) == {"a.py": [0, 1, 2]}
    assert store.search(objects[1].vector, k=1)[0].id == objects[1].id
    assert [row["id"] for row in store.export()] == sorted(obj.id for obj in objects)
    partial = store.export()
    next(partial)
    partial.close()  # a reader that stops early is not a failure of the store
    store.delete([objects[0].id], fence=1)
    assert store.count() == 2
    assert cb.current_state == pybreaker.STATE_CLOSED and cb.fail_counter == 0


def test_guarded_embedder_opens_the_embedder_breaker(client) -> None:
    from indexing.embedders import HashingEmbedder

    class FlakyAPI(HashingEmbedder):
        calls = 0
        down = True

        def embed(self, texts):
            FlakyAPI.calls += 1
            if FlakyAPI.down:
                raise ConnectionError("embedding API unreachable")
            return super().embed(texts)

    cb = make_breaker(Dependency.EMBEDDER, client, fail_max=2, reset_timeout=1.0)
    guarded_model = GuardedEmbedder(FlakyAPI(dimension=16), lambda: cb)
    assert (guarded_model.model_id, guarded_model.dimension) == ("feature-hashing-v1-16", 16)
    with pytest.raises(ConnectionError):
        guarded_model.embed(["a"])
    with pytest.raises(DependencyUnavailableError, match="embedder"):
        guarded_model.embed(["a"])  # the second failure opens it
    with pytest.raises(DependencyUnavailableError):
        guarded_model.embed(["a"])  # open: the API is not called
    assert FlakyAPI.calls == 2
    assert client.get("codeindex:embedder:pybreaker:state") == b"open"
    FlakyAPI.down = False
    time.sleep(1.2)
    assert guarded_model.embed(["def retry(): pass"]).shape == (1, 16)
    assert guarded_model.count_tokens(["a b"])[0] > 0  # the local tokenizer, outside the breaker


class _FlakyStore:
    """A stand-in for a vector store whose ``count`` and ``ensure_collection`` fail while
    ``down``, and which refuses every upsert."""

    def __init__(self, down: bool = False) -> None:
        self.down, self.calls, self.ensured = down, 0, 0

    def ensure_collection(self, dimension: int) -> None:
        """Reads the store: fails while ``down``."""
        self.ensured += 1
        if self.down:
            raise StoreError("vector store unreachable")

    def upsert(self, objects) -> int:
        """Always refused (a store that reads but refuses writes)."""
        raise StoreError("vector store refuses writes")

    def count(self, repo: str | None = None) -> int:
        self.calls += 1
        if self.down:
            raise StoreError("vector store unreachable")
        return 7


def _vector_object(i: int) -> VectorObject:
    vector = np.zeros(4, dtype=np.float32)
    vector[i] = 1.0
    return VectorObject(id=f"id-{i}", repo="repo", path="a.py", chunk_index=i, start_line=i + 1,
                        end_line=i + 1, content=f"line {i}", language="python", content_sha256=f"sha{i}",
                        commit="c0", indexed_at="2024-01-01T00:00:00Z", embedding_model="test", fence=1,
                        vector=vector)
