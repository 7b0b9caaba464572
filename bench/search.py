#!/usr/bin/env python
"""Search quality and latency of ``codeindex search``, against the usual splitter.

    .venv/bin/python bench/search.py [--repos click,kombu] [--skip-baseline] [--latency-chunks 50000]
                                     [--max-queries N] [--embedder minilm|hashing] [--name-weight 0.3]

Quality (CodeSearchNet's construction, Husain et al. 2019): for every function with a docstring
in the measured sources, the query is the docstring's first sentence; the indexed copy of the
repository has those docstrings removed (replaced by ``...`` where the body would be empty); a
result is relevant when it is the function's file and its line range overlaps the function's
(decorators to last line, in the stripped copy). Each repository is indexed by the real CLI
(``codeindex sync --all``, its own index home) and searched through ``indexing.search.search``
in each mode; the baseline is LangChain's ``RecursiveCharacterTextSplitter(1500, 200)`` over the
same files, embedded with the same model, ranked by cosine. Figures: MRR@10, Recall@1/5/10
(a relevant hit within the top k), and a paired bootstrap 95 % interval (10,000 resamples of
the queries) of each mode's MRR@10 minus the baseline's.

Repositories: ``click`` (cloned from ../shared/data/click.bundle, queries from ``src/click/``;
skipped with a note when the bundle is absent), ``kombu`` and ``codeindex`` (an installed
package's sources / this project's ``indexing/``, copied into a fresh git repository).

Every mode searches as the product does, with the chunks' name vectors (indexing/names.py) at
``--name-weight`` (default: the setting's default, CODEINDEX_SEARCH_NAME_WEIGHT); one more row,
``vector-plain``, is the vector mode with name weight 0 (the chunk's vector alone), and the
figures include each mode's interval against it.

Latency: an index of at least ``--latency-chunks`` chunks of real code (site-packages sources,
chunked by the product's chunker, upserted through ``LanceDBStore`` with feature-hashing vectors
of the model's dimension: vector search costs the same whatever the values), queried one query
at a time through ``indexing.search.search`` with the real model embedding each query; p50 and
p95 per mode, in milliseconds, end to end (embedding included).

Progress goes to stderr; stdout gets the tables and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexing.chunking import chunk_text  # noqa: E402  (after the path set-up above)
from indexing.embedders import make_embedder  # noqa: E402
from indexing.ids import object_id, sha256_hex  # noqa: E402
from config.settings import Settings  # noqa: E402
from indexing.lance_store import LanceDBStore  # noqa: E402
from indexing.languages import language_of  # noqa: E402
from indexing.names import Definitions  # noqa: E402
from indexing.search import SearchMode, search  # noqa: E402
from indexing.store import VectorObject  # noqa: E402

CLICK_BUNDLE = ROOT.parent / "shared" / "data" / "click.bundle"
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false"]
K = 10
BOOTSTRAP = 10_000


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")


@dataclass(frozen=True)
class Query:
    text: str
    path: str
    start: int
    end: int


# --- the construction ----------------------------------------------------------------------------

def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every function of ``tree`` in source order (the same order in the stripped copy)."""
    found = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


def _docstring_node(fn) -> ast.Expr | None:
    first = fn.body[0] if fn.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def first_sentence(doc: str) -> str:
    """The docstring's first sentence: its first paragraph, up to the first ``. ``."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    cut = paragraph.find(". ")
    return (paragraph[: cut + 1] if cut >= 0 else paragraph).strip()


def strip_file(source: str) -> tuple[str, list[tuple[str, int]]] | None:
    """``source`` with every function docstring removed (``...`` where the body would be empty),
    and each stripped function's (query, index among the file's functions). None when the file
    does not parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    lines = source.splitlines()
    cuts: dict[int, tuple[int, str | None]] = {}
    queries = []
    for n, fn in enumerate(_functions(tree)):
        node = _docstring_node(fn)
        if node is None or node.lineno == fn.lineno:  # a one-line def: nothing to cut cleanly
            continue
        text = first_sentence(ast.get_docstring(fn) or "")
        indent = " " * node.col_offset
        cuts[node.lineno - 1] = (node.end_lineno, indent + "..." if len(fn.body) == 1 else None)
        if len(text.split()) >= 3:
            queries.append((text, n))
    out, i = [], 0
    while i < len(lines):
        if i in cuts:
            end, replacement = cuts[i]
            if replacement is not None:
                out.append(replacement)
            i = end
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out) + "\n", queries


