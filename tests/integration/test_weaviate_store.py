"""The Weaviate store against a real server (``CODEINDEX_TEST_WEAVIATE_URL``, for example
``http://localhost:8080``, with ``CODEINDEX_TEST_WEAVIATE_API_KEY`` when it needs one): the
passage through the vector-store breaker that the LanceDB store's unit test makes, then fenced
upserts and deletes, deletes of more ids than one filter holds, search, count, export,
inventory and drop, for a whole collection and for one tenant of a multi-tenant collection.
Each test works in a collection of its own and drops it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace

import fakeredis
import numpy as np
import pybreaker
import pytest

from indexing.errors import StoreError
from indexing.ids import object_id
from indexing.store import SearchFilter, StoredChunk, VectorObject
from indexing.weaviate_store import ID_BATCH, WeaviateStore
from workers.breakers import Dependency, GuardedVectorStore, make_breaker

URL = os.environ.get("CODEINDEX_TEST_WEAVIATE_URL")
if not URL:
    pytest.skip("CODEINDEX_TEST_WEAVIATE_URL is not set: no Weaviate server to test against",
                allow_module_level=True)
API_KEY = os.environ.get("CODEINDEX_TEST_WEAVIATE_API_KEY") or None


@pytest.fixture(params=[None, "repo_tenant"], ids=["collection", "tenant"])
def store(request) -> Iterator[WeaviateStore]:
    collection = f"codeindex_test_{uuid.uuid4().hex[:12]}"
    store = WeaviateStore(url=URL, api_key=API_KEY, collection=collection, tenant=request.param, timeout_s=30.0)
    yield store
    whole = WeaviateStore(url=URL, api_key=API_KEY, collection=collection)
    whole.drop()
    whole.close()
    store.close()


def _object(collection: str, i: int, *, fence: int = 1, path: str = "a.py", dimension: int = 4) -> VectorObject:
    vector = np.zeros(dimension, dtype=np.float32)
    vector[i % dimension] = 1.0
    return VectorObject(id=object_id(collection, "repo", path, i), repo="repo", path=path, chunk_index=i,
                        start_line=i + 1, end_line=i + 1, content=f"line {i}", language="python",
                        content_sha256=f"sha{i}", commit="c0", indexed_at="2024-01-01T00:00:00Z",
                        embedding_model="test", fence=fence, vector=vector)


def test_guarded_store_passes_through_to_weaviate(store: WeaviateStore) -> None:
    cb = make_breaker(Dependency.VECTOR_STORE, fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    guarded = GuardedVectorStore(store, lambda: cb)
    guarded.ensure_collection(4)
    guarded.ensure_collection(4)  # a second creator finds it
    objects = [_object(store.collection, i) for i in range(3)]
    assert guarded.upsert(objects) == 3
    assert guarded.count() == 3 and guarded.count("repo") == 3 and guarded.count("other") == 0
    assert guarded.chunk_indexes("repo", ["a.py", "b.py"]) == {"a.py": [0, 1, 2]}
    hits = guarded.search(objects[1].vector, k=1)
    assert hits[0].id == objects[1].id and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert guarded.search(objects[1].vector, k=2, filters=SearchFilter(repo="other")) == []
    assert [row["id"] for row in guarded.export()] == sorted(obj.id for obj in objects)
    partial = guarded.export()
    next(partial)
    partial.close()  # a reader that stops early is not a failure of the store
    guarded.delete([objects[0].id], fence=1)
    assert guarded.count() == 2
    assert cb.current_state == pybreaker.STATE_CLOSED and cb.fail_counter == 0


def test_fences_decide_which_writer_wins(store: WeaviateStore) -> None:
    store.ensure_collection(4)
    first = _object(store.collection, 0, fence=5)
    assert store.upsert([first]) == 1
    assert store.upsert([replace(first, content="older writer", fence=4)]) == 0
    assert [c.content for c in store.inventory("repo")] == ["line 0"]
    assert store.upsert([replace(first, content="same writer again", fence=5)]) == 1
    assert store.upsert([replace(first, content="newer writer", fence=6)]) == 1
    assert [c.content for c in store.inventory("repo")] == ["newer writer"]
    store.delete([first.id], fence=5)  # an older deleter leaves it
    assert store.count() == 1
    store.delete([first.id], fence=6)
    assert store.count() == 0


def test_deletes_of_more_ids_than_one_filter_holds(store: WeaviateStore) -> None:
    store.ensure_collection(4)
    objects = [_object(store.collection, i, path=f"p{i % 7}.py") for i in range(2 * ID_BATCH + 50)]
    assert store.upsert(objects) == len(objects)
    assert store.count("repo") == len(objects)
    indexes = store.chunk_indexes("repo", [f"p{j}.py" for j in range(7)])
    assert sum(len(v) for v in indexes.values()) == len(objects)
    assert indexes["p3.py"] == sorted(o.chunk_index for o in objects if o.path == "p3.py")
    store.delete([o.id for o in objects[:-10]], fence=1)
    assert sorted(c.id for c in store.inventory("repo")) == sorted(o.id for o in objects[-10:])


def test_export_inventory_and_drop(store: WeaviateStore) -> None:
    store.ensure_collection(4)
    objects = [_object(store.collection, i) for i in range(5)]
    store.upsert(objects)
    rows = list(store.export(with_vectors=True))
    assert [row["id"] for row in rows] == sorted(o.id for o in objects)
    by_id = {o.id: o for o in objects}
    for row in rows:
        assert row["vector"] == pytest.approx(by_id[row["id"]].vector.tolist())
        assert (row["chunk_index"], row["embedding_model"]) == (by_id[row["id"]].chunk_index, "test")
    assert sorted(store.inventory("repo"), key=lambda c: c.chunk_index) == [
        StoredChunk(id=o.id, path=o.path, chunk_index=o.chunk_index, content=o.content,
                    content_sha256=o.content_sha256) for o in objects]
    assert list(store.inventory("other")) == []
    store.drop()
    assert store.count() == 0 and list(store.export()) == [] and store.search(objects[0].vector, k=3) == []
    with pytest.raises(StoreError, match="does not exist"):
        store.upsert(objects)
    store.ensure_collection(4)
    assert store.upsert(objects[:1]) == 1
