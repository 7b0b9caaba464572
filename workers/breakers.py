"""Circuit breakers around the vector store, the embedder and object storage (pybreaker).

In the fleet a breaker's state lives in Redis, one namespace per dependency, so every worker
sees a breaker another one opened; the embedded mode keeps it in memory. While a breaker is
open, calls fail fast with :class:`DependencyUnavailableError` and tasks retry later.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import numpy as np
import pybreaker
import redis

from indexing.errors import (
    DependencyUnavailableError,
    LockTimeoutError,
    ObjectNotFoundError,
    RefusedError,
    StaleFenceError,
    StoreError,
    UsageError,
)
from indexing.store import SearchFilter, SearchHit, StoredChunk, VectorObject, VectorStore
from indexing.store import Compaction

log = logging.getLogger("codeindex.breakers")

T = TypeVar("T")

# Answers, not outages: the dependency worked and said no (an object that is not there among
# them), or was not reached for a reason of ours (a table's write lock held too long by another
# writer). GeneratorExit is a consumer that stopped reading a guarded iterator early, which says
# nothing about the dependency.
EXCLUDED = (RefusedError, UsageError, StaleFenceError, ObjectNotFoundError, LockTimeoutError, GeneratorExit)

#: Each guarded call costs a few Redis round trips; a short timeout (seconds) keeps an
#: unreachable Redis from stalling calls to a healthy dependency (pybreaker then assumes the
#: breaker closed). The runtime gives breakers a client with this timeout.
BREAKER_REDIS_TIMEOUT = 1.0


class Dependency(StrEnum):
    """An external service a worker calls through a circuit breaker."""

    VECTOR_STORE = "vector_store"
    EMBEDDER = "embedder"
    OBJECT_STORAGE = "object_storage"


class _LogStateChanges(pybreaker.CircuitBreakerListener):
    def state_change(self, cb, old_state, new_state) -> None:
        log.warning("circuit breaker dependency=%s state=%s previous=%s", cb.name, new_state.name,
                    old_state.name if old_state else None)


def make_breaker(dependency: Dependency, redis_client: redis.Redis | None, *, fail_max: int = 5,
                 reset_timeout: float = 30.0) -> pybreaker.CircuitBreaker:
    """The breaker of ``dependency``: opens after ``fail_max`` failures in a row, tries again
    ``reset_timeout`` seconds after opening.

    With ``redis_client`` its state is in Redis under ``codeindex:<dependency>``, shared by every
    process of the fleet; without, in this process's memory. The caller keeps it
    (``workers.runtime`` keeps one per dependency). Raises ``redis.RedisError`` when Redis
    cannot be reached to set it up: pybreaker's storage constructor writes its initial state.
    """
    storage = None
    if redis_client is not None:
        storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, redis_client,
                                                namespace=f"codeindex:{dependency}")
    return pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_timeout, exclude=EXCLUDED,
                                    listeners=[_LogStateChanges()], state_storage=storage,
                                    name=str(dependency))


def call_through(cb: pybreaker.CircuitBreaker, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``func`` through ``cb``, turning an open breaker into :class:`DependencyUnavailableError`.

    A generator result is consumed through the breaker too: pybreaker counts its outcome when
    it ends, so the open breaker it may report then is translated as well.
    """
    try:
        result = cb.call(func, *args, **kwargs)
    except pybreaker.CircuitBreakerError as exc:
        raise unavailable(cb) from exc
    if isinstance(result, types.GeneratorType):
        return _translated(cb, result)  # type: ignore[return-value]
    return result


def _translated(cb: pybreaker.CircuitBreaker, items: Iterator) -> Iterator:
    try:
        yield from items
    except pybreaker.CircuitBreakerError as exc:
        raise unavailable(cb) from exc


def unavailable(cb: pybreaker.CircuitBreaker) -> DependencyUnavailableError:
    """The error for the open breaker ``cb``, saying when its dependency will be tried again."""
    opened_at = cb._state_storage.opened_at  # pybreaker keeps no public accessor for it
    wait: float | None = None
    if opened_at is None:
        when = "shortly"
    else:
        retry_at = opened_at + timedelta(seconds=cb.reset_timeout)
        wait = max(0.0, (retry_at - datetime.now(UTC)).total_seconds())
        when = f"at {retry_at:%H:%M:%S} UTC (in {wait:.0f}s)"
    return DependencyUnavailableError(
        f"dependency {cb.name} is unavailable: its circuit breaker is open after repeated "
        f"failures; it will be tried again {when}, and the task retries later",
        retry_after=wait,
    )


