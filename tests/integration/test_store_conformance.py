"""One conformance suite for every :class:`~indexing.store.VectorStore`: the same tests, run
against each backend a deployment can choose, so that the sync, ``codeindex verify`` and search
see one behaviour whatever holds the vectors.

Backends (the ``backend`` fixture's params):

* ``lancedb-local``: :class:`LanceDBStore` in a temporary directory (the embedded default);
* ``lancedb-s3``: :class:`LanceDBStore` on ``s3://<fresh bucket>/lancedb`` on the moto server of
  tests/s3.py, with the storage options workers/runtime.py's ``s3_storage_options`` builds and,
  as the fleet has it, a Redis lock per table (workers.locks.redis_lock) around every write;
* ``weaviate``: :class:`WeaviateStore` against ``CODEINDEX_TEST_WEAVIATE_URL`` (and
  ``CODEINDEX_TEST_WEAVIATE_API_KEY``); skipped when that variable is unset, since no Weaviate
  server runs on this machine.

Every test works in a collection (and bucket) of its own and removes it. Covered: every method
of the protocol, with the rules of indexing/store.py's docstrings: ``ensure_collection`` is
idempotent and keeps the first dimension; ``upsert`` inserts, then replaces by id; the fence
rule (a stored object with a newer fence is neither overwritten nor deleted; an equal or newer
fence writes, ``delete`` removes the objects whose stored fence is at most the given one);
``chunk_indexes``, ``inventory``, ``count`` per repository; ``search`` nearest first, within a
repository when asked; ``export`` sorted by id, with and without vectors; ``drop`` and what
reads answer after it (also in a second instance, as another worker of a fleet has it open);
``lexical_search`` (an identifier found by its whole name and its parts, following upserts and
deletes), the filters (repo, language, a path glob and a directory) applied inside the query of
both searches, so that ``k`` hits come back however few objects pass;
every operation on a collection never created; and one-call upserts and deletes of thousands
of objects (more than one SQL ``IN`` list of LanceDB, more than one id filter of Weaviate).
"""

from __future__ import annotations

import hashlib
import math
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest

from indexing.errors import StoreError
from indexing.ids import object_id
from indexing.lance_store import LanceDBStore
from indexing.lexical import query_terms
from indexing.store import EXPORT_FIELDS, SearchFilter, StoredChunk, VectorObject, VectorStore
from tests.s3 import S3Endpoint, s3_server  # noqa: F401 - the session fixture, used by name

WEAVIATE_URL = os.environ.get("CODEINDEX_TEST_WEAVIATE_URL")
WEAVIATE_API_KEY = os.environ.get("CODEINDEX_TEST_WEAVIATE_API_KEY") or None
DIMENSION = 8


@dataclass
class Backend:
    """One store backend for one test: ``make()`` opens another instance on the same collection
    (as another process of a fleet would); ``cleanups`` run at teardown, last first."""

    name: str
    collection: str
    make: Callable[[], VectorStore]
    cleanups: list[Callable[[], None]] = field(default_factory=list)


def _lancedb_local(tmp_path: Path, collection: str) -> Backend:
    uri = str(tmp_path / "lancedb")
    return Backend("lancedb-local", collection, lambda: LanceDBStore(uri, collection))


def _lancedb_s3(request: pytest.FixtureRequest, collection: str) -> Backend:
    import redis

    from config.settings import Settings
    from workers.locks import redis_lock
    from workers.runtime import Runtime, table_lock_key

    endpoint: S3Endpoint = request.getfixturevalue("s3_server")
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"), socket_timeout=10)
    bucket = f"codeindex-conf-{uuid.uuid4().hex[:12]}"
    endpoint.store(bucket).ensure_bucket()
    uri = f"s3://{bucket}/lancedb"
    # The options exactly as the runtime builds them for CODEINDEX_STORE_URI=s3://...
    options = Runtime(Settings(s3_endpoint_url=endpoint.url, s3_region=endpoint.region,
                               s3_access_key_id=endpoint.access_key,
                               s3_secret_access_key=endpoint.secret_key)).s3_storage_options()
    assert set(options) == {"aws_endpoint", "aws_region", "aws_access_key_id", "aws_secret_access_key",
                            "allow_http", "connect_timeout", "timeout", "client_max_retries",
                            "client_retry_timeout"}, options
    key = table_lock_key(uri, collection)

    def lock():
        return redis_lock(client, key, what=f"table {collection} at {uri}", ttl=30.0, timeout=60.0)

    backend = Backend("lancedb-s3", collection,
                      lambda: LanceDBStore(uri, collection, storage_options=options, write_lock=lock))
    backend.cleanups += [lambda: endpoint.drop_bucket(bucket), client.close]
    return backend


