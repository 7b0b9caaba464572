"""The Redis repository lock and the shared circuit breakers against the real Redis, where a
real server matters: exclusion across forked processes, a breaker seen open by another
process, restarts of the server, and the runtime's breaker when Redis is down. Their logic
is unit-tested on fakeredis (tests/unit/test_locks_and_breakers.py)."""

from __future__ import annotations

import multiprocessing
import time

import pybreaker
import pytest

from indexing.errors import DependencyUnavailableError
from workers.breakers import Dependency, call_through, make_breaker
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
        call_through(make_breaker(Dependency.VECTOR_STORE, redis_client(url)), calls.append, 1)
    except DependencyUnavailableError as exc:
        return "unavailable", str(exc), len(calls)
    return "called", "", len(calls)


def _fail(exc: BaseException):
    raise exc


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


def test_an_open_breaker_is_seen_by_another_process(redis_url: str) -> None:
    cb = make_breaker(Dependency.VECTOR_STORE, redis_client(redis_url))
    for _ in range(5):  # default fail_max
        with pytest.raises((ConnectionError, DependencyUnavailableError)):
            call_through(cb, _fail, ConnectionError("store down"))
    assert redis_client(redis_url).get("codeindex:vector_store:pybreaker:state") == b"open"
    with SPAWN.Pool(1) as pool:
        outcome, message, got_through = pool.apply(_guarded_call_in_child, (redis_url,))
    assert (outcome, got_through) == ("unavailable", 0)
    assert "vector_store" in message


def test_the_runtime_uses_a_closed_breaker_while_redis_is_down_and_redis_again_after(
        redis_url: str, redis_server, tmp_path) -> None:
    from config.settings import configure
    from workers import runtime

    configure(home=tmp_path / "home", redis_url=redis_url, breaker_fail_max=1)
    runtime.reset()
    try:
        redis_server.stop()
        try:
            down = runtime.runtime().breaker(Dependency.VECTOR_STORE)
        finally:
            redis_server.start()
        assert down.current_state == pybreaker.STATE_CLOSED
        assert down._state_storage.__class__ is pybreaker.CircuitMemoryStorage
        with pytest.raises(DependencyUnavailableError):  # fail_max 1: this failure opens it
            call_through(runtime.runtime().breaker(Dependency.VECTOR_STORE), _fail, ConnectionError("down"))
        assert redis_client(redis_url).get("codeindex:vector_store:pybreaker:state") == b"open"
        assert runtime.runtime().breaker(Dependency.VECTOR_STORE) is runtime.runtime().breaker(Dependency.VECTOR_STORE)
    finally:
        configure()
        runtime.reset()



def test_a_task_held_back_by_an_open_breaker_retries_after_its_reset_timeout(redis_url: str, tmp_path) -> None:
    """A task that meets an open breaker publishes its retry, on a real Redis broker, with an
    ETA no sooner than the breaker's reset timeout: Celery's exponential backoff alone (0-2 s
    with full jitter on a first retry) brought it back while the breaker still failed it fast,
    spending its retries without the store ever being tried (the fleet's replay after an
    outage failed that way)."""
    import json
    from datetime import datetime

    import redis
    from celery.exceptions import Retry

    from config.kinds import TaskKind
    from config.settings import configure
    from workers import runtime
    from workers.app import apply_settings, codeindex_task

    settings = configure(home=tmp_path / "home", embedder="hashing", broker_url=redis_url)
    runtime.reset()
    apply_settings(settings)
    try:
        cb = make_breaker(Dependency.VECTOR_STORE, redis_client(redis_url), fail_max=1, reset_timeout=20)
        with pytest.raises((ConnectionError, DependencyUnavailableError)):
            call_through(cb, _fail, ConnectionError("store down"))

        @codeindex_task("codeindex.test.held_back", kind=TaskKind.EMBED)
        def held_back(self) -> None:
            call_through(cb, _fail, ConnectionError("not called: the breaker is open"))

        held_back.push_request(id="held-back", args=[], kwargs={}, retries=0, is_eager=False,
                               called_directly=False, delivery_info={"exchange": "", "routing_key": "retry-check"})
        try:
            with pytest.raises(Retry):
                held_back.run()  # the autoretry wrapper around the body, as a worker calls it
        finally:
            held_back.pop_request()
        published = time.time()
        message = json.loads(redis.Redis.from_url(redis_url, socket_timeout=5).lpop("retry-check"))
        assert message["headers"]["task"] == "codeindex.test.held_back" and message["headers"]["retries"] == 1
        eta = datetime.fromisoformat(message["headers"]["eta"]).timestamp()
        assert published + 17 < eta <= published + 20 + 2.5
    finally:
        runtime.reset()
        apply_settings(configure(home=tmp_path / "home", embedder="hashing"))
