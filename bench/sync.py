#!/usr/bin/env python
"""Benchmark of ``codeindex sync`` against the targets of the performance issue.

    .venv/bin/python bench/sync.py [--quick] [--skip-model] [--files N] [--parts ABCD] [--keep]

A. default model (all-MiniLM-L6-v2, CPU), full index of a real tree (>= 1,000 files):
   files/s, chunks/s, and end-to-end sync time / model-alone embedding time (target <= 1.15).
B. feature-hashing embedder: full-index files/s; incremental sync of 100 changed files
   (target < 5 s); no-op ``--detect-changes`` sync in-process (target < 1 s) and through the
   real CLI (reported separately: it includes interpreter start-up).
C. chunk reuse: edit one function in each of 100 files, sync them: chunks re-embedded per
   edited file (target <= 2).
D. peak RSS of a sync of a 1,000-path and of a 10,000-path change list, each in a fresh
   process (target: within 20 % of each other).

The trees are real Python packages copied from this virtualenv's site-packages (text
files only, none over 256 KiB), committed to a fresh git repository under
/tmp/codeindex-bench-*; every measurement uses its own index home. Syncs are dispatched
exactly as the CLI dispatches them (``tasks.sync.plan.apply_async(...).get(...)``, eager
Celery with the default memory broker) with the settings' default batch sizes.

Progress goes to stderr; stdout gets the result table, per-measurement details and, as
its last line, one JSON document with every figure.

Internal: ``--child-memory N --repo PATH --home PATH`` is the child process of D.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

# --------------------------------------------------------------------------------------
# constants

SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
TEXT_SUFFIXES = {".py", ".pyi", ".md", ".txt", ".rst", ".json", ".toml", ".cfg"}
MAX_COPY_BYTES = 256 * 1024
# A embeds every chunk with the model (about 25 chunks/s on 2 cores), twice (sync, then the
# model alone): smaller files keep that run in minutes while keeping >= 1,000 real files.
MODEL_TREE_MAX_BYTES = 8 * 1024
# The >= 1,000-file tree (A, B, C): application-style libraries first.
SMALL_TREE_PACKAGES = [
    "celery", "kombu", "pydantic", "rich", "typer", "click", "git", "lancedb", "pyarrow",
    "billiard", "amqp", "jinja2", "pathspec", "pydantic_settings", "huggingface_hub",
    "sentence_transformers", "redis", "prompt_toolkit", "hypothesis", "_pytest", "networkx",
    "sympy", "transformers",
]
# The >= 10,000-file tree (D).
BIG_TREE_PACKAGES = [
    "transformers", "sympy", "networkx", "sklearn", "scipy", "numpy", "celery", "kombu",
    "pydantic", "rich", "typer", "click", "git", "lancedb", "pyarrow", "pygments", "pip",
    "setuptools", "huggingface_hub", "sentence_transformers", "hypothesis", "torch",
]
EDIT_MARKER = "_codeindex_bench_edit"
GIT = ["git", "-c", "user.email=bench@local", "-c", "user.name=bench", "-c", "commit.gpgsign=false",
       "-c", "init.defaultBranch=main", "-c", "core.autocrlf=false"]

TARGETS = {
    "A.ratio": ("<= 1.15", lambda v: v <= 1.15),
    "B.incremental_s": ("< 5 s", lambda v: v < 5.0),
    "B.noop_s": ("< 1 s", lambda v: v < 1.0),
    "B.cli_noop_s": ("< 1 s (reference: includes start-up)", lambda v: v < 1.0),
    "B.cli_incremental_s": ("< 5 s (reference: includes start-up)", lambda v: v < 5.0),
    "C.chunks_per_file": ("<= 2", lambda v: v <= 2.0),
    "D.ratio": ("<= 1.20", lambda v: v <= 1.20),
}

LANCE_NOTE = ("'store open/create' of a process's first sync includes `import lancedb` (about 1 s) "
              "and creating the table")

_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def strip_codeindex_env() -> list[str]:
    """Drop CODEINDEX_* variables so that every setting but the ones set here is the default."""
    dropped = sorted(k for k in os.environ if k.startswith("CODEINDEX_"))
    for key in dropped:
        del os.environ[key]
    return dropped


# --------------------------------------------------------------------------------------
# trees


def candidate_files(packages: list[str], max_bytes: int = MAX_COPY_BYTES):
    """Yield ``(source, relative destination)`` of every eligible text file, package by package."""
    for package in packages:
        base = SITE_PACKAGES / package
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            for name in sorted(filenames):
                src = Path(dirpath) / name
                if src.suffix not in TEXT_SUFFIXES or src.is_symlink() or name.startswith("."):
                    continue
                try:
                    size = src.stat().st_size
                except OSError:
                    continue
                if size > max_bytes:
                    continue
                yield src, Path(package) / src.relative_to(base)


def git(root: Path, *args: str, capture: bool = True) -> str:
    out = subprocess.run([*GIT, *args], cwd=root, check=True, capture_output=capture, text=True)
    return out.stdout if capture else ""


def build_tree(dest: Path, n_files: int, packages: list[str], max_bytes: int = MAX_COPY_BYTES) -> list[str]:
    """Copy ``n_files`` real text files (each at most ``max_bytes``) into ``dest``, ``git init``
    and commit; return their paths."""
    dest.mkdir(parents=True)
    paths: list[str] = []
    for src, rel in candidate_files(packages, max_bytes):
        if len(paths) >= n_files:
            break
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        paths.append(rel.as_posix())
    if len(paths) < n_files:
        raise SystemExit(f"only {len(paths)} eligible files in {SITE_PACKAGES} for {n_files} wanted")
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "bench tree")
    return paths


def commit_all(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD").strip()


# --------------------------------------------------------------------------------------
# editing one function of a file


def _functions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        elif isinstance(node, ast.ClassDef):
            yield from (n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def plan_function_edit(source: str) -> tuple[int, str, str] | None:
    """Where to insert one statement in the body of the top-level function or method nearest the
    middle of ``source``: ``(line index to insert at, indentation, function name)``, or None."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    lines = source.split("\n")
    middle = len(lines) / 2
    best = None
    for fn in _functions(tree):
        body = fn.body
        if _is_docstring(body[0]):
            if len(body) > 1:
                anchor, at = body[1], body[1].lineno - 1  # after the docstring, before the next statement
            else:
                anchor, at = body[0], body[0].end_lineno  # after a docstring-only body
        else:
            anchor, at = body[0], body[0].lineno - 1
        line = lines[anchor.lineno - 1] if anchor.lineno - 1 < len(lines) else ""
        indent = line[: anchor.col_offset]
        if anchor.lineno <= fn.lineno or not indent or indent.strip(" \t") or "\t" in indent:
            continue  # one-liner, or an odd layout: not a clean place to edit
        score = abs(fn.lineno - middle)
        if best is None or score < best[0]:
            best = (score, at, indent, fn.name)
    return None if best is None else best[1:]