def _weaviate(collection: str) -> Backend:
    from indexing.weaviate_store import WeaviateStore

    made: list[WeaviateStore] = []

    def make() -> WeaviateStore:
        made.append(WeaviateStore(url=WEAVIATE_URL, api_key=WEAVIATE_API_KEY, collection=collection,
                                  timeout_s=30.0))
        return made[-1]

    def cleanup() -> None:
        whole = WeaviateStore(url=WEAVIATE_URL, api_key=WEAVIATE_API_KEY, collection=collection)
        whole.drop()
        whole.close()
        for store in made:
            store.close()

    backend = Backend("weaviate", collection, make)
    backend.cleanups.append(cleanup)
    return backend


@pytest.fixture(params=[
    "lancedb-local",
    "lancedb-s3",
    pytest.param("weaviate", marks=pytest.mark.skipif(
        not WEAVIATE_URL, reason="CODEINDEX_TEST_WEAVIATE_URL is not set: no Weaviate server to test against")),
])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    # A Weaviate class name: a capital first (the store capitalises it), letters, digits, _.
    collection = f"codeindex_conf_{uuid.uuid4().hex[:12]}"
    if request.param == "lancedb-local":
        made = _lancedb_local(tmp_path, collection)
    elif request.param == "lancedb-s3":
        made = _lancedb_s3(request, collection)
    else:
        made = _weaviate(collection)
    try:
        yield made
    finally:
        for cleanup in reversed(made.cleanups):
            cleanup()


@pytest.fixture
def store(backend: Backend) -> VectorStore:
    return backend.make()


def direction(degrees: float) -> np.ndarray:
    """The unit vector at ``degrees`` from the first axis, in the plane of the first two."""
    vector = np.zeros(DIMENSION, dtype=np.float32)
    vector[0], vector[1] = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return vector


_AT = object()


def obj(collection: str, i: int, *, repo: str = "alpha", path: str = "a.py", fence: int = 1,
        content: str | None = None, vector: np.ndarray | None = None, name_vector=_AT) -> VectorObject:
    """Chunk ``i`` of ``path`` in ``repo``, with an id as the sync makes it (a uuid5: Weaviate's
    ids must be UUIDs); its vector points at ``i`` degrees unless given, its name vector at
    ``90 + i`` degrees unless given (None: never computed)."""
    return VectorObject(
        id=object_id(collection, repo, path, i), repo=repo, path=path, chunk_index=i, start_line=10 * i + 1,
        end_line=10 * i + 9, content=content if content is not None else f"{repo}:{path}#{i} fence {fence}",
        language="python", content_sha256=hashlib.sha256(f"{repo}{path}{i}{content}".encode()).hexdigest(),
        commit=f"commit-{fence}", indexed_at="2024-05-01T00:00:00Z", embedding_model="test-model", fence=fence,
        vector=direction(i) if vector is None else vector,
        name_vector=direction(90 + i) if name_vector is _AT else name_vector)


def contents(store: VectorStore, repo: str = "alpha") -> dict[str, str]:
    """``{id: content}`` of ``repo``'s objects, read through ``inventory``."""
    return {chunk.id: chunk.content for chunk in store.inventory(repo)}


# --- ensure_collection ------------------------------------------------------------------------


def test_ensure_collection_is_idempotent_and_keeps_the_first_dimension(backend: Backend, store: VectorStore):
    store.ensure_collection(DIMENSION)
    first = obj(backend.collection, 0)
    assert store.upsert([first]) == 1
    store.ensure_collection(DIMENSION)  # again: the collection and its objects stay
    backend.make().ensure_collection(DIMENSION)  # another instance (another worker) finds it too
    store.ensure_collection(2 * DIMENSION)  # another dimension does not recreate it either
    assert store.count() == 1
    rows = list(store.export(with_vectors=True))
    assert [row["id"] for row in rows] == [first.id]
    assert len(rows[0]["vector"]) == DIMENSION
    wider = obj(backend.collection, 1, vector=np.ones(2 * DIMENSION, dtype=np.float32))
    with pytest.raises(StoreError):
        store.upsert([wider])  # the collection holds vectors of its first dimension only
    assert store.count() == 1


