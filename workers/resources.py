"""The one place where configuration picks the implementations: state store (SQLite or
PostgreSQL), shard registry, repository locks (file or Redis), vector store (behind a circuit
breaker in a fleet), embedding cache and embedder. Objects are made once per process and
configuration; a forked worker child makes its own connections (see :func:`reset`).
"""

from __future__ import annotations

import os
import threading
from contextlib import AbstractContextManager
from pathlib import Path

from config.settings import Settings
from indexing.embed_cache import EmbeddingCache, SQLiteEmbeddingCache
from indexing.embedders import Embedder, get_embedder
from indexing.errors import UsageError
from indexing.scanner import FileFilter
from indexing.state import SQLiteStateStore, StateStore
from indexing.store import VectorStore
from workers import locks

_lock = threading.Lock()
_cache: dict[tuple, object] = {}


def index_home(settings: Settings) -> Path:
    """The index directory (``CODEINDEX_HOME``); the CLI always sets it."""
    if settings.home is None:
        raise ValueError("settings.home is not set: the CLI sets it to <repository>/.codeindex")
    return Path(settings.home)


def _once(key: tuple, make):
    key = (os.getpid(), *key)  # a forked child never shares its parent's connections
    with _lock:
        if key not in _cache:
            _cache[key] = make()
        return _cache[key]


def state_store(settings: Settings, readonly: bool = False) -> StateStore:
    """The state store: PostgreSQL at ``CODEINDEX_STATE_URL`` when set, else the SQLite file
    ``state.sqlite`` in the index home.

    A read-only SQLite store is never cached: it must see the file if a later writer creates it.
    """
    if settings.state_url:
        from indexing.pg_state import PostgresStateStore

        return _once(("pg-state", settings.state_url, readonly),
                     lambda: PostgresStateStore(settings.state_url, readonly=readonly))
    path = index_home(settings) / "state.sqlite"
    if readonly:
        return SQLiteStateStore(path, readonly=True)
    return _once(("state", str(path)), lambda: SQLiteStateStore(path))


def registry(settings: Settings):
    """The shard registry (:class:`workers.registry.ShardRegistry`) in PostgreSQL.

    Raises :class:`UsageError` in the embedded mode, which has one shard and no registry.
    """
    if not settings.state_url:
        raise UsageError("the shard registry lives in PostgreSQL: set CODEINDEX_STATE_URL=postgresql://... "
                         "(and a Redis broker) to run a fleet")
    from workers.registry import ShardRegistry

    return _once(("registry", settings.state_url), lambda: ShardRegistry(settings.state_url))


def redis(settings: Settings):
    """The Redis client for locks and breaker state, or None in the embedded mode."""
    url = settings.lock_redis_url
    if url is None:
        return None
    from workers.redis_client import redis_client

    return redis_client(url)


def repo_lock(settings: Settings, repo_id: str) -> AbstractContextManager:
    """The lock that serialises planning and commits of ``repo_id``: a Redis lock (renewed while
    held) in a fleet, a file lock under the index home otherwise.
    Raises LockTimeoutError after ``settings.lock_timeout`` seconds of waiting."""
    client = redis(settings)
    if client is None:
        return locks.repo_lock(index_home(settings), repo_id, settings.lock_timeout)
    return locks.redis_repo_lock(client, repo_id, ttl=settings.lock_ttl, timeout=settings.lock_timeout)


def vector_store(settings: Settings, collection: str) -> VectorStore:
    """The vector store: LanceDB at ``CODEINDEX_STORE_URI`` (default ``<home>/lancedb``), one
    table per collection; in a fleet behind the shared ``vector_store`` circuit breaker."""
    from indexing.lance_store import LanceDBStore

    uri = settings.store_uri or str(index_home(settings) / "lancedb")
    store = _once(("lancedb", uri, collection), lambda: LanceDBStore(uri, collection))
    url = settings.lock_redis_url
    if url is None:
        return store
    from workers.breakers import GuardedVectorStore

    return _once(("guarded-lancedb", uri, collection, url, settings.breaker_fail_max, settings.breaker_reset_timeout),
                 lambda: GuardedVectorStore(store, url, fail_max=settings.breaker_fail_max,
                                            reset_timeout=settings.breaker_reset_timeout))


def embedding_cache(settings: Settings) -> EmbeddingCache:
    """The embedding cache: SQLite file ``embeddings.sqlite`` in the index home."""
    path = index_home(settings) / "embeddings.sqlite"
    return _once(("cache", str(path)), lambda: SQLiteEmbeddingCache(path))


def embedder(settings: Settings) -> Embedder:
    """The configured embedder (``CODEINDEX_EMBEDDER``), one per process; in a fleet behind the
    shared ``embedder`` circuit breaker."""
    model = get_embedder(settings.embedder, hashing_dimension=settings.hashing_dimension,
                         batch_size=settings.model_batch_size)
    url = settings.lock_redis_url
    if url is None:
        return model
    from workers.breakers import GuardedEmbedder

    return _once(("guarded-embedder", model.model_id, url, settings.breaker_fail_max, settings.breaker_reset_timeout),
                 lambda: GuardedEmbedder(model, url, fail_max=settings.breaker_fail_max,
                                         reset_timeout=settings.breaker_reset_timeout))


def file_filter(settings: Settings, root: Path) -> FileFilter:
    """The include/exclude/.gitignore filter for repository ``root``; the index home is excluded."""
    extra = []
    home = index_home(settings)
    try:
        rel = home.resolve().relative_to(Path(root).resolve())
        extra.append(rel.parts[0])
    except ValueError:
        pass
    return FileFilter(root, settings.include, settings.exclude, settings.use_gitignore, extra_excluded_dirs=extra)


def reset() -> None:
    """Forget every cached object (tests, and the CLI after changing settings)."""
    with _lock:
        _cache.clear()
