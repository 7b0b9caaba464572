"""What the Weaviate store would send and how it reads answers, checked without a server: the
class-name mapping, the connection arguments, the properties of an object and their way back,
the filters (ids in batches, fenced deletes, repositories, paths), the fence rule of an upsert,
scores and hits built from the library's own ``Object`` dataclass; and a real connection attempt
to a closed loopback port, which fails fast with a StoreError that does not contain the API key."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from dataclasses import replace

import numpy as np
import pytest
from weaviate.collections.classes.internal import MetadataReturn, Object
from weaviate.exceptions import WeaviateConnectionError

from indexing import weaviate_store as ws
from indexing.errors import StoreError, UsageError
from indexing.ids import object_id
from indexing.lexical import document_terms
from indexing.store import EXPORT_FIELDS, SearchFilter, SearchHit, StoredChunk, VectorObject

SECRET = "sk-test-weaviate-0123456789"


def _object(i: int, fence: int = 1) -> VectorObject:
    vector = np.zeros(4, dtype=np.float32)
    vector[i % 4] = 0.5
    return VectorObject(id=object_id("codeindex", "repo", "src/a.py", i), repo="repo", path="src/a.py", chunk_index=i,
                        start_line=10 * i + 1, end_line=10 * i + 9, content=f"def f{i}():\n    return {i}\n",
                        language="python", content_sha256=f"{i:064x}", commit="c0ffee", indexed_at="2024-05-01T12:00:00Z",
                        embedding_model="feature-hashing-v1-4", fence=fence, vector=vector)


def _as_stored(obj: VectorObject, distance: float | None = None) -> Object:
    """The object as the client hands it back from a query (its own dataclass)."""
    return Object(uuid=uuid.UUID(obj.id), metadata=MetadataReturn(distance=distance), properties=ws._properties(obj),
                  references=None, vector={ws.VECTOR_NAME: obj.vector.tolist()}, collection="Codeindex")


def _leaves(f) -> list[tuple]:
    """(target, operator, value) of each operand of an AND filter (or of the filter itself), read
    from the filters' public attributes (``operator`` is a str enum: "And", "ContainsAny", ...)."""
    operands = f.filters if f.operator == "And" else [f]
    return [(o.target, o.operator, o.value) for o in operands]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- names and connection ----------------------------------------------------------------------

@pytest.mark.parametrize(("collection", "class_name"), [
    ("codeindex", "Codeindex"), ("my_index_2", "My_index_2"), ("Chunks", "Chunks"), ("x", "X"),
])
def test_collection_names_map_to_capitalised_classes(collection: str, class_name: str) -> None:
    assert ws._class_name(collection) == class_name


@pytest.mark.parametrize("collection", ["", "1index", "code-index", "code index", "_private", "ünicode"])
def test_names_weaviate_cannot_hold_are_refused(collection: str) -> None:
    with pytest.raises(UsageError, match="Weaviate class"):
        ws._class_name(collection)


def test_connection_arguments_from_the_url() -> None:
    assert ws._connection_params("http://localhost:8080") == {
        "http_host": "localhost", "http_port": 8080, "http_secure": False,
        "grpc_host": "localhost", "grpc_port": 50051, "grpc_secure": False}
    assert ws._connection_params("https://weaviate.example.com") == {
        "http_host": "weaviate.example.com", "http_port": 443, "http_secure": True,
        "grpc_host": "weaviate.example.com", "grpc_port": 50051, "grpc_secure": True}
    params = ws._connection_params("http://weaviate:8080?grpc_port=50052&grpc_host=weaviate-grpc")
    assert (params["grpc_host"], params["grpc_port"], params["http_port"]) == ("weaviate-grpc", 50052, 8080)


@pytest.mark.parametrize("url", ["localhost:8080", "ftp://h", "http://", f"http://user:{SECRET}@h:8080",
                                 "http://h:port", "http://h:8080?grpc_port=x", "http://h?grpc_port"])
def test_malformed_urls_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        ws._connection_params(url)
    assert SECRET not in str(caught.value)


