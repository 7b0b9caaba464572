"""The vector store interface, shaped like the provider interface of seed 003
(ensure the store, upsert, delete, search, count) so that LanceDB, and Weaviate next,
fit behind it.

Every write carries a fencing token (``fence``): an object already written with a newer
token is never overwritten or deleted by an older writer (DESIGN.md, "Reliability rules").
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from indexing.errors import UsageError

EXPORT_FIELDS = ("id", "repo", "path", "chunk_index", "start_line", "end_line", "content_sha256", "embedding_model",
                 "names_sha256")


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
    #: The embedding of the names the chunk defines (:meth:`indexing.names.Definitions.text`), of the
    #: vector's dimension; all zeros when it defines nothing; None when it was never computed
    #: (an object written before name vectors existed: it ranks by its vector alone).
    name_vector: np.ndarray | None = field(default=None, repr=False)
    #: SHA-256 of the names text the name vector embeds (its key in the embedding cache, which
    #: cleanup keeps while an object refers to it); "" when it defines nothing or was never computed.
    names_sha256: str = ""


@dataclass(frozen=True, slots=True)
class Compaction:
    """What a compaction of one collection did (or, for a dry run, would do): the table's
    versions before and after, the old versions it removed, and the bytes the table took on
    disk before and after (None where the store cannot tell: an object store)."""

    collection: str
    versions_before: int
    versions_after: int
    removed_versions: list[int]
    bytes_before: int | None
    bytes_after: int | None

    @property
    def bytes_freed(self) -> int:
        """Bytes the compaction gave back (0 when unknown)."""
        if self.bytes_before is None or self.bytes_after is None:
            return 0
        return max(0, self.bytes_before - self.bytes_after)


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """What the store holds of one object, as ``codeindex verify`` checks it against the state."""

    id: str
    path: str
    chunk_index: int
    content: str
    content_sha256: str
    #: False for an object whose name vector was never computed (written before name vectors
    #: existed); stores without name vectors say True.
    named: bool = True


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A search result. From :meth:`VectorStore.search`, ``score`` is the cosine similarity (1.0 =
    same direction); from :meth:`VectorStore.lexical_search`, the store's BM25 score (0 and up,
    comparable only within one answer)."""

    id: str
    repo: str
    path: str
    chunk_index: int
    start_line: int
    end_line: int
    content: str
    language: str
    score: float
    #: From :meth:`VectorStore.search`: the cosine similarity of the query and the object's name
    #: vector (0.0 when it has none, or defines nothing); 0.0 from ``lexical_search``.
    name_score: float = 0.0


#: The properties of an object that a :class:`SearchHit` carries (all its fields but the scores).
HIT_FIELDS = ("id", "repo", "path", "chunk_index", "start_line", "end_line", "content", "language")


def name_similarity(query: np.ndarray, name_vector: np.ndarray | Sequence[float] | None) -> float:
    """Cosine similarity of ``query`` and a stored name vector; 0.0 for None (never computed)
    or a zero vector (the chunk defines nothing)."""
    if name_vector is None:
        return 0.0
    v = np.asarray(name_vector, dtype=np.float32)
    norm = float(np.linalg.norm(v)) * float(np.linalg.norm(query))
    return float(np.dot(query, v) / norm) if norm > 0 else 0.0


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """What a search is restricted to, applied inside the store's query (a pre-filter), so that a
    narrow filter still returns ``k`` hits when the store holds them.

    ``repo``: a repository id. ``path``: a glob over the repository-relative path, with git
    pathspec's default rules (``*`` and ``**`` match any characters, ``/`` included; ``?`` one
    character); a pattern also matches every path beneath it (``src`` finds ``src/a.py``).
    ``language``: a language name as :func:`indexing.languages.language_of` records it.
    """

    repo: str | None = None
    path: str | None = None
    language: str | None = None

    def __post_init__(self) -> None:
        if self.path is not None:
            check_glob(self.path)


def check_glob(pattern: str) -> None:
    """Raise UsageError for a path glob a store cannot evaluate: empty, or with a character
    class (``[...]``: neither SQL LIKE nor Weaviate's ``like`` has one)."""
    if not pattern or "[" in pattern or "]" in pattern:
        raise UsageError(f"path glob {pattern!r}: use *, ** and ? (character classes [...] are not supported)")