def build_tree(source_dir: Path, query_prefix: str, dest: Path, max_queries: int | None) -> list[Query]:
    """Copy ``source_dir``'s text files into ``dest`` (a fresh git repository), stripping the
    docstrings of the Python files under ``query_prefix``; return the queries."""
    queries: list[Query] = []
    if (source_dir / ".git").exists():  # a repository: its tracked files only (not a venv or an index)
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=source_dir, check=True, capture_output=True, text=True)
        files = [source_dir / rel for rel in listed.stdout.split("\0") if rel]
    else:
        files = [p for p in source_dir.rglob("*") if p.is_file()]
    for path in sorted(p for p in files if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(source_dir).as_posix()
        if "__pycache__" in rel or path.suffix in {".pyc", ".so", ".png", ".gif", ".ico", ".jpg"}:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if rel.endswith(".py") and rel.startswith(query_prefix):
            stripped = strip_file(text)
            if stripped is not None:
                text, found = stripped
                functions = _functions(ast.parse(text))
                for query, index in found:
                    fn = functions[index]
                    start = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
                    queries.append(Query(query, rel, start, fn.end_lineno))
        target.write_text(text, encoding="utf-8")
    subprocess.run([*GIT, "init", "-q", str(dest)], check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*GIT, "commit", "-qm", "bench"], cwd=dest, check=True)
    if max_queries and len(queries) > max_queries:
        queries = random.Random(0).sample(queries, max_queries)
    return queries


def source_of(name: str, work: Path) -> tuple[Path, str] | None:
    """(directory, query prefix) of a measured repository, or None when it is not on this machine."""
    if name == "click":
        if not CLICK_BUNDLE.exists():
            return None
        clone = work / "click-src"
        subprocess.run(["git", "clone", "-q", str(CLICK_BUNDLE), str(clone)], check=True)
        return clone, "src/click/"
    if name == "codeindex":
        return ROOT, "indexing/"
    import importlib.util  # here: only a package repository looks one up

    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return (Path(locations[0]), "") if locations else None


# --- measuring -------------------------------------------------------------------------------------

def reciprocal_ranks(queries: list[Query], ranked: list[list[tuple[str, int, int]]]) -> np.ndarray:
    """Per query: 1/rank of the first relevant hit in the top K, else 0."""
    out = np.zeros(len(queries))
    for n, (q, hits) in enumerate(zip(queries, ranked)):
        for rank, (path, start, end) in enumerate(hits[:K], 1):
            if path == q.path and start <= q.end and end >= q.start:
                out[n] = 1.0 / rank
                break
    return out


def figures(rr: np.ndarray) -> dict:
    return {"mrr10": round(float(rr.mean()), 3), "r1": round(float((rr >= 1).mean()), 3),
            "r5": round(float((rr >= 1 / 5).mean()), 3), "r10": round(float((rr > 0).mean()), 3)}