def edit_function(path: Path, tag: str) -> str | None:
    """Insert a statement in one function in the middle of ``path``; return the function's name,
    or None when the file has no suitable function (the file is then left untouched)."""
    try:
        source = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    if "\r" in source:
        return None
    spot = plan_function_edit(source)
    if spot is None:
        return None
    at, indent, name = spot
    lines = source.split("\n")
    lines.insert(at, f"{indent}{EDIT_MARKER} = {tag!r}  # benchmark edit")
    edited = "\n".join(lines)
    try:
        tree = ast.parse(edited)
    except SyntaxError:
        return None
    inside = any(
        isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == EDIT_MARKER for t in stmt.targets)
        for fn in _functions(tree) if fn.name == name for stmt in fn.body)
    if not inside:
        return None
    path.write_text(edited, encoding="utf-8")
    return name


def edit_files(root: Path, paths: list[str], count: int, seed: int) -> dict[str, tuple[str, str]]:
    """Edit one function in each of ``count`` .py files picked at random (seeded) among ``paths``;
    return ``{path: (old text, function name)}``."""
    pool = sorted(p for p in paths if p.endswith(".py"))
    random.Random(seed).shuffle(pool)
    edited: dict[str, tuple[str, str]] = {}
    for rel in pool:
        if len(edited) >= count:
            break
        path = root / rel
        try:
            old = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        name = edit_function(path, f"{seed}:{rel}")
        if name:
            edited[rel] = (old, name)
    return edited


# --------------------------------------------------------------------------------------
# codeindex plumbing


def configure(home: Path, embedder: str):
    """Configure codeindex exactly as the CLI does, with ``home`` and ``embedder`` overridden."""
    from config import settings as settings_mod
    from workers import runtime
    from workers.app import apply_settings

    settings = settings_mod.configure(home=home, embedder=embedder)
    runtime.reset()
    apply_settings(settings)
    return settings


def run_sync(root: Path, source: str, changes: list[tuple[str, str]] | None = None) -> tuple[dict, float]:
    """Dispatch one sync as the CLI does; return its summary dict and the wall-clock seconds."""
    from config.settings import get_settings
    from indexing.messages import SyncRequest
    from tasks.sync import plan

    request = SyncRequest(run_id=str(uuid.uuid4()), repo_id=root.name, root=str(root),
                          collection=get_settings().collection, source=source, changes=list(changes or []))
    payload = request.model_dump(mode="json")
    started = time.perf_counter()
    summary = plan.apply_async(args=[payload]).get(disable_sync_subtasks=False)
    seconds = time.perf_counter() - started
    if summary.get("errors"):
        bad = [f for f in summary["files"] if f["action"] == "ERROR"][:5]
        log(f"WARNING: sync reported {summary['errors']} errors, e.g. {bad}")
    return summary, seconds


