#!/usr/bin/env python
"""Replay real commits as a post-commit hook would, one CLI process per commit.

    .venv/bin/python bench/replay.py [--commits 40] [--embedders minilm,hashing] [--mode inprocess]
                                     [--cli PATH] [--bundle PATH] [--keep]

The repository is /work/shared/data/click.bundle when present (else this project's own
history): a clone is checked out at the first of ``--commits`` + 1 consecutive first-parent
commits and indexed in full (``codeindex sync --all``, not counted); then for each next
commit CUR after PREV: ``git checkout CUR`` and, timed, ``git diff --name-only --no-renames
PREV CUR | codeindex sync --stdin --delete-missing`` in a fresh process, as a hook runs it.

Per embedder it prints: total and median seconds per commit, chunks embedded, and the
model-only time of exactly those chunks (the chunk texts each commit added to the embedding
cache, embedded again by the same embedder in this process, warm, commit by commit). Then it
checks the final index against a fresh full index of the last commit (same paths, chunk ids,
lines, text hashes; vectors equal to 1e-5; the fresh index starts from the replay's embedding
cache, so the model does not run twice).

``--mode`` says how the hook's sync reaches codeindex: ``inprocess`` (the CLI process syncs
itself, the embedded mode) or ``serve`` (``codeindex serve`` runs for the index home, and each
hook process is the thin client that hands it the sync); a mode is an entry of :data:`MODES`,
a function that starts what it needs and returns the hook processes' environment and a stop
function. With ``serve`` it also prints the issue's target: 1.2 x the model-only time plus
0.3 s per commit.
``--cli`` runs another installation's ``codeindex`` (a before figure from an older tree).
Progress goes to stderr; stdout gets the table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
BUNDLE = Path("/work/shared/data/click.bundle")
_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[replay {time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "advice.detachedHead=false", *args], check=True,
                          capture_output=True, text=True, timeout=120).stdout


def _environment(home: Path, embedder: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    env.update(CODEINDEX_HOME=str(home), CODEINDEX_EMBEDDER=embedder)
    return env


def inprocess(home: Path, embedder: str, cli: str) -> tuple[dict[str, str], Callable[[], None]]:
    """The embedded mode: each CLI process syncs in itself (eager Celery, SQLite, LanceDB)."""
    return _environment(home, embedder), lambda: None


def serve(home: Path, embedder: str, cli: str) -> tuple[dict[str, str], Callable[[], None]]:
    """The embedded mode with ``codeindex serve`` running for the home (started here, in the
    foreground of a child process, warmed up before the first commit): each CLI process is the
    thin client, and the server syncs."""
    env = _environment(home, embedder)
    home.mkdir(parents=True, exist_ok=True)
    log_file = open(home.parent / f"{home.name}-serve.log", "ab")  # noqa: SIM115 - closed by stop()
    server = subprocess.Popen([cli, "serve", "--idle-timeout", "0"], cwd=home, env=env, stdin=subprocess.DEVNULL,
                              stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (home / "serve.sock").exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"codeindex serve did not start: see {log_file.name}")
        time.sleep(0.05)
    probe = subprocess.run([cli, "status", "--json"], cwd=home, env=env, capture_output=True, timeout=300)
    if probe.returncode != 0:
        raise SystemExit(f"codeindex status through the server failed: {probe.stderr.decode()[-2000:]}")

    def stop() -> None:
        subprocess.run([cli, "serve", "--stop"], cwd=home, env=env, capture_output=True, timeout=300)
        server.wait(60)
        log_file.close()

    return env, stop


#: How the hook's processes reach codeindex: name -> setup(home, embedder, cli) -> (env, stop).
MODES: dict[str, Callable[[Path, str, str], tuple[dict[str, str], Callable[[], None]]]] = {
    "inprocess": inprocess, "serve": serve}


def cache_rows(home: Path, after: int) -> tuple[list[str], int]:
    """The text hashes the embedding cache gained after rowid ``after``, and its last rowid."""
    path = home / "embeddings.sqlite"
    if not path.exists():
        return [], after
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT rowid, text_sha256 FROM embeddings WHERE rowid > ? ORDER BY rowid",
                            (after,)).fetchall()
    return [h for _, h in rows], (rows[-1][0] if rows else after)


def chunk_texts(root: Path, paths: list[str], embedder) -> dict[str, str]:
    """``{text sha256: text}`` of the chunks of ``paths`` in the work tree, as the sync cuts them."""
    from indexing.chunking import chunk_text
    from indexing.ids import sha256_hex
    from indexing.languages import language_of
    from indexing.scanner import decode

    out: dict[str, str] = {}
    for rel in paths:
        path = root / rel
        if not path.is_file():
            continue
        try:
            text = decode(path.read_bytes()).text
        except Exception:  # noqa: BLE001 - binary or undecodable: the sync skipped it too
            continue
        for chunk in chunk_text(text, embedder.max_tokens, embedder.count_tokens, language_of(rel)):
            out[sha256_hex(chunk.text.encode("utf-8", "surrogatepass"))] = chunk.text
    return out


def index_rows(home: Path) -> dict[str, tuple]:
    """Every object of the index: id -> (path, chunk_index, start, end, content_sha256, vector)."""
    from indexing.lance_store import import_lancedb

    table = import_lancedb().connect(str(home / "lancedb")).open_table("codeindex")
    data = table.to_arrow().to_pydict()
    return {i: (p, c, s, e, h, v) for i, p, c, s, e, h, v in zip(
        data["id"], data["path"], data["chunk_index"], data["start_line"], data["end_line"], data["content_sha256"],
        data["vector"])}


def compare(final: dict[str, tuple], fresh: dict[str, tuple]) -> str:
    """``ok`` when both indexes hold the same objects (vectors to 1e-5), else what differs."""
    import numpy as np

    if final.keys() != fresh.keys():
        return f"ids differ: {len(final.keys() - fresh.keys())} only replayed, {len(fresh.keys() - final.keys())} only fresh"
    meta = [i for i in final if final[i][:5] != fresh[i][:5]]
    if meta:
        return f"{len(meta)} objects differ in path, lines or text, e.g. {final[meta[0]][:5]} vs {fresh[meta[0]][:5]}"
    worst = max((float(np.abs(np.asarray(final[i][5]) - np.asarray(fresh[i][5])).max()) for i in final), default=0.0)
    return "ok" if worst <= 1e-5 else f"vectors differ by up to {worst:.2e}"


def replay(args, embedder_kind: str, work: Path, commits: list[str]) -> dict:
    from indexing.embedders import make_embedder

    root = work / f"repo-{embedder_kind}"
    git(work, "clone", "-q", str(args.source), str(root))
    git(root, "checkout", "-q", commits[0])
    home = work / f"home-{embedder_kind}"
    env, stop = MODES[args.mode](home, embedder_kind, args.cli)
    cli = [args.cli]
    try:
        log(f"{embedder_kind}: full index of {commits[0][:10]} (not counted)")
        started = time.perf_counter()
        proc = subprocess.run([*cli, "sync", "--all"], cwd=root, env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"the full index failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        full_s = time.perf_counter() - started
        _, last_row = cache_rows(home, 0)
        embedder = make_embedder(embedder_kind)
        per_commit, embedded_texts, chunks = [], [], []
        for prev, cur in zip(commits, commits[1:]):
            git(root, "checkout", "-q", cur)
            changed = git(root, "diff", "--name-only", "--no-renames", prev, cur)
            started = time.perf_counter()
            proc = subprocess.run([*cli, "sync", "--stdin", "--delete-missing", "--format", "json"], cwd=root,
                                  env=env, input=changed, capture_output=True, text=True, timeout=1800)
            seconds = time.perf_counter() - started
            if proc.returncode != 0:
                raise SystemExit(f"sync of {cur[:10]} exited {proc.returncode}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            summary = json.loads(proc.stdout)
            summary = summary.get("runs", [summary])[0] if "runs" in summary else summary
            new_hashes, last_row = cache_rows(home, last_row)
            texts = chunk_texts(root, [p for p in changed.splitlines() if p], embedder)
            missing = [h for h in new_hashes if h not in texts]
            if missing:
                log(f"WARNING: {len(missing)} embedded chunk texts of {cur[:10]} not found by re-chunking")
            embedded_texts.append([texts[h] for h in new_hashes if h in texts])
            per_commit.append(seconds)
            chunks.append(summary.get("chunks_embedded", len(new_hashes)))
            log(f"{embedder_kind}: {cur[:10]} {seconds:6.2f} s, {len(changed.splitlines())} paths, "
                f"{chunks[-1]} chunks embedded")
        # The model alone on exactly those chunks, warm, commit by commit.
        embedder.embed(["def warm_up(x):\n    return x + 1"])
        model_s = []
        for texts in embedded_texts:
            started = time.perf_counter()
            if texts:
                embedder.embed(texts)
            model_s.append(time.perf_counter() - started)
        log(f"{embedder_kind}: fresh full index of {commits[-1][:10]} to compare")
        fresh_home = work / f"fresh-{embedder_kind}"
        # The replay's embedding cache goes with it (the model need not run twice): the check is of
        # what the incremental syncs stored, and a cached vector is the one a fresh embed gave.
        fresh_home.mkdir()
        shutil.copyfile(home / "embeddings.sqlite", fresh_home / "embeddings.sqlite")
        fresh_env, fresh_stop = MODES[args.mode](fresh_home, embedder_kind, args.cli)
        try:
            subprocess.run([*cli, "sync", "--all"], cwd=root, env=fresh_env, capture_output=True, check=True,
                           timeout=3600)
        finally:
            fresh_stop()
        check = compare(index_rows(home), index_rows(fresh_home))
    finally:
        stop()
    return {"embedder": embedder_kind, "mode": args.mode, "commits": len(per_commit), "full_index_s": round(full_s, 2),
            "total_s": round(sum(per_commit), 2), "median_s": round(statistics.median(per_commit), 3),
            "max_s": round(max(per_commit), 2), "per_commit_s": [round(s, 3) for s in per_commit],
            "chunks_embedded": sum(chunks), "per_commit_chunks": chunks,
            "cached_commit_median_s": round(statistics.median([s for s, c in zip(per_commit, chunks) if c == 0]), 3)
            if 0 in chunks else None,
            "model_only_s": round(sum(model_s), 3), "check": check,
            "serve_target_s": round(1.2 * sum(model_s) + 0.3 * len(per_commit), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=40)
    parser.add_argument("--embedders", default="minilm,hashing")
    parser.add_argument("--mode", default="inprocess", choices=sorted(MODES))
    parser.add_argument("--cli", default=str(Path(sys.executable).parent / "codeindex"),
                        help="the codeindex command to run (default: this virtualenv's)")
    parser.add_argument("--bundle", type=Path, default=BUNDLE)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="codeindex-replay-", dir="/tmp")).resolve()
    if args.bundle.exists():
        args.source = work / "source"
        git(work, "clone", "-q", "--bare", str(args.bundle), str(args.source))
    else:
        args.source = PROJECT
    # The commits before the head, so that the run is the same whatever the bundle gains later.
    commits = list(reversed(git(args.source, "rev-list", "--first-parent", "-n", str(args.commits + 1),
                                "HEAD").split()))
    log(f"{args.source}: {commits[0][:10]}..{commits[-1][:10]}, {len(commits) - 1} commits; work {work}")
    results = []
    try:
        for kind in args.embedders.split(","):
            results.append(replay(args, kind, work, commits))
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"replay of {len(commits) - 1} commits of {args.bundle if args.bundle.exists() else PROJECT} "
          f"({commits[0][:10]}..{commits[-1][:10]}), mode {args.mode}, cli {args.cli}, CPUs {os.cpu_count()}")
    print(f"{'embedder':<9} {'total s':>8} {'median s':>9} {'max s':>7} {'cached median s':>16} {'chunks':>7} "
          f"{'model-only s':>13}  check")
    for r in results:
        print(f"{r['embedder']:<9} {r['total_s']:>8.1f} {r['median_s']:>9.2f} {r['max_s']:>7.2f} "
              f"{r['cached_commit_median_s'] if r['cached_commit_median_s'] is not None else '-':>16} "
              f"{r['chunks_embedded']:>7} {r['model_only_s']:>13.2f}  {r['check']}"
              + (f"  target {r['serve_target_s']:.1f} s: {'met' if r['total_s'] <= r['serve_target_s'] else 'missed'}"
                 if args.mode == "serve" else ""))
    print(json.dumps({"bench": "codeindex-replay", "results": results}))


if __name__ == "__main__":
    main()
