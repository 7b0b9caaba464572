"""The vector store interface, shaped like the provider interface of seed 003
(ensure the store, upsert, delete, search, count) so that LanceDB, and Weaviate next,
fit behind it.

Every write carries a fencing token (``fence``): an object already written with a newer
token is never overwritten or deleted by an older writer (DESIGN.md, "Reliability rules").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

EXPORT_FIELDS = ("id", "repo", "path", "chunk_index", "start_line", "end_line", "content_sha256", "embedding_model")


@dataclass(slots=True)
class VectorObject:
    """One chunk in the store: the properties of DESIGN.md ("The data") plus its vector."""

    id: str
    repo: str
    path: str
    chunk_index: int
    start_line: int
    end_line: int
    content: str
    language: str
    content_sha256: str
    commit: str
    indexed_at: str
    embedding_model: str
    fence: int
    vector: np.ndarray = field(repr=False)


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """What the store holds of one object, as ``codeindex verify`` checks it against the state."""

    id: str
    path: str
    chunk_index: int
    content: str
    content_sha256: str


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A search result: ``score`` is the cosine similarity (1.0 = same direction)."""

    id: str
    repo: str
    path: str
    chunk_index: int
    start_line: int
    end_line: int
    content: str
    language: str
    score: float


class VectorStore(Protocol):
    """A collection of :class:`VectorObject` with deterministic ids."""

    def ensure_collection(self, dimension: int) -> None:
        """Create the collection for vectors of ``dimension`` if it does not exist."""
        ...

    def upsert(self, objects: Sequence[VectorObject]) -> int:
        """Insert or replace ``objects`` by id, unless the stored one has a newer fence.

        Returns the number of objects written.
        """
        ...

    def delete(self, ids: Sequence[str], fence: int) -> None:
        """Delete the objects ``ids`` whose fence is at most ``fence``."""
        ...

    def chunk_indexes(self, repo: str, paths: Sequence[str]) -> dict[str, list[int]]:
        """Return ``{path: [chunk_index, ...]}`` of the objects stored for those of ``paths`` in ``repo``.

        What is stored, not what the state believes: a sync that failed after some upserts
        can leave chunks the state does not count, and the commit deletes those too.
        """
        ...

    def inventory(self, repo: str) -> Iterator[StoredChunk]:
        """Yield every object of ``repo`` with its content, reading all of its data (what
        ``codeindex verify`` compares with the state). Raises StoreError when it cannot be read."""
        ...

    def drop(self) -> None:
        """Delete the whole collection (``verify --repair`` of a store that cannot be read; the
        repositories are then indexed again)."""
        ...

    def search(self, vector: np.ndarray, k: int, repo: str | None = None) -> list[SearchHit]:
        """Return the ``k`` objects nearest to ``vector`` (cosine), optionally within ``repo``."""
        ...

    def count(self, repo: str | None = None) -> int:
        """Number of objects, in all repositories or in ``repo`` (which reads the data of every
        fragment: a store with missing data files raises StoreError here)."""
        ...

    def export(self, with_vectors: bool = False) -> Iterator[dict]:
        """Yield every object as a dict of :data:`EXPORT_FIELDS` (and ``vector``), sorted by id."""
        ...