def counts(summary: dict) -> str:
    return (f"+{summary['added']} ~{summary['updated']} -{summary['deleted']} ={summary['unchanged']} "
            f"skip {summary['skipped']} err {summary['errors']}; chunks {summary['chunks_embedded']} embedded, "
            f"{summary['chunks_reused']} reused")


def proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (``VmHWM``: peak resident, ``VmRSS``: resident now), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Phases:
    """Wall-clock time per step of a sync, by wrapping the functions the tasks call.

    Eager Celery runs everything in this thread, so the nesting is exact; ``read+decode`` is
    attributed to the planner or to the embedding batch, whichever is running.
    """

    # (label, parent): the steps shown, in order; "rest" rows are a parent's time outside its listed steps.
    ORDER = [
        ("plan_sync", None), ("git", "plan_sync"), ("state lookup", "plan_sync"), ("read+decode (plan)", "plan_sync"),
        ("index_batch", None), ("read+decode (batch)", "index_batch"), ("chunk_text", "index_batch"),
        ("count_tokens", "chunk_text"), ("cache get", "index_batch"), ("embed", "index_batch"),
        ("cache put", "index_batch"), ("store open/create", "index_batch"), ("store upsert", "index_batch"),
        ("commit_sync", None), ("store delete", "commit_sync"), ("state commit", "commit_sync"),
    ]
    REST = {"plan_sync": "rest: scan, hashing, filters", "index_batch": "rest: ids, hashes, objects",
            "commit_sync": "rest"}

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.embed_batches: list[int] = []
        self._patched: list[tuple[object, str, object]] = []
        self._in_plan = False
        self.rss: list[tuple[str, float | None]] = []  # (step, VmRSS MiB) after each top-level step

    def _wrap(self, owner, attr: str, label: str, plan_flag: bool = False) -> None:
        original = getattr(owner, attr)
        phases = self

        def wrapper(*args, **kwargs):
            name = label(phases) if callable(label) else label
            if plan_flag:
                phases._in_plan = True
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                phases.seconds[name] = phases.seconds.get(name, 0.0) + time.perf_counter() - started
                phases.calls[name] = phases.calls.get(name, 0) + 1
                if plan_flag:
                    phases._in_plan = False
                if name in phases.REST:
                    phases.rss.append((name, proc_status_mb("VmRSS")))

        self._patched.append((owner, attr, original))
        setattr(owner, attr, wrapper)

    def __enter__(self) -> Phases:
        import indexing.sync as isync
        from indexing.embed_cache import SQLiteEmbeddingCache
        from indexing.embedders import HashingEmbedder, MiniLMEmbedder
        from indexing.lance_store import LanceDBStore
        from indexing.state import SQLiteStateStore

        where = lambda p: "read+decode (plan)" if p._in_plan else "read+decode (batch)"  # noqa: E731
        self._wrap(isync, "plan_sync", "plan_sync", plan_flag=True)
        self._wrap(isync, "index_batch", "index_batch")
        self._wrap(isync, "commit_sync", "commit_sync")
        from indexing.tree import WorkTree

        for name in ("has_commit", "changes_since", "commit_time"):
            self._wrap(WorkTree, name, "git")
        self._wrap(WorkTree, "read", where)
        self._wrap(isync, "decode", where)
        self._wrap(isync, "chunk_text", "chunk_text")
        self._wrap(SQLiteStateStore, "file_states", "state lookup")
        self._wrap(SQLiteStateStore, "commit_files", "state commit")
        self._wrap(SQLiteEmbeddingCache, "get_many", "cache get")
        self._wrap(SQLiteEmbeddingCache, "put_many", "cache put")
        self._wrap(LanceDBStore, "upsert", "store upsert")
        self._wrap(LanceDBStore, "delete", "store delete")
        self._wrap(LanceDBStore, "ensure_collection", "store open/create")
        for cls in (HashingEmbedder, MiniLMEmbedder):
            self._wrap(cls, "count_tokens", "count_tokens")
            original_embed = cls.embed
            phases = self

            def embed(inner_self, texts, _orig=original_embed):
                phases.embed_batches.append(len(texts))
                return _orig(inner_self, texts)

            self._patched.append((cls, "embed", original_embed))
            cls.embed = embed
            self._wrap(cls, "embed", "embed")
        return self

    def __exit__(self, *exc) -> None:
        for owner, attr, original in reversed(self._patched):
            setattr(owner, attr, original)
        self._patched.clear()

    def table(self, total: float) -> list[str]:
        depth = {None: -1}
        for name, parent in self.ORDER:
            depth[name] = depth[parent] + 1

        def row(name: str, s: float, level: int, calls: int | None = None) -> str:
            label = f"{'  ' * level}{name}"
            return (f"{label:<34} {s:9.3f} s {100 * s / total:6.1f} %"
                    + (f"  ({calls} calls)" if calls is not None else ""))

        rows = []
        for top in (n for n, p in self.ORDER if p is None):
            if top not in self.seconds:
                continue
            rows.append(row(top, self.seconds[top], 0, self.calls[top]))
            for name, parent in self.ORDER:
                if parent is not None and name in self.seconds and self._under(name, top):
                    rows.append(row(name, self.seconds[name], depth[name], self.calls[name]))
            inner = sum(self.seconds.get(n, 0.0) for n, p in self.ORDER if p == top)
            rows.append(row(self.REST[top], self.seconds[top] - inner, 1))
        top_total = sum(self.seconds.get(n, 0.0) for n, p in self.ORDER if p is None)
        rows.append(row("other (Celery, messages, run records)", total - top_total, 0))
        return rows

    def _under(self, name: str, top: str) -> bool:
        parents = dict(self.ORDER)
        while parents.get(name) is not None:
            name = parents[name]
        return name == top

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}


