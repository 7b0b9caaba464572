"""The Redis repository lock and the shared circuit breakers, against the private Redis of the
test session: exclusion across threads and processes, renewal, loss, restarts; breakers that
open, are seen open by another process, and close again."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from pathlib import Path

import numpy as np
import pybreaker
import pytest

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
from workers.breakers import Dependency, GuardedVectorStore, breaker, guarded
from workers.locks import redis_lock_key, redis_repo_lock
from workers.redis_client import redis_client

# Workers are forked (Celery's prefork pool): a child must not reuse its parent's client. The
# breaker's second process is spawned instead, a process that shares nothing with this one.
FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")


# --- helpers run in child processes (module level, so that spawn can import them) ---

def _hold_lock_in_child(url: str, repo_id: str, hold: float) -> None:
    """Take the lock, and record how many holders were inside the critical section meanwhile."""
    client = redis_client(url)
    with redis_repo_lock(client, repo_id, ttl=5, timeout=10):
        client.rpush("seen", client.incr("inside"))
        time.sleep(hold)
        client.decr("inside")


def _guarded_call_in_child(url: str) -> tuple[str, str, int]:
    """Call through the vector store breaker; return the outcome and the calls that got through."""
    calls: list[int] = []
    try:
        guarded(Dependency.VECTOR_STORE, url, calls.append, 1)
    except DependencyUnavailableError as exc:
        return "unavailable", str(exc), len(calls)
    return "called", "", len(calls)


def _fail(exc: BaseException):
    raise exc


# --- the lock ---------------------------------------------------------------------------------

def test_lock_excludes_other_threads(redis_url: str) -> None:
    client = redis_client(redis_url)
    inside, most = [0], [0]
    counter = threading.Lock()

    def worker() -> None:
        for _ in range(2):
            with redis_repo_lock(client, "repo-t", ttl=5, timeout=10):
                with counter:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.15)
                with counter:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert most[0] == 1 and inside[0] == 0
    assert client.get(redis_lock_key("repo-t")) is None


def test_lock_excludes_other_processes(redis_url: str) -> None:
    client = redis_client(redis_url)
    client.ping()  # the parent's pooled connection exists when the children fork
    procs = [FORK.Process(target=_hold_lock_in_child, args=(redis_url, "repo-p", 0.3)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=30)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    assert client.lrange("seen", 0, -1) == [b"1", b"1", b"1"]


def test_lock_wait_times_out_with_a_clear_error(redis_url: str) -> None:
    client = redis_client(redis_url)
    with redis_repo_lock(client, "repo-busy", ttl=5, timeout=1):
        started = time.monotonic()
        with (pytest.raises(LockTimeoutError, match="repository repo-busy is locked"),
              redis_repo_lock(client, "repo-busy", ttl=5, timeout=0.3)):
            pytest.fail("took a lock that another holder has")
        assert 0.25 <= time.monotonic() - started < 2


def test_renewal_keeps_the_lock_past_its_ttl(redis_url: str) -> None:
    client = redis_client(redis_url)
    with redis_repo_lock(client, "repo-long", ttl=1, timeout=1) as handle:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with pytest.raises(LockTimeoutError), redis_repo_lock(client, "repo-long", ttl=1, timeout=0):
                pass
            time.sleep(0.25)
        assert handle.renewals >= 6 and not handle.lost
    assert client.get(redis_lock_key("repo-long")) is None


def test_a_stalled_holder_loses_the_lock_and_cannot_release_the_next_one(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    client = redis_client(redis_url)
    key = redis_lock_key("repo-stall")
    first_cm = redis_repo_lock(client, "repo-stall", ttl=0.6, timeout=1)
    first = first_cm.__enter__()
    first.pause_renewal()
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


def test_the_lock_is_released_when_the_block_raises(redis_url: str) -> None:
    client = redis_client(redis_url)
    with pytest.raises(RuntimeError, match="boom"), redis_repo_lock(client, "repo-x", ttl=5, timeout=1):
        raise RuntimeError("boom")
    assert client.get(redis_lock_key("repo-x")) is None
    with redis_repo_lock(client, "repo-x", ttl=5, timeout=0):
        pass


def test_lock_works_again_after_redis_restarts_while_idle(redis_url: str, redis_server) -> None:
    client = redis_client(redis_url)
    with redis_repo_lock(client, "repo-r", ttl=5, timeout=1):
        pass
    redis_server.restart()
    with redis_repo_lock(client, "repo-r", ttl=5, timeout=1) as handle:
        assert client.get(redis_lock_key("repo-r")) is not None
    assert not handle.lost


def test_a_holder_sees_the_lock_lost_when_redis_restarts(redis_url: str, redis_server) -> None:
    client = redis_client(redis_url)
    with redis_repo_lock(client, "repo-rr", ttl=1, timeout=1) as handle:
        redis_server.restart()  # no persistence: the lock key is gone
        deadline = time.monotonic() + 3
        while not handle.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handle.lost and "renewal refused" in handle.lost_reason


def test_unreachable_redis_is_a_broker_error_not_contention(redis_url: str, redis_server) -> None:
    client = redis_client(redis_url)
    redis_server.stop()
    try:
        with (pytest.raises(BrokerUnavailableError, match="cannot reach Redis to lock repository repo-d"),
              redis_repo_lock(client, "repo-d", ttl=5, timeout=1)):
            pass
    finally:
        redis_server.start()
    assert BrokerUnavailableError("x").exit_code == 4


# --- the breakers -------------------------------------------------------------------------------

def test_failures_open_the_shared_breaker_for_every_process(redis_url: str) -> None:
    calls: list[int] = []
    for attempt in range(5):  # default fail_max
        expected = DependencyUnavailableError if attempt == 4 else ConnectionError
        with pytest.raises(expected):
            guarded(Dependency.VECTOR_STORE, redis_url, _fail, ConnectionError("store down"))
    with pytest.raises(DependencyUnavailableError, match="vector_store is unavailable.*tried again at"):
        guarded(Dependency.VECTOR_STORE, redis_url, calls.append, 1)
    assert calls == []
    assert redis_client(redis_url).get("codeindex:vector_store:pybreaker:state") == b"open"

    with SPAWN.Pool(1) as pool:
        outcome, message, got_through = pool.apply(_guarded_call_in_child, (redis_url,))
    assert (outcome, got_through) == ("unavailable", 0)
    assert "vector_store" in message
    # Other dependencies have breakers of their own.
    assert guarded(Dependency.EMBEDDER, redis_url, len, "ok") == 2


def test_an_open_breaker_closes_after_a_successful_trial(redis_url: str) -> None:
    store = _FlakyStore()
    guarded_store = GuardedVectorStore(store, redis_url, fail_max=2, reset_timeout=2)
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
    time.sleep(max(0.0, 2.05 - (time.monotonic() - opened)))
    assert guarded_store.count() == 7
    cb = breaker(Dependency.VECTOR_STORE, redis_url, fail_max=2, reset_timeout=2)
    assert cb.current_state == pybreaker.STATE_CLOSED and cb.fail_counter == 0


@pytest.mark.parametrize("answer", [
    StaleFenceError("older fence"),
    MassDeleteError.for_counts(9, 10, 0.5),
    ChangeListError("bad change list"),
])
def test_answers_do_not_open_the_breaker(redis_url: str, answer: Exception) -> None:
    for _ in range(7):
        with pytest.raises(type(answer)):
            guarded(Dependency.OBJECT_STORE, redis_url, _fail, answer)
    cb = breaker(Dependency.OBJECT_STORE, redis_url)
    assert cb.current_state == pybreaker.STATE_CLOSED and cb.fail_counter == 0


def test_in_memory_breaker_for_the_embedded_mode(redis_url: str) -> None:
    store = _FlakyStore(down=True)
    guarded_store = GuardedVectorStore(store, None, fail_max=1, reset_timeout=60)
    for _ in range(2):
        with pytest.raises(DependencyUnavailableError, match="vector_store"):
            guarded_store.count()
    assert store.calls == 1
    assert redis_client(redis_url).keys("codeindex:*") == []


def test_guarded_vector_store_passes_through_to_a_real_store(tmp_path: Path, redis_url: str) -> None:
    from indexing.lance_store import LanceDBStore

    store = GuardedVectorStore(LanceDBStore(tmp_path / "lancedb", "chunks"), redis_url)
    store.ensure_collection(4)
    objects = [_vector_object(i) for i in range(3)]
    assert store.upsert(objects) == 3
    assert store.count() == 3 and store.count("repo") == 3
    assert set(store.list_ids("repo")) == {obj.id for obj in objects}
    assert store.chunk_indexes("repo", ["a.py"]) == {"a.py": [0, 1, 2]}
    assert store.search(objects[1].vector, k=1)[0].id == objects[1].id
    assert [row["id"] for row in store.export()] == sorted(obj.id for obj in objects)
    partial = store.export()
    next(partial)
    partial.close()  # a reader that stops early is not a failure of the store
    store.delete([objects[0].id], fence=1)
    assert store.count() == 2
    cb = breaker(Dependency.VECTOR_STORE, redis_url)
    assert cb.current_state == pybreaker.STATE_CLOSED and cb.fail_counter == 0


class _FlakyStore:
    """A stand-in for a vector store whose ``count`` fails while ``down``."""

    def __init__(self, down: bool = False) -> None:
        self.down, self.calls = down, 0

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


def test_guarded_embedder_opens_the_embedder_breaker(redis_url: str) -> None:
    from indexing.embedders import HashingEmbedder
    from indexing.errors import DependencyUnavailableError as Unavailable
    from workers.breakers import GuardedEmbedder

    class FlakyAPI(HashingEmbedder):
        calls = 0
        down = True

        def embed(self, texts):
            FlakyAPI.calls += 1
            if FlakyAPI.down:
                raise ConnectionError("embedding API unreachable")
            return super().embed(texts)

    guarded_model = GuardedEmbedder(FlakyAPI(dimension=16), redis_url, fail_max=2, reset_timeout=1.0)
    assert (guarded_model.model_id, guarded_model.dimension) == ("feature-hashing-v1-16", 16)
    with pytest.raises(ConnectionError):
        guarded_model.embed(["a"])
    with pytest.raises(Unavailable, match="embedder"):
        guarded_model.embed(["a"])  # the second failure opens it
    with pytest.raises(Unavailable):
        guarded_model.embed(["a"])  # open: the API is not called
    assert FlakyAPI.calls == 2
    assert redis_client(redis_url).get("codeindex:embedder:pybreaker:state") == b"open"
    FlakyAPI.down = False
    time.sleep(1.2)
    assert guarded_model.embed(["def retry(): pass"]).shape == (1, 16)
    assert guarded_model.count_tokens(["a b"])[0] > 0  # the local tokenizer, outside the breaker
