"""The one place where configuration picks the implementations: state store, vector store,
embedding cache and embedder. Objects are made once per process and index home.
"""

from __future__ import annotations

import threading
from pathlib import Path

from config.settings import Settings
from indexing.embed_cache import EmbeddingCache, SQLiteEmbeddingCache
from indexing.embedders import Embedder, get_embedder
from indexing.scanner import FileFilter
from indexing.state import SQLiteStateStore, StateStore
from indexing.store import VectorStore

_lock = threading.Lock()
_cache: dict[tuple, object] = {}


def index_home(settings: Settings) -> Path:
    """The index directory (``CODEINDEX_HOME``); the CLI always sets it."""
    if settings.home is None:
        raise ValueError("settings.home is not set: the CLI sets it to <repository>/.codeindex")
    return Path(settings.home)


def _once(key: tuple, make):
    with _lock:
        if key not in _cache:
            _cache[key] = make()
        return _cache[key]


def state_store(settings: Settings, readonly: bool = False) -> StateStore:
    """The state store: SQLite file ``state.sqlite`` in the index home.

    A read-only store is never cached: it must see the file if a later writer creates it.
    """
    path = index_home(settings) / "state.sqlite"
    if readonly:
        return SQLiteStateStore(path, readonly=True)
    return _once(("state", str(path)), lambda: SQLiteStateStore(path))


def vector_store(settings: Settings, collection: str) -> VectorStore:
    """The vector store: LanceDB at ``CODEINDEX_STORE_URI`` (default ``<home>/lancedb``), one
    table per collection."""
    from indexing.lance_store import LanceDBStore

    uri = settings.store_uri or str(index_home(settings) / "lancedb")
    return _once(("lancedb", uri, collection), lambda: LanceDBStore(uri, collection))


def embedding_cache(settings: Settings) -> EmbeddingCache:
    """The embedding cache: SQLite file ``embeddings.sqlite`` in the index home."""
    path = index_home(settings) / "embeddings.sqlite"
    return _once(("cache", str(path)), lambda: SQLiteEmbeddingCache(path))


def embedder(settings: Settings) -> Embedder:
    """The configured embedder (``CODEINDEX_EMBEDDER``), one per process."""
    return get_embedder(settings.embedder, hashing_dimension=settings.hashing_dimension,
                        batch_size=settings.model_batch_size)


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