def _open_for_now(cb: pybreaker.CircuitBreaker) -> bool:
    """True while ``cb`` is open and its reset timeout has not passed (after it, pybreaker lets
    the next call through as the half-open trial)."""
    if cb.current_state != pybreaker.STATE_OPEN:
        return False
    opened_at = cb._state_storage.opened_at  # pybreaker keeps no public accessor for it
    return opened_at is not None and datetime.now(UTC) < opened_at + timedelta(seconds=cb.reset_timeout)


BreakerSource = Callable[[], pybreaker.CircuitBreaker]


class GuardedVectorStore:
    """A :class:`VectorStore` whose every call goes through the ``vector_store`` breaker.

    ``breaker`` gives the breaker to call through, asked on every call (the runtime's, which
    is set up again when Redis could not be reached before). Each protocol method is wrapped
    explicitly (no ``__getattr__``), so a method added to the protocol fails type checking here
    until it is guarded too. ``ensure_collection`` counts failures only (see there).
    """

    def __init__(self, store: VectorStore, breaker: BreakerSource) -> None:
        self._store = store
        self._breaker = breaker

    def ensure_collection(self, dimension: int) -> None:
        """Through the breaker for its failures only: it reads the store (the latest version
        of the table, which may have been dropped), so with the store down it is the call that
        fails, and uncounted it would keep the breaker closed. Its successes are not counted:
        a read that works would reset the failure count between the failing upserts that
        follow it (a store refusing writes), and the breaker would never open. While the
        breaker is open it fails at once, without touching the store."""
        breaker = self._breaker()
        if _open_for_now(breaker):
            raise unavailable(breaker)
        try:
            self._store.ensure_collection(dimension)
        except StoreError as exc:
            failure = exc

            def fail() -> None:
                raise failure

            call_through(breaker, fail)  # counts it (excluded errors are not) and raises it, or the open breaker
            raise  # not reached

    def upsert(self, objects: Sequence[VectorObject]) -> int:
        return call_through(self._breaker(), self._store.upsert, objects)

    def delete(self, ids: Sequence[str], fence: int) -> None:
        call_through(self._breaker(), self._store.delete, ids, fence)

    def settle(self, *, final: bool = True) -> None:
        call_through(self._breaker(), self._store.settle, final=final)

    def chunk_indexes(self, repo: str, paths: Sequence[str]) -> dict[str, list[int]]:
        return call_through(self._breaker(), self._store.chunk_indexes, repo, paths)

    def inventory(self, repo: str) -> Iterator[StoredChunk]:
        return call_through(self._breaker(), self._store.inventory, repo)

    def drop(self) -> None:
        call_through(self._breaker(), self._store.drop)

    def objects(self, repo: str) -> Iterator[VectorObject]:
        return iter(call_through(self._breaker(), lambda: list(self._store.objects(repo))))

    def compact(self, keep_seconds: float, *, dry_run: bool = False) -> Compaction:
        return call_through(self._breaker(), self._store.compact, keep_seconds, dry_run=dry_run)

    def search(self, vector: np.ndarray, k: int, filters: SearchFilter | None = None) -> list[SearchHit]:
        return call_through(self._breaker(), self._store.search, vector, k, filters)

    def lexical_search(self, terms: str, k: int, filters: SearchFilter | None = None) -> list[SearchHit]:
        return call_through(self._breaker(), self._store.lexical_search, terms, k, filters)

    def count(self, repo: str | None = None) -> int:
        return call_through(self._breaker(), self._store.count, repo)

    def export(self, with_vectors: bool = False) -> Iterator[dict]:
        return call_through(self._breaker(), self._store.export, with_vectors)


class GuardedEmbedder:
    """An :class:`~indexing.embedders.Embedder` whose ``embed`` goes through the ``embedder``
    breaker (the embedding API of DESIGN.md; the local model fails rarely, a remote API often).

    ``count_tokens`` stays outside: it is the local tokenizer, not the API. The identity of the
    model (``model_id``, ``dimension``, ``distance``, ``max_tokens``) is the wrapped one's.
    """

    def __init__(self, embedder, breaker: BreakerSource) -> None:
        self._embedder = embedder
        self.model_id = embedder.model_id
        self.dimension = embedder.dimension
        self.distance = embedder.distance
        self.max_tokens = embedder.max_tokens
        self._breaker = breaker

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self._embedder.count_tokens(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return call_through(self._breaker(), self._embedder.embed, texts)