# --------------------------------------------------------------------------------------
# results


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.figures: dict[str, object] = {}
        self.details: list[str] = []
        self.runtimes: dict[str, float] = {}

    def add(self, key: str, label: str, value: float | None, unit: str, fmt: str = "{:.3f}") -> None:
        self.figures[key] = None if value is None else round(value, 4)
        target, check = TARGETS.get(key, ("-", None))
        if value is None:
            verdict = "ERROR"
        elif check is None:
            verdict = "info"
        else:
            verdict = "PASS" if check(value) else "MISS"
        shown = "n/a" if value is None else f"{fmt.format(value)} {unit}".strip()
        self.rows.append((key, label, shown, target, verdict))
        if check is not None and value is not None:
            self.figures.setdefault("verdicts", {})[key] = verdict  # type: ignore[union-attr]

    def detail(self, title: str, lines: list[str]) -> None:
        self.details.append(f"\n{title}")
        self.details.extend(f"  {line}" for line in lines)

    def print(self, header: list[str]) -> None:
        out = sys.stdout
        out.write("\n".join(header) + "\n\n")
        widths = [max(len(r[i]) for r in self.rows + [("id", "measurement", "value", "target", "result")])
                  for i in range(5)]
        line = "  ".join("{:<%d}" % w for w in widths)
        out.write(line.format("id", "measurement", "value", "target", "result") + "\n")
        out.write("  ".join("-" * w for w in widths) + "\n")
        for r in self.rows:
            out.write(line.format(*r) + "\n")
        out.write("\n".join(self.details) + "\n")


# --------------------------------------------------------------------------------------
# A: the default model


def bench_model(report: Report, work: Path, n_files: int) -> None:
    from indexing.chunking import chunk_text
    from indexing.ids import sha256_hex
    from indexing.languages import language_of
    from indexing.scanner import decode, read_file
    from workers.runtime import runtime

    tree = work / "tree-a"
    log(f"A: building a {n_files}-file tree (files up to {MODEL_TREE_MAX_BYTES // 1024} KiB)")
    build_tree(tree, n_files, SMALL_TREE_PACKAGES, MODEL_TREE_MAX_BYTES)
    settings = configure(work / "home-a", "minilm")
    embedder = runtime().embedder
    log("A: loading and warming up all-MiniLM-L6-v2 (not timed)")
    warm = ["def warm_up(x):\n    return x + 1", "class Warm:\n    pass", "# warm up\nimport os"] * 4
    embedder.count_tokens(warm)
    embedder.embed(warm)
    try:
        import torch
        threads = torch.get_num_threads()
    except Exception:  # noqa: BLE001
        threads = None

    log("A: full index (source=all) with the model")
    with Phases() as phases:
        summary, sync_s = run_sync(tree, "all")
    log(f"A: sync {sync_s:.1f}s: {counts(summary)}")

    log("A: re-chunking the indexed files to collect the texts the sync embedded")
    texts: dict[str, str] = {}
    total_chunks = 0
    for entry in summary["files"]:
        if entry["action"] not in ("ADD", "UPDATE"):
            continue
        text = decode(read_file(tree, entry["path"], settings.max_file_size)).text
        for chunk in chunk_text(text, embedder.max_tokens, embedder.count_tokens, language_of(entry["path"])):
            total_chunks += 1
            texts.setdefault(sha256_hex(chunk.text.encode("utf-8", "surrogatepass")), chunk.text)
    unique = list(texts.values())
    if len(unique) != summary["chunks_embedded"]:
        log(f"WARNING: {len(unique)} unique chunk texts re-chunked, but the sync embedded {summary['chunks_embedded']}")
    log(f"A: model alone: embedding {len(unique)} texts in one call")
    started = time.perf_counter()
    embedder.embed(unique)
    model_s = time.perf_counter() - started
    log(f"A: model alone {model_s:.1f}s")

    files = summary["added"] + summary["updated"]
    chunks = summary["chunks_embedded"] + summary["chunks_reused"]
    ratio = sync_s / model_s if model_s > 0 else None
    report.add("A.files_per_s", "minilm full index: files/s", files / sync_s, "files/s", "{:.1f}")
    report.add("A.chunks_per_s", "minilm full index: chunks/s", chunks / sync_s, "chunks/s", "{:.1f}")
    report.add("A.sync_s", "minilm full index: end-to-end sync", sync_s, "s", "{:.2f}")
    report.add("A.model_s", "minilm: model alone, same unique chunks", model_s, "s", "{:.2f}")
    report.add("A.ratio", "minilm: sync time / model-alone time", ratio, "", "{:.3f}")
    embed_in_sync = phases.seconds.get("embed", 0.0)
    report.figures["A.detail"] = {
        "files": files, "chunks": chunks, "chunks_embedded": summary["chunks_embedded"],
        "chunks_reused": summary["chunks_reused"], "unique_texts_rechunked": len(unique),
        "rechunked_total": total_chunks, "embed_calls_in_sync": len(phases.embed_batches),
        "embed_seconds_in_sync": round(embed_in_sync, 3), "torch_threads": threads,
        "model_batch_size": settings.model_batch_size, "batch_files": settings.batch_files,
        "batch_bytes": settings.batch_bytes, "phases": phases.as_dict(),
    }
    report.detail(f"A. minilm full index of {files} files / {chunks} chunks in {sync_s:.2f} s "
                  f"(torch threads {threads}); where the time went:", phases.table(sync_s) + [
        f"model alone on the {len(unique)} unique texts in one call: {model_s:.2f} s; inside the sync the model "
        f"ran {len(phases.embed_batches)} calls for {embed_in_sync:.2f} s",
        LANCE_NOTE,
    ])