def glob_to_like(pattern: str) -> list[str]:
    """The SQL LIKE patterns (escape character ``\\``) a path must match one of for ``pattern``
    (:class:`SearchFilter`): the pattern itself and, for a directory, everything beneath it.
    ``src/*.py`` -> ``['src/%.py', 'src/%.py/%']``."""
    check_glob(pattern)
    body = re.sub(r"\*+", "*", re.sub(r"\*\*/", "*", pattern.strip("/")))
    like = "".join({"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}.get(c, c) for c in body)
    return [like, like + "/%"]


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

    def settle(self, *, final: bool = True) -> None:
        """Bring what the store derives from its objects (LanceDB: the full-text index) up to
        date, which writes defer to it: after a sync's last write (``final``), or between its
        batches once a batch's objects are let go (``final=False``: only what a long run of
        writes cannot leave for the end). Cheap when nothing is due."""
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

    def objects(self, repo: str) -> Iterator[VectorObject]:
        """Yield every object of ``repo`` with all its properties and its vector, as read from one
        version of the store (what an index artifact packs). Raises StoreError when it cannot be read."""
        ...

    def search(self, vector: np.ndarray, k: int, filters: SearchFilter | None = None) -> list[SearchHit]:
        """Return the ``k`` objects nearest to ``vector`` (cosine, the hit's ``score``) among those
        ``filters`` admits, each with ``name_score``, the cosine of ``vector`` and its name vector
        (:func:`name_similarity`), which :func:`indexing.search.search` re-ranks by."""
        ...

    def lexical_search(self, terms: str, k: int, filters: SearchFilter | None = None) -> list[SearchHit]:
        """Return the ``k`` objects that best match ``terms`` (BM25 over the full-text index of each
        object's :func:`indexing.lexical.document_terms`; ``terms`` from
        :func:`indexing.lexical.query_terms`) among those ``filters`` admits, best first.

        The full-text index follows every upsert and delete (no object is found that the vector
        search would not find, and none is missing): tests/integration/test_store_conformance.py.
        """
        ...

    def count(self, repo: str | None = None) -> int:
        """Number of objects, in all repositories or in ``repo`` (which reads the data of every
        fragment: a store with missing data files raises StoreError here)."""
        ...

    def compact(self, keep_seconds: float, *, dry_run: bool = False) -> Compaction:
        """Merge small data files and remove table versions older than ``keep_seconds`` (never
        the latest), with the objects unchanged; ``dry_run``: say which versions would go and
        change nothing. A store that compacts itself reports nothing removed."""
        ...

    def export(self, with_vectors: bool = False) -> Iterator[dict]:
        """Yield every object as a dict of :data:`EXPORT_FIELDS` (and ``vector``), sorted by id."""
        ...


def vector_array(vectors: Sequence[np.ndarray | None], dimension: int):
    """An Arrow ``fixed_size_list<float32>[dimension]`` array of ``vectors``, None as null (a name
    vector never computed). Raises ValueError for a vector of another dimension."""
    import pyarrow as pa  # lazy: only the stores and artifacts that write Arrow need it

    missing = np.array([v is None for v in vectors], dtype=bool)
    zero = np.zeros(dimension, dtype=np.float32)
    rows = [zero if v is None else np.asarray(v, dtype=np.float32) for v in vectors]
    for v in rows:
        if v.shape != (dimension,):
            raise ValueError(f"a vector of shape {v.shape} where {dimension} dimensions were expected")
    matrix = np.stack(rows) if rows else np.zeros((0, dimension), dtype=np.float32)
    values = pa.array(matrix.reshape(-1), pa.float32())
    if not missing.any():
        return pa.FixedSizeListArray.from_arrays(values, dimension)
    return pa.FixedSizeListArray.from_arrays(values, dimension, mask=pa.array(missing))


def vector_list(column, dimension: int) -> list[np.ndarray | None]:
    """The vectors of an Arrow ``fixed_size_list<float32>`` column (or chunked column), null as
    None: what :func:`vector_array` wrote. Raises ValueError for another dimension."""
    import pyarrow as pa  # lazy: see vector_array

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.list_(pa.float32(), dimension))
    if len(column) == 0:
        return []
    if column.type.list_size != dimension:
        raise ValueError(f"vectors are {column.type.list_size}-dimensional, not {dimension}")
    flat = column.values.to_numpy(zero_copy_only=False).astype(np.float32)
    flat = flat[column.offset * dimension:(column.offset + len(column)) * dimension].reshape(len(column), dimension)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return [flat[i].copy() if valid[i] else None for i in range(len(column))]