# --- upsert and the fence rule ----------------------------------------------------------------


def test_upsert_inserts_then_replaces_by_id(backend: Backend, store: VectorStore):
    store.ensure_collection(DIMENSION)
    objects = [obj(backend.collection, i, path=f"p{i % 2}.py") for i in range(5)]
    assert store.upsert(objects) == 5
    assert store.count() == 5
    changed = [replace(o, content=f"rewritten {i}", start_line=100 + i, end_line=200 + i, commit="commit-2",
                       content_sha256=f"{i:064x}", vector=direction(90 - i)) for i, o in enumerate(objects)]
    assert store.upsert(changed) == 5
    assert store.count() == 5  # replaced, not added
    assert contents(store) == {o.id: o.content for o in changed}
    rows = {row["id"]: row for row in store.export(with_vectors=True)}
    for new in changed:
        row = rows[new.id]
        assert (row["start_line"], row["end_line"], row["content_sha256"]) == (
            new.start_line, new.end_line, new.content_sha256)
        assert np.allclose(row["vector"], new.vector, atol=1e-6)
    assert store.upsert([]) == 0


def test_an_older_fence_never_overwrites_an_equal_or_newer_one_does(backend: Backend, store: VectorStore):
    store.ensure_collection(DIMENSION)
    stored = obj(backend.collection, 0, fence=5, content="fence 5")
    assert store.upsert([stored]) == 1
    assert store.upsert([replace(stored, content="older writer", fence=4)]) == 0
    assert contents(store) == {stored.id: "fence 5"}
    assert store.upsert([replace(stored, content="same writer again", fence=5)]) == 1
    assert contents(store) == {stored.id: "same writer again"}
    assert store.upsert([replace(stored, content="newer writer", fence=6)]) == 1
    assert contents(store) == {stored.id: "newer writer"}
    # One call mixing the three cases: only the stale object is refused.
    other = obj(backend.collection, 1, fence=6, content="other fence 6")
    assert store.upsert([other]) == 1
    new = obj(backend.collection, 2, fence=3, content="new at fence 3")
    written = store.upsert([replace(stored, content="stale", content_sha256="stale", fence=2),
                            replace(other, content="other fence 7", fence=7), new])
    assert written == 2
    assert contents(store) == {stored.id: "newer writer", other.id: "other fence 7", new.id: "new at fence 3"}
    assert {row["id"]: row["content_sha256"] for row in store.export()}[stored.id] == stored.content_sha256
    assert store.count() == 3


@pytest.mark.parametrize("stored_before", [True, False], ids=["stored-id", "new-id"])
def test_one_upsert_holding_an_id_twice_stores_it_once(backend: Backend, store: VectorStore, stored_before: bool):
    """Insert or replace *by id*: two objects with one id in one call leave one object, the one
    with the newer fence (WeaviateStore's ``_writable`` keeps the highest, the last among
    equals), whether the id was stored before or not. (The sync's planner keeps one entry per
    path, so its batches do not hold an id twice today; the protocol does not forbid it.)"""
    store.ensure_collection(DIMENSION)
    first = obj(backend.collection, 0, fence=1)
    if stored_before:
        store.upsert([first])
    store.upsert([replace(first, content="fence 2", fence=2), replace(first, content="fence 3", fence=3)])
    assert Counter(row["id"] for row in store.export()) == {first.id: 1}
    assert contents(store) == {first.id: "fence 3"}


# --- delete -----------------------------------------------------------------------------------


def test_delete_removes_only_objects_whose_fence_is_at_most_the_given_one(backend: Backend, store: VectorStore):
    store.ensure_collection(DIMENSION)
    old, same, newer = (obj(backend.collection, i, fence=f) for i, f in ((0, 3), (1, 5), (2, 7)))
    keep = obj(backend.collection, 3, fence=1)
    store.upsert([old, same, newer, keep])
    absent = object_id(backend.collection, "alpha", "never.py", 0)
    store.delete([old.id, same.id, newer.id, absent], fence=5)
    assert set(contents(store)) == {newer.id, keep.id}  # fence 7 > 5 stays; keep was not named
    store.delete([absent], fence=100)  # only absent ids: nothing happens, no error
    store.delete([], fence=100)
    assert store.count() == 2
    store.delete([newer.id], fence=7)  # equal fence deletes
    assert set(contents(store)) == {keep.id}