# --------------------------------------------------------------------------------------
# B: hashing embedder, full / incremental / no-op


def bench_hashing(report: Report, work: Path, n_files: int, n_edits: int, repeats: int) -> None:
    tree = work / "tree-b"
    home = work / "home-b"
    log(f"B: building a {n_files}-file tree")
    paths = build_tree(tree, n_files, SMALL_TREE_PACKAGES)
    configure(home, "hashing")

    log("B: full index (source=all)")
    with Phases() as full_phases:
        full, full_s = run_sync(tree, "all")
    log(f"B: full index {full_s:.2f}s: {counts(full)}")
    files = full["added"] + full["updated"]
    chunks = full["chunks_embedded"] + full["chunks_reused"]
    report.add("B.files_per_s", "hashing full index: files/s", files / full_s, "files/s", "{:.1f}")
    report.add("B.full_s", "hashing full index: seconds", full_s, "s", "{:.2f}")
    report.detail(f"B. hashing full index of {files} files / {chunks} chunks in {full_s:.2f} s "
                  f"({chunks / full_s:.0f} chunks/s); where the time went:", full_phases.table(full_s) + [LANCE_NOTE])

    edited = edit_files(tree, paths, n_edits, seed=1)
    commit_all(tree, "bench: incremental edits")
    log(f"B: incremental sync of {len(edited)} modified files (source=paths)")
    with Phases() as inc_phases:
        inc, inc_s = run_sync(tree, "paths", [(p, "modified") for p in edited])
    log(f"B: incremental {inc_s:.3f}s: {counts(inc)}")
    report.add("B.incremental_s", f"hashing incremental sync of {len(edited)} changed files", inc_s, "s")
    report.detail(f"B. incremental sync of {len(edited)} files ({counts(inc)}) in {inc_s:.3f} s:",
                  inc_phases.table(inc_s))

    log("B: --detect-changes sync that advances the indexed commit")
    adv, adv_s = run_sync(tree, "detect")
    log(f"B: detect {adv_s:.3f}s: {counts(adv)}")
    noop_runs = []
    phases_first = None
    for i in range(repeats):
        with Phases() as ph:
            noop, noop_s = run_sync(tree, "detect")
        phases_first = phases_first or (ph, noop_s, noop)
        noop_runs.append(noop_s)
        if noop["added"] or noop["updated"] or noop["deleted"] or noop["unchanged"]:
            log(f"WARNING: the no-op detect sync was not a no-op: {counts(noop)}")
    log(f"B: no-op detect syncs: {', '.join(f'{s:.3f}' for s in noop_runs)} s")
    report.add("B.noop_s", f"hashing no-op --detect-changes, in-process (median of {repeats})",
               statistics.median(noop_runs), "s")

    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    env.update(CODEINDEX_EMBEDDER="hashing", CODEINDEX_HOME=str(home))
    cli = Path(sys.executable).parent / "codeindex"
    cli_runs, cli_out = [], ""
    for i in range(repeats):
        started = time.perf_counter()
        proc = subprocess.run([str(cli), "sync", "--detect-changes"], cwd=tree, env=env,
                              capture_output=True, text=True)
        cli_runs.append(time.perf_counter() - started)
        cli_out = proc.stdout + proc.stderr
        if proc.returncode != 0 or "Processing 0 changes" not in proc.stdout:
            log(f"WARNING: CLI no-op exited {proc.returncode}: {cli_out.strip()[-400:]}")
    log(f"B: CLI no-op: {', '.join(f'{s:.3f}' for s in cli_runs)} s")
    report.add("B.cli_noop_s", f"hashing no-op via `codeindex sync --detect-changes` (median of {repeats})",
               statistics.median(cli_runs), "s")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import cli.main, tasks.sync"], check=True, env=env)
    imports = time.perf_counter() - started
    # For scale: the same kind of incremental sync through the CLI, paths piped on stdin
    # (interpreter start-up, imports and the LanceDB import included).
    more = edit_files(tree, paths, n_edits, seed=3)
    commit_all(tree, "bench: incremental edits through the CLI")
    listing = git(tree, "diff", "--name-only", "HEAD~1", "HEAD")
    started = time.perf_counter()
    proc = subprocess.run([str(cli), "sync"], cwd=tree, env=env, input=listing, capture_output=True, text=True)
    cli_inc_s = time.perf_counter() - started
    if proc.returncode != 0 or f"Updated:   {len(more)} files" not in proc.stdout:
        log(f"WARNING: CLI incremental sync exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-400:]}")
    log(f"B: CLI incremental sync of {len(more)} files: {cli_inc_s:.3f} s")
    report.add("B.cli_incremental_s", f"hashing incremental sync of {len(more)} files via `git diff | codeindex sync`",
               cli_inc_s, "s")
    ph, s, _ = phases_first
    report.detail(f"B. no-op --detect-changes in-process: runs {', '.join(f'{x:.3f}' for x in noop_runs)} s; "
                  f"the first one:", ph.table(s))
    report.detail("B. no-op through the CLI:", [
        f"runs: {', '.join(f'{x:.3f}' for x in cli_runs)} s",
        f"for scale: bare `python -c pass` {bare:.3f} s; `python -c 'import cli.main, tasks.sync'` {imports:.3f} s",
        "last output: " + " | ".join(line.strip() for line in cli_out.strip().splitlines() if line.strip()),
    ])
    report.figures["B.detail"] = {
        "files": files, "chunks": chunks, "full_phases": full_phases.as_dict(),
        "incremental": {k: inc[k] for k in ("added", "updated", "unchanged", "skipped", "errors",
                                            "chunks_embedded", "chunks_reused")},
        "incremental_phases": inc_phases.as_dict(), "advancing_detect_s": round(adv_s, 3),
        "noop_runs_s": [round(x, 4) for x in noop_runs], "cli_runs_s": [round(x, 4) for x in cli_runs],
        "python_startup_s": round(bare, 4), "import_cli_s": round(imports, 4), "cli_incremental_s": round(cli_inc_s, 3),
    }


