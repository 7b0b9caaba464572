"""The embedding cache: vectors keyed by (model id, SHA-256 of the chunk text).

A chunk whose text was embedded before, anywhere in any repository, is not embedded again:
this is what makes editing one function of a large file cost one chunk of model time.
The embedded default keeps it in SQLite next to the index.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from indexing.errors import StoreError

_SQL_BATCH = 500
#: Keys read at a time when the cache is walked (``keys``).
_KEY_PAGE = 5000


class EmbeddingCache(Protocol):
    """Lookup and storage of vectors by (model id, text hash)."""

    def get_many(self, model_id: str, text_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Return the cached vectors among ``text_hashes`` (missing ones are absent)."""
        ...

    def put_many(self, model_id: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Store vectors by text hash; storing a hash again keeps the first vector."""
        ...

    def size_bytes(self) -> int:
        """Bytes the cache takes in its storage (``codeindex_cache_size_bytes``)."""
        ...

    def keys(self) -> Iterator[tuple[str, str]]:
        """Every key, ``(model id, text hash)``, in key order (read in pages: a writer may add
        keys meanwhile; those after the page being read are seen)."""
        ...

    def delete_many(self, model_id: str, text_hashes: Sequence[str]) -> int:
        """Delete the entries of ``text_hashes`` under ``model_id``; return how many there were."""
        ...


class SQLiteEmbeddingCache:
    """The embedding cache in one SQLite file (WAL mode, one connection per thread).

    Raises :class:`StoreError` when the file cannot be opened, read or written."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()
        try:
            conn = self._conn()
            # A rowid table with a unique index, not WITHOUT ROWID: rows of 1.5 KB are far above
            # the size the SQLite docs recommend for WITHOUT ROWID tables ("WITHOUT ROWID
            # Optimization", section 4), and inserts slowed down as the cache grew.
            conn.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (model TEXT NOT NULL, text_sha256 TEXT NOT NULL, "
                "vector BLOB NOT NULL)"
            )
            conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS embeddings_key ON embeddings (model, text_sha256)")
            conn.commit()
        except (sqlite3.Error, OSError) as exc:  # a directory in its place, a read-only or full disk
            raise StoreError(f"embedding cache {self.path}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get_many(self, model_id: str, text_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(text_hashes))
        try:
            for start in range(0, len(unique), _SQL_BATCH):
                part = unique[start : start + _SQL_BATCH]
                marks = ",".join("?" * len(part))
                rows = self._conn().execute(
                    f"SELECT text_sha256, vector FROM embeddings WHERE model = ? AND text_sha256 IN ({marks})",
                    [model_id, *part],
                )
                for text_hash, blob in rows:
                    found[text_hash] = np.frombuffer(blob, dtype=np.float32)
        except sqlite3.Error as exc:
            raise StoreError(f"embedding cache {self.path}: {exc}") from exc
        return found

    def put_many(self, model_id: str, vectors: Mapping[str, np.ndarray]) -> None:
        rows: Iterable[tuple[str, str, bytes]] = (
            (model_id, h, np.asarray(v, dtype=np.float32).tobytes()) for h, v in vectors.items()
        )
        try:
            conn = self._conn()
            conn.executemany("INSERT OR IGNORE INTO embeddings VALUES (?, ?, ?)", rows)
            conn.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"embedding cache {self.path}: {exc}") from exc

    def keys(self) -> Iterator[tuple[str, str]]:
        after: tuple[str, str] = ("", "")
        while True:
            try:
                page = self._conn().execute(
                    "SELECT model, text_sha256 FROM embeddings WHERE (model, text_sha256) > (?, ?) "
                    "ORDER BY model, text_sha256 LIMIT ?", [*after, _KEY_PAGE]).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"embedding cache {self.path}: {exc}") from exc
            yield from page
            if len(page) < _KEY_PAGE:
                return
            after = page[-1]

    def delete_many(self, model_id: str, text_hashes: Sequence[str]) -> int:
        deleted = 0
        unique = list(dict.fromkeys(text_hashes))
        try:
            conn = self._conn()
            for start in range(0, len(unique), _SQL_BATCH):
                part = unique[start : start + _SQL_BATCH]
                deleted += conn.execute(
                    f"DELETE FROM embeddings WHERE model = ? AND text_sha256 IN ({','.join('?' * len(part))})",
                    [model_id, *part]).rowcount
            conn.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"embedding cache {self.path}: {exc}") from exc
        return deleted

    def size_bytes(self) -> int:
        """The SQLite file with its write-ahead log, in bytes (0 for a file not there)."""
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                total += path.stat().st_size
            except OSError:
                pass
        return total