# --- reads: chunk_indexes, inventory, count, search, export -----------------------------------


@pytest.fixture
def two_repos(backend: Backend, store: VectorStore) -> dict[str, list[VectorObject]]:
    """alpha: a.py chunks 0-3 (0, 10, 20, 30 degrees), b.py chunks 0-1; beta: a.py chunks 0-2
    (5, 15, 25 degrees): the same paths in two repositories."""
    store.ensure_collection(DIMENSION)
    alpha = [obj(backend.collection, i, vector=direction(10 * i)) for i in range(4)]
    alpha += [obj(backend.collection, i, path="b.py", vector=direction(60 + i)) for i in range(2)]
    beta = [obj(backend.collection, i, repo="beta", vector=direction(10 * i + 5)) for i in range(3)]
    assert store.upsert(alpha + beta) == 9
    return {"alpha": alpha, "beta": beta}


def test_chunk_indexes_per_path_of_one_repo(store: VectorStore, two_repos):
    found = store.chunk_indexes("alpha", ["a.py", "b.py", "missing.py", "a.py"])
    assert {path: sorted(indexes) for path, indexes in found.items()} == {"a.py": [0, 1, 2, 3], "b.py": [0, 1]}
    assert {p: sorted(v) for p, v in store.chunk_indexes("beta", ["a.py", "b.py"]).items()} == {"a.py": [0, 1, 2]}
    assert store.chunk_indexes("alpha", []) == {}
    assert store.chunk_indexes("gamma", ["a.py"]) == {}


def test_inventory_yields_every_object_of_one_repo(store: VectorStore, two_repos):
    expected = [StoredChunk(id=o.id, path=o.path, chunk_index=o.chunk_index, content=o.content,
                            content_sha256=o.content_sha256) for o in two_repos["alpha"]]
    assert sorted(store.inventory("alpha"), key=lambda c: c.id) == sorted(expected, key=lambda c: c.id)
    assert {c.id for c in store.inventory("beta")} == {o.id for o in two_repos["beta"]}
    assert list(store.inventory("gamma")) == []


def test_name_vectors_are_stored_read_back_and_scored_by_search(backend: Backend, store: VectorStore):
    store.ensure_collection(DIMENSION)
    named_like_query = obj(backend.collection, 10, name_vector=direction(0))
    named_away = obj(backend.collection, 5, name_vector=direction(90))
    defines_nothing = obj(backend.collection, 20, name_vector=np.zeros(DIMENSION, dtype=np.float32))
    never_computed = obj(backend.collection, 15, name_vector=None)
    store.upsert([named_like_query, named_away, defines_nothing, never_computed])
    hits = store.search(direction(0), 4)
    # The search ranks by the chunk's vector; each hit carries the cosine of its name vector.
    assert [h.id for h in hits] == [named_away.id, named_like_query.id, never_computed.id, defines_nothing.id]
    scores = {h.id: h.name_score for h in hits}
    assert scores[named_like_query.id] == pytest.approx(1.0, abs=1e-5)
    assert scores[named_away.id] == pytest.approx(0.0, abs=1e-5)
    assert scores[defines_nothing.id] == 0.0 and scores[never_computed.id] == 0.0
    read = {o.id: o.name_vector for o in store.objects("alpha")}
    assert np.allclose(read[named_like_query.id], direction(0)) and np.allclose(read[named_away.id], direction(90))
    if backend.name.startswith("lancedb"):
        # LanceDB tells a chunk that defines nothing from one whose names were never computed.
        assert np.array_equal(read[defines_nothing.id], np.zeros(DIMENSION, dtype=np.float32))
        assert read[never_computed.id] is None
        assert {c.id: c.named for c in store.inventory("alpha")} == {
            named_like_query.id: True, named_away.id: True, defines_nothing.id: True, never_computed.id: False}
    # A later upsert with the name vector computed replaces the null.
    store.upsert([obj(backend.collection, 15, name_vector=direction(0))])
    assert {h.id: h.name_score for h in store.search(direction(15), 1)}[never_computed.id] == pytest.approx(
        math.cos(math.radians(15)), abs=1e-5)