# --------------------------------------------------------------------------------------
# C: chunk reuse after editing one function per file


def bench_reuse(report: Report, work: Path, n_files: int, n_edits: int) -> None:
    from indexing.chunking import chunk_text
    from indexing.ids import sha256_hex
    from indexing.languages import language_of
    from workers.runtime import runtime

    tree = work / "tree-c"
    log(f"C: building a {n_files}-file tree")
    paths = build_tree(tree, n_files, SMALL_TREE_PACKAGES)
    settings = configure(work / "home-c", "hashing")
    embedder = runtime().embedder
    log("C: full index (source=all)")
    full, full_s = run_sync(tree, "all")
    log(f"C: full index {full_s:.2f}s: {counts(full)}")

    edited = edit_files(tree, paths, n_edits, seed=2)
    commit_all(tree, "bench: one function edited per file")
    log(f"C: sync of {len(edited)} files with one function edited each")
    summary, seconds = run_sync(tree, "paths", [(p, "modified") for p in edited])
    log(f"C: {seconds:.3f}s: {counts(summary)}")
    n = len(edited)
    per_file = summary["chunks_embedded"] / n if n else None
    report.add("C.chunks_per_file", f"chunks re-embedded per edited file ({n} files, 1 function each)",
               per_file, "chunks", "{:.2f}")
    report.add("C.chunks_reused", "chunks reused from the cache in that sync", summary["chunks_reused"], "chunks",
               "{:.0f}")

    # Per-file view: how many chunk texts of each edited file are new (not in its old version).
    def hashes(text: str, rel: str) -> list[str]:
        return [sha256_hex(c.text.encode("utf-8", "surrogatepass"))
                for c in chunk_text(text, embedder.max_tokens, embedder.count_tokens, language_of(rel))]

    new_per_file, chunks_per_file = [], []
    worst: list[tuple[int, str, str]] = []
    for rel, (old, name) in edited.items():
        now = hashes((tree / rel).read_text(encoding="utf-8"), rel)
        fresh = len(set(now) - set(hashes(old, rel)))
        new_per_file.append(fresh)
        chunks_per_file.append(len(now))
        worst.append((fresh, rel, name))
    worst.sort(reverse=True)
    histogram: dict[int, int] = {}
    for k in new_per_file:
        histogram[k] = histogram.get(k, 0) + 1
    report.detail(f"C. {n} files edited (one statement inserted in one function each), synced in {seconds:.3f} s: "
                  f"{counts(summary)}", [
        f"new chunk texts per file (re-chunking old vs new text): mean {statistics.mean(new_per_file):.2f}, "
        f"max {max(new_per_file)}; histogram {dict(sorted(histogram.items()))}",
        f"chunks per edited file: mean {statistics.mean(chunks_per_file):.1f}, median "
        f"{statistics.median(chunks_per_file):.0f}",
        "most re-embedded: " + "; ".join(f"{rel} ({name}): {k}" for k, rel, name in worst[:5]),
    ])
    report.figures["C.detail"] = {
        "edited_files": n, "chunks_embedded": summary["chunks_embedded"], "chunks_reused": summary["chunks_reused"],
        "seconds": round(seconds, 3), "new_chunks_histogram": histogram, "max_new_chunks": max(new_per_file),
    }


