"""Search: the one domain function the CLI (one query or a batch) and the HTTP API call.

Three modes over any :class:`~indexing.store.VectorStore`: ``vector`` (the query's embedding,
cosine), ``lexical`` (BM25 over the code-aware terms of indexing/lexical.py) and ``hybrid``
(both lists fused by reciprocal rank fusion: Cormack, Clarke and Büttcher, "Reciprocal Rank
Fusion outperforms Condorcet and individual Rank Learning Methods", SIGIR 2009, with their
``k = 60``), led by the exact matches of a query that names an identifier or quotes a literal
(:func:`indexing.lexical.exact_terms`). In ``vector`` and ``hybrid`` the nearest chunks are
re-ranked by their name vectors (:mod:`indexing.names`): ``cosine(query, chunk) + name_weight *
cosine(query, the names the chunk defines)``. Filters go inside each store query
(:class:`~indexing.store.SearchFilter`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from indexing.embedders import Embedder
from indexing.errors import UsageError
from indexing.lexical import exact_terms, query_terms
from indexing.state import StateStore
from indexing.store import SearchFilter, SearchHit, VectorStore

#: RRF's constant (the paper's 60): a rank's weight is ``1 / (RRF_K + rank)``.
RRF_K = 60
#: How many hits each retriever gives a hybrid search to fuse, at least (``k`` when larger).
HYBRID_CANDIDATES = 50
#: At most this many exact matches (a named identifier's definition, a quoted literal) lead a
#: hybrid answer, ahead of the fused list: code search users expect an identifier to find its
#: definition first, which an embedding's nearest neighbours (callers, look-alikes) can outvote.
EXACT_FIRST = 3
#: How many of the nearest chunks (at least; ``k`` when larger) are re-ranked by their name
#: vectors: on click's benchmark queries, re-ranking the top 50 scored as well as re-ranking
#: every chunk (bench/search.py, docs/search.md).
NAME_CANDIDATES = 50


class SearchMode(StrEnum):
    """Which retriever(s) a search asks."""

    VECTOR = "vector"
    LEXICAL = "lexical"
    HYBRID = "hybrid"


@dataclass(frozen=True, slots=True)
class RankedHit:
    """One result: the stored chunk (``hit``; its ``score`` is the retriever's own), the score the
    list is ordered by (for ``vector`` cosine plus the weighted name-vector cosine, BM25 for
    ``lexical``, the RRF sum for ``hybrid``, where the exact matches that lead score above it),
    and which retrievers found it (``("vector",)``, ``("lexical",)`` or both)."""

    hit: SearchHit
    score: float
    retrievers: tuple[str, ...]

    @property
    def retriever(self) -> str:
        """The retrievers as one word: ``vector``, ``lexical`` or ``vector+lexical``."""
        return "+".join(self.retrievers)

    def as_dict(self) -> dict:
        """The JSON form: the hit's fields (``score`` the ranking one) plus ``retriever``."""
        row = {name: getattr(self.hit, name) for name in SearchHit.__slots__}
        row["score"] = self.score
        row["retriever"] = self.retriever
        return row


def fuse(lists: dict[str, Sequence[SearchHit]], k: int, weights: dict[str, float] | None = None,
         rrf_k: int = RRF_K) -> list[RankedHit]:
    """Reciprocal rank fusion of ranked lists keyed by retriever name: each hit scores
    ``sum(weight / (rrf_k + rank))`` over the lists that hold it (rank from 1; weight 1 unless
    ``weights`` says); ties keep the first list's order. Returns the best ``k``."""
    scores: dict[str, float] = {}
    found: dict[str, list[str]] = {}
    hits: dict[str, SearchHit] = {}
    for name, ranked in lists.items():
        weight = (weights or {}).get(name, 1.0)
        for rank, hit in enumerate(ranked, 1):
            scores[hit.id] = scores.get(hit.id, 0.0) + weight / (rrf_k + rank)
            found.setdefault(hit.id, []).append(name)
            hits.setdefault(hit.id, hit)
    order = sorted(scores, key=lambda i: -scores[i])[:k]
    return [RankedHit(hits[i], scores[i], tuple(found[i])) for i in order]


def rerank_by_names(hits: Sequence[SearchHit], name_weight: float) -> list[tuple[SearchHit, float]]:
    """``hits`` (a vector search's, best first) with the score ``hit.score + name_weight *
    hit.name_score``, ordered by it (ties keep their order). ``name_weight`` 0 keeps the order."""
    scored = [(hit, hit.score + name_weight * hit.name_score) for hit in hits]
    return sorted(scored, key=lambda pair: -pair[1]) if name_weight else scored


def search(store: VectorStore, embedder: Embedder | None, queries: Sequence[str], k: int,
           mode: SearchMode, filters: SearchFilter | None = None,
           lexical_weight: float = 1.0, name_weight: float = 0.0) -> list[list[RankedHit]]:
    """Answer each of ``queries`` with its best ``k`` hits (``k`` >= 1), in ``mode``, among the
    objects ``filters`` admits; one list per query, in order.

    All queries are embedded in one call (``embedder.embed``: one batch through the model);
    ``embedder`` may be None for ``lexical``. ``lexical_weight`` scales the lexical list's RRF
    weight in ``hybrid`` (1.0: equal). ``name_weight`` > 0 re-ranks the nearest
    :data:`NAME_CANDIDATES` chunks by their name vectors (:func:`rerank_by_names`) in ``vector``
    and ``hybrid`` (the settings' ``search_name_weight``). Raises UsageError for an empty query or ``k`` < 1, and
    the store's StoreError.
    """
    if k < 1:
        raise UsageError(f"k must be at least 1, got {k}")
    if any(not q.strip() for q in queries):
        raise UsageError("a search query is empty")
    mode = SearchMode(mode)
    if mode is not SearchMode.LEXICAL and embedder is None:
        raise UsageError(f"{mode} search needs the collection's embedder")
    vectors = embedder.embed(list(queries)) if mode is not SearchMode.LEXICAL and queries else None
    depth = k if mode is not SearchMode.HYBRID else max(k, HYBRID_CANDIDATES)
    vector_depth = max(depth, NAME_CANDIDATES) if name_weight else depth
    answers = []
    for n, query in enumerate(queries):
        lists: dict[str, list[SearchHit]] = {}
        scores: dict[str, float] = {}
        if vectors is not None:
            ranked = rerank_by_names(store.search(vectors[n], vector_depth, filters), name_weight)[:depth]
            lists["vector"] = [hit for hit, _ in ranked]
            scores = {hit.id: score for hit, score in ranked}
        if mode is not SearchMode.VECTOR:
            lists["lexical"] = store.lexical_search(query_terms(query), depth, filters)
        if mode is SearchMode.HYBRID:
            exact = store.lexical_search(exact, EXACT_FIRST, filters) if (exact := exact_terms(query)) else []
            fused = fuse(lists, k + len(exact), {"lexical": lexical_weight})
            found = {r.hit.id: r for r in fused}
            # An exact match scores above any fused hit (at most the sum of the lists' weights
            # over RRF_K + 1), the exact matches in their BM25 order.
            top = (1.0 + lexical_weight) / (RRF_K + 1)
            first = [RankedHit(h, top + 1.0 / (RRF_K + 1 + i),
                               found[h.id].retrievers if h.id in found else ("lexical",)) for i, h in enumerate(exact)]
            leading = {h.id for h in exact}
            answers.append([*first, *(r for r in fused if r.hit.id not in leading)][:k])
        else:
            ((name, ranked),) = lists.items()
            answers.append([RankedHit(hit, scores.get(hit.id, hit.score), (name,)) for hit in ranked[:k]])
    return answers


class SearchEnvironment(Protocol):
    """What :func:`search_collection` needs of its process (``workers.runtime.Runtime`` is one)."""

    def readonly_state(self) -> StateStore: ...

    def vector_store(self, collection: str) -> VectorStore: ...

    def embedder_for_model(self, model_id: str) -> Embedder: ...


def search_collection(env: SearchEnvironment, collection: str, queries: Sequence[str], k: int, mode: SearchMode,
                      filters: SearchFilter | None = None, lexical_weight: float = 1.0,
                      name_weight: float = 0.0) -> list[list[RankedHit]]:
    """:func:`search` over ``collection`` with the model it was built with (the CLI's ``search``
    and the API's ``/v1/search`` both call this, so they answer alike). The embedder is not
    loaded for a lexical search. Raises UsageError for a collection nothing was synced into,
    and what :func:`search` raises."""
    meta = env.readonly_state().collection_meta(collection)
    if meta is None:
        raise UsageError(f"collection {collection!r} is empty: run `codeindex sync --all` first")
    embedder = None if SearchMode(mode) is SearchMode.LEXICAL else env.embedder_for_model(meta.embedding_model)
    return search(env.vector_store(collection), embedder, queries, k, mode, filters, lexical_weight, name_weight)