def test_count_per_repo_and_overall(store: VectorStore, two_repos):
    assert store.count() == 9
    assert store.count("alpha") == 6
    assert store.count("beta") == 3
    assert store.count("gamma") == 0


def test_search_returns_the_nearest_first_within_the_repo_asked(store: VectorStore, two_repos):
    by_id = {o.id: o for objects in two_repos.values() for o in objects}
    query = 3.0 * direction(0)  # cosine: the length of the query does not matter
    hits = store.search(query, k=4)
    # 0 (alpha), 5 (beta), 10 (alpha), 15 (beta) degrees from the query.
    assert [(by_id[h.id].repo, by_id[h.id].chunk_index) for h in hits] == [
        ("alpha", 0), ("beta", 0), ("alpha", 1), ("beta", 1)]
    assert [h.score for h in hits] == pytest.approx([math.cos(math.radians(d)) for d in (0, 5, 10, 15)], abs=1e-4)
    first = hits[0]
    source = by_id[first.id]
    assert (first.repo, first.path, first.chunk_index, first.start_line, first.end_line, first.content,
            first.language) == (source.repo, source.path, source.chunk_index, source.start_line, source.end_line,
                                source.content, source.language)
    beta = store.search(query, k=10, filters=SearchFilter(repo="beta"))  # more asked than the repo holds: all of it, no other's
    assert [by_id[h.id].chunk_index for h in beta] == [0, 1, 2]
    assert {h.repo for h in beta} == {"beta"}
    alpha = store.search(direction(62), k=2, filters=SearchFilter(repo="alpha"))
    assert [(by_id[h.id].path, by_id[h.id].chunk_index) for h in alpha] == [("b.py", 1), ("b.py", 0)]
    assert store.search(query, k=3, filters=SearchFilter(repo="gamma")) == []


def test_lexical_search_finds_identifiers_and_follows_every_write(backend: Backend, store: VectorStore,
                                                                  monkeypatch: pytest.MonkeyPatch):
    # LanceDB: the settle after the first upsert (as between a sync's batches) folds its rows into
    # the full-text index, the later writes are searched unindexed, and a final settle folds them
    # as a second segment merged with the first:
    # every path is checked (on S3 too, where the fold opens the table with the same options).
    monkeypatch.setattr("indexing.lance_store.FTS_REFRESH_ROWS", 4)
    monkeypatch.setattr("indexing.lance_store.FTS_SEGMENT_ROWS", 4)
    store.ensure_collection(DIMENSION)
    texts = ["def parse_config_file(path):\n    return load(path)",
             "class HttpServerError(Exception):\n    pass",
             "def render(template):\n    raise KeyError('no such template')",
             "x = 1"]
    objects = [obj(backend.collection, i, content=text) for i, text in enumerate(texts)]
    store.upsert(objects)
    store.settle(final=False)

    def found(query: str, k: int = 10) -> list[int]:
        return [h.chunk_index for h in store.lexical_search(query_terms(query), k)]

    assert found("parse_config_file")[0] == 0
    assert found("config")[0] == 0  # a part of a snake_case name
    assert found("server error")[0] == 1  # parts of a CamelCase name
    assert found("no such template")[0] == 2  # the words of a string literal
    hit = store.lexical_search(query_terms("HttpServerError"), 1)[0]
    assert (hit.id, hit.path, hit.content, hit.start_line) == (objects[1].id, "a.py", texts[1], 11) and hit.score > 0
    assert found("nothing_matches_this") == [] and store.lexical_search("", 5) == []
    store.upsert([obj(backend.collection, 0, content="def load_settings():\n    pass")])  # replaced by id
    assert 0 not in found("parse_config_file") and found("load_settings") == [0]
    store.delete([objects[1].id], fence=1)
    assert 1 not in found("HttpServerError") and found("HttpServerError") == [2]  # only its "error" part is left
    assert sorted(found("def class x pass raise load render settings", k=50)) == [0, 2, 3]
    store.upsert([obj(backend.collection, i, content=f"def extra_{i}(): pass") for i in (4, 5, 6)])
    store.settle()
    assert found("extra_5")[0] == 5 and found("load_settings") == [0]
    assert sorted(found("def class x pass raise load render settings extra", k=50)) == [0, 2, 3, 4, 5, 6]


