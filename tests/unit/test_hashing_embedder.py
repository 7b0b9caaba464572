"""The model-free feature-hashing embedder (indexing/embedders.py: HashingEmbedder)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.embedders import Embedder, HashingEmbedder, embedder_kind_for_model, make_embedder

SNIPPETS = [
    "def get_user_name(user):\n    return user.name",
    "class Connection:\n    def connect(self, host, port):\n        self.sock = socket.create_connection((host, port))",
    "SELECT * FROM users WHERE id = 1",
    "é ü ß — unicode text ✓",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_is_an_embedder():
    e = HashingEmbedder()
    assert isinstance(e, Embedder)
    assert e.distance == "cosine"
    assert e.dimension == 384 and e.max_tokens == 256


def test_deterministic_across_instances():
    a = HashingEmbedder().embed(SNIPPETS)
    b = HashingEmbedder().embed(list(reversed(SNIPPETS)))[::-1]
    assert np.array_equal(a, b)
    # one text at a time gives the same rows as a batch
    single = np.vstack([HashingEmbedder().embed([t]) for t in SNIPPETS])
    assert np.array_equal(a, single)


def test_bucket_is_blake2b_of_the_feature():
    # BLAKE2b, not Python's salted hash(): the same features land in the same buckets
    # in every process. "x" alone is one feature with TF 1: exactly one entry, +-1.
    digest = int.from_bytes(hashlib.blake2b(b"x", digest_size=8).digest(), "little")
    index, sign = digest % 64, (1.0 if digest >> 63 else -1.0)
    v = HashingEmbedder(dimension=64).embed(["x"])[0]
    assert np.flatnonzero(v).tolist() == [index]
    assert v[index] == sign


@pytest.mark.parametrize("dimension", [8, 128, 384])
def test_shape_dtype_and_norm(dimension):
    e = HashingEmbedder(dimension=dimension)
    out = e.embed(SNIPPETS)
    assert out.shape == (len(SNIPPETS), dimension)
    assert out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_empty_inputs():
    e = HashingEmbedder(dimension=16)
    assert e.embed([]).shape == (0, 16)
    assert e.embed([]).dtype == np.float32
    # no word pieces at all: a zero vector rather than NaN
    out = e.embed(["", "   \n\t"])
    assert out.shape == (2, 16)
    assert not np.isnan(out).any()
    assert np.all(out == 0)


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.text(max_size=80), min_size=1, max_size=5))
def test_property_rows_are_unit_or_zero(texts):
    out = HashingEmbedder(dimension=32).embed(texts)
    assert out.shape == (len(texts), 32) and out.dtype == np.float32
    assert np.isfinite(out).all()
    norms = np.linalg.norm(out, axis=1)
    for text, norm in zip(texts, norms):
        if any(ch.isascii() and ch.isalnum() for ch in text):
            assert norm == pytest.approx(1.0, abs=1e-5)
        else:  # no ASCII word piece: either other features (unit) or none at all (zero)
            assert norm == 0.0 or norm == pytest.approx(1.0, abs=1e-5)


def test_similar_code_is_closer_than_unrelated_text():
    e = HashingEmbedder()
    snake, camel, other_code, prose = e.embed([
        "def get_user_name(user):\n    return user.name",
        "function getUserName(user) { return user.name; }",
        "for row in matrix:\n    total += sum(row)",
        "The weather in Paris was sunny and warm all afternoon.",
    ])
    assert cosine(snake, camel) > 0.5
    assert cosine(snake, camel) > cosine(snake, prose) + 0.3
    assert cosine(snake, camel) > cosine(snake, other_code)
    assert cosine(snake, snake) == pytest.approx(1.0, abs=1e-5)


def test_identifier_splitting_shares_features():
    e = HashingEmbedder()
    a, b, c = e.embed(["parseHttpResponse", "parse_http_response", "render_html_template"])
    assert cosine(a, b) == pytest.approx(1.0, abs=1e-5)  # same word pieces, same bigrams
    assert cosine(a, c) < 0.5


def test_count_tokens():
    e = HashingEmbedder()
    assert e.count_tokens([]) == []
    assert e.count_tokens(["", "getUserName", "get_user_name", "x = 42 + y", "a\nb"]) == [0, 3, 5, 5, 2]


def test_model_id_encodes_dimension():
    assert HashingEmbedder().model_id == "feature-hashing-v1-384"
    assert HashingEmbedder(dimension=128).model_id == "feature-hashing-v1-128"
    kind, dimension = embedder_kind_for_model("feature-hashing-v1-96")
    e = make_embedder(kind, hashing_dimension=dimension)
    assert isinstance(e, HashingEmbedder)
    assert e.dimension == 96
    assert e.embed(["x"]).shape == (1, 96)


def test_dimension_changes_vectors():
    a = HashingEmbedder(dimension=64).embed(["def f(): return 1"])
    b = HashingEmbedder(dimension=128).embed(["def f(): return 1"])
    assert a.shape != b.shape