def paired_bootstrap(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Mean of a - b and its 95 % percentile interval over resampled queries."""
    rng = np.random.default_rng(0)
    diff = a - b
    means = diff[rng.integers(0, len(diff), size=(BOOTSTRAP, len(diff)))].mean(axis=1)
    return round(float(diff.mean()), 3), round(float(np.percentile(means, 2.5)), 3), round(float(np.percentile(means, 97.5)), 3)


def _copy_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy of an SQLite database (its backup API), also while it is written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(src) as source, sqlite3.connect(dst) as target:
        source.backup(target)


def index_with_cli(tree: Path, home: Path, embedder: str, cache: Path | None) -> float:
    """``codeindex sync --all`` of ``tree`` into ``home``; with ``cache``, the embedding cache is
    seeded from and saved to ``cache/embeddings.sqlite`` (vectors by model and text hash: a rerun
    embeds only texts it has not seen)."""
    if cache is not None and (cache / "embeddings.sqlite").exists():
        _copy_sqlite(cache / "embeddings.sqlite", home / "embeddings.sqlite")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    env.update(CODEINDEX_HOME=str(home), CODEINDEX_EMBEDDER=embedder)
    started = time.perf_counter()
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "codeindex"), "sync", "--all", "--root", str(tree)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sync failed ({proc.returncode}): {proc.stderr[-2000:]}")
    seconds = time.perf_counter() - started
    if cache is not None:
        _copy_sqlite(home / "embeddings.sqlite", cache / "embeddings.sqlite")
    return seconds


def _embed_cached(embedder, texts: list[str], cache: Path | None, kind: str = "baseline") -> np.ndarray:
    """``embedder.embed(texts)``, reusing ``cache/<kind>-<model>.npz`` (vectors by SHA-256 of the text)."""
    if cache is None:
        return embedder.embed(texts)
    keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    store = cache / f"{kind}-{embedder.model_id.replace('/', '_')}.npz"
    known: dict[str, np.ndarray] = {}
    if store.exists():
        data = np.load(store)
        known = dict(zip(data["keys"].tolist(), data["vectors"]))
    missing = [i for i, key in enumerate(keys) if key not in known]
    if missing:
        for i, vector in zip(missing, embedder.embed([texts[i] for i in missing])):
            known[keys[i]] = vector
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(store, keys=np.array(list(known)), vectors=np.stack(list(known.values())))
    return np.stack([known[key] for key in keys])


def baseline(tree: Path, paths: list[str], queries: list[Query], embedder,
             cache: Path | None) -> list[list[tuple[str, int, int]]]:
    """LangChain's RecursiveCharacterTextSplitter(1500, 200) over ``paths``, cosine top K."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter  # bench-only dependency

    splitter = RecursiveCharacterTextSplitter(chunk_size=1500, chunk_overlap=200, add_start_index=True)
    spans, texts = [], []
    for rel in paths:
        text = (tree / rel).read_text(encoding="utf-8")
        for doc in splitter.create_documents([text]):
            start = text.count("\n", 0, doc.metadata["start_index"]) + 1
            spans.append((rel, start, start + doc.page_content.count("\n")))
            texts.append(doc.page_content)
    log(f"baseline: {len(texts)} chunks to embed")
    matrix = _embed_cached(embedder, texts, cache)
    scores = embedder.embed([q.text for q in queries]) @ matrix.T
    top = np.argsort(-scores, axis=1)[:, :K]
    return [[spans[i] for i in row] for row in top]


def quality(name: str, work: Path, embedder_kind: str, skip_baseline: bool, max_queries: int | None,
            cache_root: Path | None, name_weight: float) -> dict | None:
    found = source_of(name, work)
    if found is None:
        log(f"{name}: not on this machine, skipped")
        return None
    source, prefix = found
    tree = work / f"{name}-tree"
    queries = build_tree(source, prefix, tree, max_queries)
    home = work / f"{name}-home"
    cache = cache_root / name if cache_root else None
    seconds = index_with_cli(tree, home, embedder_kind, cache)
    store = LanceDBStore(home / "lancedb", "codeindex")
    chunks = store.count()
    log(f"{name}: {len(queries)} queries, {chunks} chunks indexed in {seconds:.0f}s")
    embedder = make_embedder(embedder_kind)
    result: dict = {"repo": name, "queries": len(queries), "chunks": chunks, "modes": {}}
    rrs = {}
    runs = [(mode.value, mode, name_weight) for mode in SearchMode] + [("vector-plain", SearchMode.VECTOR, 0.0)]
    for label, mode, weight in runs:
        answers = search(store, embedder, [q.text for q in queries], K, mode, name_weight=weight)
        rrs[label] = reciprocal_ranks(queries, [[(h.hit.path, h.hit.start_line, h.hit.end_line) for h in a]
                                                for a in answers])
        result["modes"][label] = figures(rrs[label])
    result["vs_plain"] = {m: paired_bootstrap(rrs[m], rrs["vector-plain"]) for m in rrs if m != "vector-plain"}
    # The name weight was chosen on a random half of click's queries: each mode's MRR@10 on the
    # two halves of a fixed random split (seed 0), so that a figure on queries no choice saw is there.
    half = np.random.default_rng(0).permutation(len(queries))[: len(queries) // 2]
    mask = np.zeros(len(queries), dtype=bool)
    mask[half] = True
    result["halves"] = {m: [round(float(r[mask].mean()), 3), round(float(r[~mask].mean()), 3)] for m, r in rrs.items()}
    if not skip_baseline:
        paths = sorted({row["path"] for row in store.export()})
        rrs["baseline"] = reciprocal_ranks(queries, baseline(tree, paths, queries, embedder, cache))
        result["modes"]["baseline"] = figures(rrs["baseline"])
        result["vs_baseline"] = {m: paired_bootstrap(rrs[m], rrs["baseline"]) for m in rrs if m != "baseline"}
    result["hybrid_vs_vector"] = paired_bootstrap(rrs["hybrid"], rrs["vector"])
    result["hybrid_vs_lexical"] = paired_bootstrap(rrs["hybrid"], rrs["lexical"])
    return result


# --- latency ---------------------------------------------------------------------------------------

class _Precomputed:
    """An embedder that answers from vectors computed beforehand (the latency without the model)."""

    def __init__(self, vectors: dict[str, np.ndarray], model) -> None:
        self.vectors, self.dimension, self.model_id = vectors, model.dimension, model.model_id

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def latency(work: Path, target: int, queries: list[str], embedder_kind: str, name_weight: float) -> dict:
    hashing = make_embedder("hashing")
    store = LanceDBStore(work / "latency" / "lancedb", "codeindex")
    store.ensure_collection(hashing.dimension)
    pending: list[VectorObject] = []
    total = 0
    # Every site-packages directory on the path: this venv's and the one it layers on.
    roots = list(dict.fromkeys(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()))
    files = sorted((p, root) for root in roots for p in root.rglob("*.py") if p.stat().st_size < 256 * 1024)
    started = time.perf_counter()
    for path, root in files:
        if total + len(pending) >= target:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        rel = f"{roots.index(root)}/{path.relative_to(root).as_posix()}"  # unique across the roots
        chunks = chunk_text(text, hashing.max_tokens, hashing.count_tokens, "python")
        vectors = hashing.embed([c.text for c in chunks]) if chunks else []
        definitions = Definitions(text.split("\n"))
        named = [definitions.text(c.start_line, c.end_line) for c in chunks]
        name_vectors = dict(zip([n for n in named if n], hashing.embed([n for n in named if n]))) if any(named) else {}
        for c, v, n in zip(chunks, vectors, named):
            pending.append(VectorObject(
                id=object_id("codeindex", "site", rel, c.index), repo="site", path=rel, chunk_index=c.index,
                start_line=c.start_line, end_line=c.end_line, content=c.text, language=language_of(rel),
                content_sha256=sha256_hex(c.text.encode()), commit="", indexed_at="", embedding_model="bench",
                fence=1, vector=v, name_vector=name_vectors[n] if n else np.zeros(hashing.dimension, np.float32)))
        if len(pending) >= 5000:
            total += store.upsert(pending)
            pending = []
            store.settle(final=False)  # as a sync does between its batches
            log(f"latency index: {total} chunks")
    total += store.upsert(pending)
    store.settle()  # as a sync's commit does: the full-text index then covers all but a few rows
    log(f"latency index: {total} chunks in {time.perf_counter() - started:.0f}s")
    embedder = make_embedder(embedder_kind)
    embedder.embed(["warm up"])
    out: dict = {"chunks": total}
    for mode in SearchMode:
        search(store, embedder, [queries[0]], K, mode, name_weight=name_weight)  # warm the index caches
        times = []
        for q in queries:
            t = time.perf_counter()
            search(store, embedder, [q], K, mode, name_weight=name_weight)
            times.append((time.perf_counter() - t) * 1000)
        out[mode.value] = {"p50_ms": round(float(np.percentile(times, 50)), 1),
                           "p95_ms": round(float(np.percentile(times, 95)), 1)}
    # The same searches with each query's vector computed beforehand: what the store and the
    # fusion cost, without the model (whose time depends on what else the cores run).
    vectors = dict(zip(queries, embedder.embed(queries)))
    precomputed = _Precomputed(vectors, embedder)
    for mode in SearchMode:
        times = []
        for q in queries:
            t = time.perf_counter()
            search(store, precomputed, [q], K, mode, name_weight=name_weight)
            times.append((time.perf_counter() - t) * 1000)
        out[f"{mode.value}_without_model"] = {"p50_ms": round(float(np.percentile(times, 50)), 1),
                                              "p95_ms": round(float(np.percentile(times, 95)), 1)}
    embed_times = []
    for q in queries:
        t = time.perf_counter()
        embedder.embed([q])
        embed_times.append((time.perf_counter() - t) * 1000)
    out["query_embedding"] = {"p50_ms": round(float(np.percentile(embed_times, 50)), 1),
                              "p95_ms": round(float(np.percentile(embed_times, 95)), 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repos", default="click,kombu", help="comma-separated: click, codeindex, or a package")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--latency-chunks", type=int, default=50_000, help="0: no latency measurement")
    parser.add_argument("--max-queries", type=int, default=None, help="sample this many queries per repository")
    parser.add_argument("--embedder", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--name-weight", type=float, default=Settings.model_fields["search_name_weight"].default,
                        metavar="WEIGHT", help="the name vectors' weight in vector and hybrid search "
                                               "(default: CODEINDEX_SEARCH_NAME_WEIGHT's default)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep embeddings here between runs (per repository: the sync's cache, the baseline's)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="codeindex-bench-search-"))
    results: dict = {"embedder": args.embedder, "repos": [], "command": " ".join(sys.argv)}
    try:
        latency_queries: list[str] = []
        for name in filter(None, args.repos.split(",")):
            found = quality(name, work, args.embedder, args.skip_baseline, args.max_queries, args.cache,
                            args.name_weight)
            if found is None:
                continue
            results["repos"].append(found)
            print(f"\n{name}: {found['queries']} queries, {found['chunks']} chunks")
            print(f"  {'mode':<12} {'MRR@10':>7} {'R@1':>6} {'R@5':>6} {'R@10':>6}   MRR@10 - baseline [95% CI]")
            for mode, f in found["modes"].items():
                vs = found.get("vs_baseline", {}).get(mode)
                shown = f"{vs[0]:+.3f} [{vs[1]:+.3f}, {vs[2]:+.3f}]" if vs else ""
                print(f"  {mode:<12} {f['mrr10']:>7.3f} {f['r1']:>6.3f} {f['r5']:>6.3f} {f['r10']:>6.3f}   {shown}")
            hv, hl = found["hybrid_vs_vector"], found["hybrid_vs_lexical"]
            print(f"  hybrid - vector {hv[0]:+.3f} [{hv[1]:+.3f}, {hv[2]:+.3f}]; "
                  f"hybrid - lexical {hl[0]:+.3f} [{hl[1]:+.3f}, {hl[2]:+.3f}]")
            for mode, nv in found["vs_plain"].items():
                print(f"  {mode} - vector-plain {nv[0]:+.3f} [{nv[1]:+.3f}, {nv[2]:+.3f}]")
            print("  MRR@10 on the two halves of a random split (seed 0): " +
                  "; ".join(f"{m} {a:.3f} / {b:.3f}" for m, (a, b) in found["halves"].items()))
        if args.latency_chunks:
            for p in sorted((ROOT / "indexing").glob("*.py")):
                tree = ast.parse(p.read_text(encoding="utf-8"))
                latency_queries += [first_sentence(ast.get_docstring(f) or "") for f in _functions(tree)
                                    if ast.get_docstring(f)]
            latency_queries = [q for q in latency_queries if q][:200]
            results["latency"] = latency(work, args.latency_chunks, latency_queries, args.embedder, args.name_weight)
            lat = results["latency"]
            print(f"\nlatency: {len(latency_queries)} queries, one at a time, on {lat['chunks']} chunks (2 cores)")
            for mode in SearchMode:
                full, bare = lat[mode.value], lat[f"{mode.value}_without_model"]
                print(f"  {mode.value:<8} p50 {full['p50_ms']:>6.1f} ms  p95 {full['p95_ms']:>6.1f} ms   "
                      f"without the model: p50 {bare['p50_ms']:>6.1f} ms  p95 {bare['p95_ms']:>6.1f} ms")
            print(f"  query embedding alone: p50 {lat['query_embedding']['p50_ms']:.1f} ms, "
                  f"p95 {lat['query_embedding']['p95_ms']:.1f} ms")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