def test_filters_apply_inside_both_searches(backend: Backend, store: VectorStore):
    store.ensure_collection(DIMENSION)
    many = [obj(backend.collection, i, path="src/app/main.py", content=f"def handler_{i}(): return fetch()",
                vector=direction(i)) for i in range(40)]
    few = [replace(obj(backend.collection, i, path=p, content="def fetch(): return handler()", vector=direction(80)),
                   language=lang)
           for i, (p, lang) in enumerate([("docs/guide.md", "markdown"), ("docs/api/ref.md", "markdown"),
                                          ("tools/fetch.go", "go")])]
    other = [obj(backend.collection, 0, repo="beta", path="docs/guide.md", content="def fetch(): pass",
                 vector=direction(1))]
    store.upsert(many + few + other)
    query, terms = direction(0), query_terms("fetch handler")
    for search in (lambda f: store.search(query, 2, f), lambda f: store.lexical_search(terms, 2, f)):
        # The 40 nearest/best objects are filtered out: a post-filter of a top-k would return nothing.
        assert {(h.path, h.language) for h in search(SearchFilter(language="markdown"))} == {
            ("docs/guide.md", "markdown"), ("docs/api/ref.md", "markdown")}
        assert [h.path for h in search(SearchFilter(repo="alpha", path="*.go"))] == ["tools/fetch.go"]
        assert sorted(h.path for h in search(SearchFilter(repo="alpha", path="docs/**/*.md"))) == [
            "docs/api/ref.md", "docs/guide.md"]
        assert [h.path for h in search(SearchFilter(repo="alpha", path="docs/api"))] == ["docs/api/ref.md"]
        assert [(h.repo, h.path) for h in search(SearchFilter(repo="beta", path="docs/*"))] == [("beta", "docs/guide.md")]
        assert search(SearchFilter(repo="alpha", path="doc")) == []  # a directory name matches whole
        assert search(SearchFilter(repo="alpha", path="src/app/main_py")) == []  # _ is no wildcard
        assert search(SearchFilter(language="rust")) == []


def test_export_sorted_by_id_with_and_without_vectors(store: VectorStore, two_repos):
    objects = sorted(two_repos["alpha"] + two_repos["beta"], key=lambda o: o.id)
    rows = list(store.export())
    assert [row["id"] for row in rows] == [o.id for o in objects]
    for row, o in zip(rows, objects):
        assert row == {name: getattr(o, name) for name in EXPORT_FIELDS}  # exactly these fields
    with_vectors = list(store.export(with_vectors=True))
    assert [row["id"] for row in with_vectors] == [o.id for o in objects]
    for row, o in zip(with_vectors, objects):
        assert set(row) == {*EXPORT_FIELDS, "vector"}
        assert np.allclose(np.asarray(row["vector"], dtype=np.float32), o.vector, atol=1e-6)


# --- drop, and a collection never created -----------------------------------------------------


def test_drop_empties_the_collection_and_ensure_collection_makes_it_again(backend: Backend, store: VectorStore,
                                                                           two_repos):
    alpha = two_repos["alpha"]
    store.drop()
    assert store.count() == 0 and store.count("alpha") == 0
    assert list(store.export()) == [] and list(store.inventory("alpha")) == []
    assert store.search(direction(0), k=3) == []
    assert store.chunk_indexes("alpha", ["a.py"]) == {}
    with pytest.raises(StoreError, match="does not exist"):
        store.upsert(alpha)
    with pytest.raises(StoreError, match="does not exist"):
        store.delete([alpha[0].id], fence=1)
    store.drop()  # dropping what is gone is fine
    fresh = backend.make()
    assert fresh.count() == 0  # another instance opened now sees it gone too
    store.ensure_collection(DIMENSION)
    assert store.count() == 0  # made again, empty: the repositories are indexed again
    assert store.upsert(alpha[:2]) == 2
    assert fresh.count() == 2