# --------------------------------------------------------------------------------------
# D: peak memory by change-list size


def child_memory(n: int, repo: Path, home: Path) -> None:
    """The child of D: sync the first ``n`` files of ``repo`` as a path list; print one JSON line.

    The peak is ``VmHWM`` (falling back to ``ru_maxrss``): on Linux ``ru_maxrss`` survives
    ``execve``, so a child spawned by a big parent (this benchmark, after B and C) reports the
    parent's resident size at spawn time whenever that is larger than its own peak.
    """
    configure(home, "hashing")
    listed = sorted(p for p in git(repo, "ls-files", "-z").split("\0") if p)
    if len(listed) < n:
        raise SystemExit(f"the tree has {len(listed)} files, fewer than {n}")
    changes = [(p, "modified") for p in listed[:n]]
    baseline = proc_status_mb("VmHWM")
    with Phases() as phases:
        summary, seconds = run_sync(repo, "paths", changes)
    peak = proc_status_mb("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batches = [mb for step, mb in phases.rss if step == "index_batch"]
    steps = {"after plan": next((mb for step, mb in phases.rss if step == "plan_sync"), None)}
    for label, i in (("after batch 1", 0), ("after 1/4 of batches", len(batches) // 4),
                     ("after 1/2 of batches", len(batches) // 2), ("after the last batch", len(batches) - 1)):
        if batches:
            steps[f"{label} ({i + 1}/{len(batches)})"] = batches[i]
    steps["after commit"] = next((mb for step, mb in phases.rss if step == "commit_sync"), None)
    steps["at the end"] = proc_status_mb("VmRSS")
    print(json.dumps({
        "n": n, "peak_mb": peak if peak is not None else maxrss, "baseline_mb": baseline, "ru_maxrss_mb": maxrss,
        "seconds": seconds, "added": summary["added"], "skipped": summary["skipped"], "errors": summary["errors"],
        "chunks": summary["chunks_embedded"] + summary["chunks_reused"], "rss_mb": steps,
        "phases": phases.as_dict(), "phase_table": phases.table(seconds),
    }))


def bench_memory(report: Report, work: Path, sizes: list[int], tree_files: int) -> None:
    tree = work / "tree-d"
    log(f"D: building a {tree_files}-file tree")
    build_tree(tree, tree_files, BIG_TREE_PACKAGES)
    results = []
    for n in sizes:
        log(f"D: child process syncing a {n}-path change list")
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child-memory", str(n),
                               "--repo", str(tree), "--home", str(work / f"home-d-{n}")],
                              capture_output=True, text=True,
                              env={k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")})
        if proc.returncode != 0:
            log(f"D: child for {n} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
            results.append(None)
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"D: {n} paths: peak {result['peak_mb']:.0f} MB, {result['seconds']:.1f} s, {result['chunks']} chunks")
        results.append(result)
    small, large = results[0], results[-1]
    for n, r in zip(sizes, results):
        report.add(f"D.peak_mb_{n}", f"peak RSS, {n}-path change list (fresh process)",
                   r["peak_mb"] if r else None, "MB", "{:.0f}")
    ratio = large["peak_mb"] / small["peak_mb"] if small and large else None
    report.add("D.ratio", f"peak RSS {sizes[-1]} / {sizes[0]} paths", ratio, "", "{:.3f}")
    report.detail(f"D. peak memory by change-list size (tree of {tree_files} files, hashing embedder; peak = VmHWM "
                  "of the child's own address space, ru_maxrss for reference: Linux carries it across execve "
                  "from the spawning parent):", [
        f"{r['n']:>6} paths: peak {r['peak_mb']:.0f} MB (before the sync {r['baseline_mb'] or 0:.0f} MB; "
        f"ru_maxrss {r['ru_maxrss_mb']:.0f} MB), "
        f"{r['seconds']:.1f} s, {r['added']} added, {r['skipped']} skipped, {r['errors']} errors, {r['chunks']} chunks, "
        f"{r['added'] / r['seconds']:.0f} files/s" for r in results if r
    ] + [
        f"{r['n']:>6} paths, resident (VmRSS) MB: " + ", ".join(f"{k} {v:.0f}" for k, v in r["rss_mb"].items() if v)
        for r in results if r
    ])
    if large:
        report.detail(f"D. where the time of the {large['n']}-path sync went ({large['seconds']:.1f} s):",
                      large["phase_table"])
    report.figures["D.detail"] = {"tree_files": tree_files,
                                  "children": [{k: v for k, v in r.items() if k != "phase_table"} if r else None
                                               for r in results]}


# --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of under a minute")
    parser.add_argument("--skip-model", action="store_true", help="skip A (the all-MiniLM-L6-v2 measurement)")
    parser.add_argument("--files", type=int, help="files of the A/B/C tree (default 1200; quick 200)")
    parser.add_argument("--edits", type=int, help="files edited in B and C (default 100; quick 50)")
    parser.add_argument("--mem-sizes", help="change-list sizes of D, comma-separated (default 1000,10000; quick 300,1000)")
    parser.add_argument("--parts", default="ABCD", help="which measurements to run (default ABCD)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each no-op sync in B (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary trees and index homes")
    parser.add_argument("--child-memory", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("celery").setLevel(logging.WARNING)
    dropped = strip_codeindex_env()

    if args.child_memory:
        child_memory(args.child_memory, args.repo.resolve(), args.home.resolve())
        return

    n_files = args.files or (200 if args.quick else 1200)
    n_edits = args.edits or (50 if args.quick else 100)
    sizes = [int(x) for x in (args.mem_sizes or ("300,1000" if args.quick else "1000,10000")).split(",")]
    tree_d = max(sizes) + max(100, max(sizes) // 20)
    parts = set(args.parts.upper()) - ({"A"} if args.skip_model else set())
    if dropped:
        log(f"ignoring {', '.join(dropped)}: the benchmark uses the default settings")

    from config.settings import Settings

    defaults = Settings()
    work = Path(tempfile.mkdtemp(prefix="codeindex-bench-", dir="/tmp")).resolve()
    log(f"working directory {work}; parts {''.join(sorted(parts))}")
    report = Report()
    try:
        for part, run in (("A", lambda: bench_model(report, work, n_files)),
                          ("B", lambda: bench_hashing(report, work, n_files, n_edits, args.repeats)),
                          ("C", lambda: bench_reuse(report, work, n_files, n_edits)),
                          ("D", lambda: bench_memory(report, work, sizes, tree_d))):
            if part not in parts:
                continue
            started = time.perf_counter()
            try:
                run()
            except Exception as exc:  # noqa: BLE001 - report and go on with the next part
                import traceback

                traceback.print_exc()
                report.rows.append((f"{part}.error", f"{part} failed", f"{type(exc).__name__}: {exc}"[:120], "-", "ERROR"))
                report.figures[f"{part}.error"] = f"{type(exc).__name__}: {exc}"
            report.runtimes[part] = round(time.perf_counter() - started, 1)
            log(f"{part} done in {report.runtimes[part]:.1f}s")
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    total = time.perf_counter() - _T0
    header = [
        f"codeindex sync benchmark  ({'quick' if args.quick else 'full'} mode; parts {''.join(sorted(parts))}; "
        f"total {total:.0f} s; " + ", ".join(f"{k} {v:.0f} s" for k, v in report.runtimes.items()) + ")",
        f"tree A/B/C: {n_files} files; edits: {n_edits} files; D: change lists {sizes} over {tree_d} files; "
        f"defaults: batch_files {defaults.batch_files}, batch_bytes {defaults.batch_bytes}, "
        f"model_batch_size {defaults.model_batch_size}; CPUs {os.cpu_count()}; Python {sys.version.split()[0]}",
    ]
    report.print(header)
    document = {
        "bench": "codeindex-sync", "mode": "quick" if args.quick else "full", "parts": "".join(sorted(parts)),
        "files": n_files, "edits": n_edits, "mem_sizes": sizes, "tree_d_files": tree_d,
        "runtime_s": {**report.runtimes, "total": round(total, 1)}, **report.figures,
    }
    sys.stdout.write(json.dumps(document, sort_keys=True, default=str) + "\n")


if __name__ == "__main__":
    main()