def test_construction_checks_its_arguments_and_connects_nothing() -> None:
    with pytest.raises(UsageError, match="either"):
        ws.WeaviateStore(collection="codeindex")
    with pytest.raises(UsageError, match="either"):
        ws.WeaviateStore(lambda: None, url="http://localhost:8080", collection="codeindex")
    with pytest.raises(UsageError, match="tenant"):
        ws.WeaviateStore(url="http://localhost:8080", collection="codeindex", tenant="bad tenant")
    calls = []
    store = ws.WeaviateStore(lambda: calls.append(1), collection="codeindex", tenant="repo_a")
    assert (store.class_name, store.tenant, calls) == ("Codeindex", "repo_a", [])


def test_constructing_a_store_does_not_import_weaviate() -> None:
    code = ("import sys; from indexing.weaviate_store import WeaviateStore; "
            "WeaviateStore(url='http://localhost:8080', collection='codeindex'); "
            "assert 'weaviate' not in sys.modules, 'weaviate imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- objects and schema ------------------------------------------------------------------------

def test_properties_are_every_field_but_id_and_the_vectors() -> None:
    obj = _object(3, fence=7)
    props = ws._properties(obj)
    assert set(props) == {"repo", "path", "chunk_index", "start_line", "end_line", "content", "language",
                          "content_sha256", "commit", "indexed_at", "embedding_model", "fence", "names_sha256",
                          "terms"}
    assert props["terms"] == document_terms(obj.path, obj.content) and "defines.f3" in props["terms"].split()
    assert props["fence"] == 7 and props["chunk_index"] == 3 and props["content"] == obj.content
    assert all(type(props[name]) is int for name in ("chunk_index", "start_line", "end_line", "fence"))


def test_the_data_object_carries_the_id_and_a_list_vector() -> None:
    obj = replace(_object(1), id=_object(1).id.upper())
    data = ws._data_object(obj)
    assert data.uuid == obj.id.lower() and data.properties == ws._properties(obj)
    assert list(data.vector) == [ws.VECTOR_NAME] and type(data.vector[ws.VECTOR_NAME]) is list
    assert data.vector[ws.VECTOR_NAME] == [0.0, 0.5, 0.0, 0.0]


def test_the_data_object_carries_a_non_zero_name_vector_under_its_own_name() -> None:
    named = replace(_object(1), name_vector=np.array([0.0, 0.0, 0.6, 0.8], dtype=np.float32))
    data = ws._data_object(named)
    assert set(data.vector) == {ws.VECTOR_NAME, ws.NAMES_VECTOR}
    assert type(data.vector[ws.NAMES_VECTOR]) is list and data.vector[ws.NAMES_VECTOR] == pytest.approx([0, 0, 0.6, 0.8])
    # A chunk that defines nothing (zeros), one never computed (None), or a collection without
    # the names vector: the chunk vector alone.
    for obj, with_names in ((replace(named, name_vector=np.zeros(4, dtype=np.float32)), True),
                            (replace(named, name_vector=None), True), (named, False)):
        assert list(ws._data_object(obj, with_names).vector) == [ws.VECTOR_NAME]


def test_the_names_vector_is_self_provided_cosine_and_flat() -> None:
    config = ws._names_vector_config()
    assert config.name == ws.NAMES_VECTOR
    index = config.vectorIndexConfig
    assert index.vector_index_type().value == "flat" and index.distance.value == "cosine"


def test_properties_come_back_as_export_rows_and_stored_chunks() -> None:
    obj = _object(2)
    stored = _as_stored(obj)
    row = ws._export_row(stored, with_vectors=True)
    assert list(row) == [*EXPORT_FIELDS, "vector"]
    assert row == {**{name: getattr(obj, name) for name in EXPORT_FIELDS}, "vector": obj.vector.tolist()}
    assert "vector" not in ws._export_row(stored, with_vectors=False)
    assert ws._stored_chunk(stored) == StoredChunk(id=obj.id, path=obj.path, chunk_index=obj.chunk_index,
                                                   content=obj.content, content_sha256=obj.content_sha256)


def test_the_schema_compares_filtered_text_whole() -> None:
    from weaviate.classes.config import DataType, Tokenization

    schema = {prop.name: prop for prop in ws._schema()}
    assert set(schema) == set(ws._properties(_object(0)))
    for name in ("repo", "path", "language", "content_sha256", "commit", "indexed_at", "embedding_model"):
        assert (schema[name].dataType, schema[name].tokenization) == (DataType.TEXT, Tokenization.FIELD), name
    for name in ("chunk_index", "start_line", "end_line", "fence"):
        assert schema[name].dataType == DataType.INT, name
    assert schema["fence"].indexRangeFilters is True
    assert schema["content"].indexFilterable is False and schema["content"].tokenization is None


# --- filters -----------------------------------------------------------------------------------

def test_id_filters_take_one_batch_of_canonical_ids() -> None:
    ids = [_object(i).id for i in range(3)]
    assert _leaves(ws._id_filter([ids[0].upper(), *ids[1:]])) == [("_id", "ContainsAny", ids)]
    assert len(_leaves(ws._id_filter([object_id("c", "r", "p", i) for i in range(ws.ID_BATCH)]))[0][2]) == ws.ID_BATCH
    with pytest.raises(ValueError, match="1 to"):
        ws._id_filter([])
    with pytest.raises(ValueError, match="1 to"):
        ws._id_filter([object_id("c", "r", "p", i) for i in range(ws.ID_BATCH + 1)])
    with pytest.raises(ValueError):
        ws._id_filter(["id-0"])


def test_ids_are_split_at_the_batch_size() -> None:
    ids = [object_id("c", "r", "p", i) for i in range(2 * ws.ID_BATCH + 5)]
    parts = list(ws._chunks(ids, ws.ID_BATCH))
    assert [len(p) for p in parts] == [ws.ID_BATCH, ws.ID_BATCH, 5] and sum(parts, []) == ids
    assert list(ws._chunks([], ws.ID_BATCH)) == []


def test_a_fenced_delete_filters_ids_and_fence() -> None:
    ids = [_object(i).id for i in range(2)]
    where = ws._delete_filter(ids, 12)
    assert where.operator == "And"
    assert _leaves(where) == [("_id", "ContainsAny", ids), ("fence", "LessThanEqual", 12)]


def test_repository_and_path_filters() -> None:
    assert _leaves(ws._repo_filter("repo a")) == [("repo", "Equal", "repo a")]
    assert _leaves(ws._paths_filter("r", ["a.py", "b/c.py"])) == [
        ("repo", "Equal", "r"), ("path", "ContainsAny", ["a.py", "b/c.py"])]
    with pytest.raises(ValueError, match="1 to"):
        ws._paths_filter("r", [f"{i}.py" for i in range(ws.PATH_BATCH + 1)])


# --- the fence rule ----------------------------------------------------------------------------

def test_an_older_writer_never_overwrites_a_newer_one() -> None:
    missing, older, equal, newer = (_object(i, fence=5) for i in range(4))
    stored = {older.id: 4, equal.id: 5, newer.id: 6}
    assert ws._writable([missing, older, equal, newer], stored) == [missing, older, equal]
    assert ws._writable([newer], {newer.id.upper().lower(): 6}) == []
    assert ws._writable([], stored) == []


def test_of_one_id_twice_the_highest_fence_is_the_candidate() -> None:
    low, high = _object(0, fence=3), replace(_object(0, fence=9), content="new")
    assert ws._writable([high, low], {}) == [high]
    assert ws._writable([low, high], {low.id: 10}) == []
    last = replace(high, content="last")
    assert ws._writable([high, last], {}) == [last]


# --- answers -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("distance", "score"), [(0.0, 1.0), (0.25, 0.75), (1.0, 0.0), (2.0, -1.0)])
def test_the_score_is_one_minus_the_cosine_distance(distance: float, score: float) -> None:
    assert ws._score(distance) == pytest.approx(score)


def test_a_hit_is_built_from_the_query_object() -> None:
    obj = _object(1)
    assert ws._hit(_as_stored(obj, distance=0.125)) == SearchHit(
        id=obj.id, repo="repo", path="src/a.py", chunk_index=1, start_line=11, end_line=19, content=obj.content,
        language="python", score=0.875)
    with pytest.raises(ValueError, match="distance"):
        ws._hit(_as_stored(obj))
    # With the query, the hit carries the cosine of the query and the returned name vector.
    stored = _as_stored(obj, distance=0.125)
    stored.vector[ws.NAMES_VECTOR] = [0.0, 0.0, 0.6, 0.8]
    assert ws._hit(stored, np.array([0.0, 0.0, 1.0, 0.0], dtype=np.float32)).name_score == pytest.approx(0.6)
    assert ws._hit(_as_stored(obj, distance=0.125), np.ones(4, dtype=np.float32)).name_score == 0.0


# --- failures ----------------------------------------------------------------------------------

def test_an_unreachable_server_raises_store_error_quickly_without_the_key() -> None:
    url = f"http://127.0.0.1:{_closed_port()}?grpc_port={_closed_port()}"
    store = ws.WeaviateStore(url=url, api_key=SECRET, collection="codeindex", timeout_s=1.0)
    for call in (lambda: store.count(), lambda: store.ensure_collection(4), lambda: store.upsert([_object(0)])):
        started = time.monotonic()
        with pytest.raises(StoreError, match="Weaviate connect on collection Codeindex failed") as caught:
            call()
        assert time.monotonic() - started < 5.0
        assert SECRET not in str(caught.value) and SECRET not in repr(caught.value.__cause__)


def test_a_failure_that_names_the_key_is_blanked_and_not_chained() -> None:
    def factory():
        raise WeaviateConnectionError(f"refused for key {SECRET}")

    store = ws.WeaviateStore(factory, api_key=SECRET, collection="codeindex", tenant="repo_a")
    with pytest.raises(StoreError) as caught:
        store.search(np.ones(4), k=3)
    assert SECRET not in str(caught.value) and "***" in str(caught.value) and "tenant repo_a" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# --- lexical search and filters ------------------------------------------------------------------

def test_the_terms_property_is_whitespace_tokenized_and_only_searched() -> None:
    from weaviate.classes.config import DataType, Tokenization

    terms = {prop.name: prop for prop in ws._schema()}["terms"]
    assert (terms.dataType, terms.tokenization) == (DataType.TEXT, Tokenization.WHITESPACE)
    assert (terms.indexSearchable, terms.indexFilterable) == (True, False)


def test_search_filters_become_one_weaviate_filter() -> None:
    assert ws._search_filter(None) is None and ws._search_filter(SearchFilter()) is None
    assert _leaves(ws._search_filter(SearchFilter(repo="r"))) == [("repo", "Equal", "r")]
    both = ws._search_filter(SearchFilter(repo="r", language="go"))
    assert both.operator == "And" and _leaves(both) == [("repo", "Equal", "r"), ("language", "Equal", "go")]
    glob = ws._search_filter(SearchFilter(path="src/**/*.py"))
    assert glob.operator == "Or"
    assert [(o.target, o.operator, o.value) for o in glob.filters] == [
        ("path", "Like", "src/*.py"), ("path", "Like", "src/*.py/*")]
    with pytest.raises(UsageError, match="character classes"):
        SearchFilter(path="src/[ab].py")


def test_bm25_hits_carry_the_score_and_filters_are_checked_exactly() -> None:
    obj = _object(1)
    stored = Object(uuid=uuid.UUID(obj.id), metadata=MetadataReturn(score=2.5), properties=ws._properties(obj),
                    references=None, vector={}, collection="Codeindex")
    assert ws._lexical_hit(stored) == SearchHit(id=obj.id, repo="repo", path="src/a.py", chunk_index=1, start_line=11,
                                                end_line=19, content=obj.content, language="python", score=2.5)
    with pytest.raises(ValueError, match="score"):
        ws._lexical_hit(_as_stored(obj, distance=0.1))
    assert ws._admits(SearchFilter(repo="repo", language="python"), stored)
    assert not ws._admits(SearchFilter(repo="repo "), stored) and not ws._admits(SearchFilter(language="go"), stored)