def test_a_collection_dropped_by_another_instance_reads_as_gone(backend: Backend, store: VectorStore, two_repos):
    """A second instance that had the collection open (another worker of the fleet, while
    ``codeindex verify --repair`` drops it): its reads answer as for a collection that does not
    exist, or fail with StoreError, the one error the stores promise; never another exception."""
    assert store.count() == 9 and len(list(store.export())) == 9  # opened and read
    backend.make().drop()
    reads = {
        "count": lambda: store.count(),
        "export": lambda: list(store.export()),
        "inventory": lambda: list(store.inventory("alpha")),
        "search": lambda: store.search(direction(0), k=3),
        "lexical_search": lambda: store.lexical_search("alpha", k=3),
        "chunk_indexes": lambda: store.chunk_indexes("alpha", ["a.py"]),
    }
    gone = {"count": 0, "export": [], "inventory": [], "search": [], "lexical_search": [], "chunk_indexes": {}}
    outcome = {}
    for name, read in reads.items():
        try:
            outcome[name] = read()
        except StoreError:
            outcome[name] = "StoreError"
        except Exception as exc:  # noqa: BLE001 - what the assertion below reports
            outcome[name] = f"{type(exc).__name__} (not StoreError): {str(exc)[:120]}"
    assert all(outcome[name] in (gone[name], "StoreError") for name in reads), outcome


def test_a_collection_dropped_by_another_instance_is_made_again_by_ensure_collection(
        backend: Backend, store: VectorStore, two_repos):
    """The sync calls ``ensure_collection`` before every upsert (indexing/sync.py): a worker
    whose store instance had the collection open when another process dropped it must make it
    again there, or every sync of the collection fails until the worker restarts."""
    assert store.count() == 9
    backend.make().drop()
    store.ensure_collection(DIMENSION)
    assert store.upsert(two_repos["beta"]) == 3
    assert backend.make().count() == 3


def test_operations_on_a_collection_never_created(backend: Backend, store: VectorStore):
    """Reads answer empty; writes of something raise StoreError naming the missing collection;
    writes of nothing and ``drop`` are no-ops; nothing of it creates the collection."""
    o = obj(backend.collection, 0)
    assert store.count() == 0 and store.count("alpha") == 0
    assert list(store.export()) == [] and list(store.export(with_vectors=True)) == []
    assert list(store.inventory("alpha")) == []
    assert store.search(o.vector, k=5) == [] and store.search(o.vector, k=5, filters=SearchFilter(repo="alpha")) == []
    assert store.lexical_search("alpha", 5) == [] and store.lexical_search("alpha", 5, SearchFilter(repo="alpha")) == []
    assert store.chunk_indexes("alpha", ["a.py"]) == {}
    assert store.upsert([]) == 0
    store.delete([], fence=1)
    with pytest.raises(StoreError, match="does not exist"):
        store.upsert([o])
    with pytest.raises(StoreError, match="does not exist"):
        store.delete([o.id], fence=1)
    store.drop()
    with pytest.raises(StoreError, match="does not exist"):
        backend.make().upsert([o])  # still not created, for any instance


# --- thousands in one call --------------------------------------------------------------------


def test_thousands_of_objects_in_one_call_none_lost_none_doubled(backend: Backend, store: VectorStore):
    store.ensure_collection(DIMENSION)
    rng = np.random.default_rng(7)
    paths = [f"pkg/m{j:04d}.py" for j in range(1200)]  # more than one IN list / path filter
    objects = [obj(backend.collection, i // len(paths), path=paths[i % len(paths)], content=f"chunk {i}",
                   vector=rng.standard_normal(DIMENSION).astype(np.float32)) for i in range(3000)]
    assert len({o.id for o in objects}) == 3000
    assert store.upsert(objects) == 3000
    assert store.count() == store.count("alpha") == 3000
    exported = [row["id"] for row in store.export()]
    assert exported == sorted(o.id for o in objects)  # all of them, each once
    indexes = store.chunk_indexes("alpha", paths)
    assert len(indexes) == len(paths)
    assert sum(len(v) for v in indexes.values()) == 3000
    assert sorted(indexes["pkg/m0005.py"]) == [0, 1, 2]  # 3000 chunks over 1200 paths: 2 or 3 each
    assert sorted(indexes["pkg/m1199.py"]) == [0, 1]
    # Rewritten at a newer fence in one call: replaced, still 3000.
    newer = [replace(o, fence=2, content=o.content + " v2") for o in objects]
    assert store.upsert(newer) == 3000
    assert store.count() == 3000
    assert set(contents(store).values()) == {o.content for o in newer}
    # Deleted in one call, more ids than one filter holds: exactly those go.
    store.delete([o.id for o in newer[:2500]], fence=2)
    assert store.count() == 500
    assert sorted(c.id for c in store.inventory("alpha")) == sorted(o.id for o in newer[2500:])
    target = newer[2700]
    assert store.search(target.vector, k=1)[0].id == target.id
