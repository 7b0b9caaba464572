#!/usr/bin/env python
"""Benchmark of index artifacts (issue 11, "What it must show" item 1): pulling an index
against rebuilding it, and zstd against tar.gz -9.

    .venv/bin/python bench/artifacts.py [--files 1000] [--repeat 1] [--quick] [--json OUT] [--keep]

A real tree (text files of installed packages' sources copied from site-packages into a fresh
git repository, as bench/sync.py builds them) is cloned twice under the same directory name
(the repository id is the directory's name): "machine A" and "machine B", each with its own
index home (``<clone>/.codeindex``), sharing one artifact directory (CODEINDEX_ARTIFACT_URI).
Every step is one ``codeindex`` process, as a user runs it:

(a) rebuild against pull. On A, timed: ``codeindex sync --all`` in a fresh home (the
    rebuild, default model all-MiniLM-L6-v2 on the CPU). Then ``codeindex artifact push`` (zstd,
    the default). On B, with an empty home, timed: ``codeindex artifact pull --latest --json``
    (the whole command, and the ``seconds`` it reports: resolve, download, checksum, extract,
    compatibility, install and the atomic switch); then B's ``codeindex export --vectors``
    must equal A's. Target: the pull at least 50x faster than the rebuild.
(b) compression. The same index pushed with CODEINDEX_ARTIFACT_COMPRESSION=zstd and =tar.gz
    (each into an artifact directory of its own, so ``--latest`` is that push) and pulled into
    an empty home of B: the uncompressed member bytes (the members extracted with
    ``indexing.artifacts.extract``), each archive's size and ratio, push and pull wall times,
    and, in this process, the compression alone (``write_archive`` of the same members) and
    the extraction alone (``extract``), which leave out interpreter start-up and the index reads
    and writes.

``--quick``: a 150-file tree and the feature-hashing embedder (a smoke run, under a minute).
``--repeat R``: R rebuilds (each in a fresh home) and R pushes and pulls per compression;
medians are printed. Progress goes to stderr; stdout gets the tables and, as its last line,
one JSON document (also written to ``--json OUT``). Exit 1 when an export differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench.sync import GIT, MODEL_TREE_MAX_BYTES, SMALL_TREE_PACKAGES, build_tree  # noqa: E402 - after the path

CLI = str(Path(sys.executable).with_name("codeindex"))
COMPRESSIONS = ("zstd", "tar.gz")
TARGET_SPEEDUP = 50.0
REPO_NAME = "benchrepo"
_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[artifacts {time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def environment(embedder: str, store: Path, compression: str) -> dict[str, str]:
    """The process environment of one command: no CODEINDEX_* setting but these (each clone's
    home is then the default ``<clone>/.codeindex``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    env.update(CODEINDEX_EMBEDDER=embedder, CODEINDEX_ARTIFACT_URI=str(store),
               CODEINDEX_ARTIFACT_COMPRESSION=compression)
    return env


def cli(root: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    """Run ``codeindex ARGS`` in ``root``; (wall seconds, stdout). Exits on a failure."""
    started = time.perf_counter()
    proc = subprocess.run([CLI, *args], cwd=root, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"codeindex {' '.join(args)} in {root} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return wall, proc.stdout


def export_digest(root: Path, env: dict[str, str]) -> tuple[str, int]:
    """SHA-256 and line count of ``codeindex export --vectors`` (every object, sorted by id)."""
    _, text = cli(root, env, "export", "--vectors")
    return hashlib.sha256(text.encode()).hexdigest(), text.count("\n")


def clone(origin: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True)
    subprocess.run([*GIT, "clone", "-q", str(origin), str(target)], check=True, capture_output=True, timeout=300)
    return target


def fresh_home(root: Path) -> None:
    shutil.rmtree(root / ".codeindex", ignore_errors=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def rebuild(a: Path, env: dict[str, str], repeat: int) -> dict:
    """``codeindex sync --all`` on A, each time in a fresh home (no embedding cache)."""
    walls = []
    for i in range(repeat):
        fresh_home(a)
        log(f"rebuild {i + 1}/{repeat}: codeindex sync --all ({env['CODEINDEX_EMBEDDER']})")
        wall, _ = cli(a, env, "sync", "--all")
        walls.append(wall)
        log(f"  {wall:.1f} s")
    return {"wall_s": walls, "median_s": median(walls)}


def push_and_pull(a: Path, b: Path, env: dict[str, str], repeat: int, reference: str) -> dict:
    """R pushes from A and R pulls (``--latest``) into an empty home of B, each pull's export
    checked against A's (``reference``)."""
    pushes, pulls, installs, records, equal = [], [], [], [], []
    for i in range(repeat):
        wall, text = cli(a, env, "artifact", "push", "--json")
        record = json.loads(text)
        pushes.append(wall)
        records.append(record)
        fresh_home(b)
        wall, text = cli(b, env, "artifact", "pull", "--latest", "--json")
        result = json.loads(text)
        if result["id"] != record["id"]:
            raise SystemExit(f"pull --latest installed {result['id']}, the push made {record['id']}")
        pulls.append(wall)
        installs.append(float(result["seconds"]))
        digest, _ = export_digest(b, env)
        equal.append(digest == reference)
        log(f"  {env['CODEINDEX_ARTIFACT_COMPRESSION']} {i + 1}/{repeat}: push {pushes[-1]:.2f} s, "
            f"{record['size']:,} bytes; pull {wall:.2f} s (reported {installs[-1]:.2f} s); "
            f"export {'equal' if equal[-1] else 'DIFFERENT'}")
    last = records[-1]
    return {"push_wall_s": pushes, "pull_wall_s": pulls, "pull_reported_s": installs,
            "push_median_s": median(pushes), "pull_median_s": median(pulls), "pull_reported_median_s": median(installs),
            "size": last["size"], "sha256": last["sha256"], "id": last["id"], "key": last["key"],
            "index_stats": last["index_stats"], "exports_equal": all(equal)}


def in_process(archive: Path, work: Path, repeat: int) -> dict:
    """Extract ``archive`` (the members' bytes), then time the compression alone and the
    extraction alone of those members with each compression, in this process."""
    from indexing.artifacts import extract, write_archive  # lazy: after the path

    members_dir = work / "members"
    members_dir.mkdir(parents=True)
    limit = 500 * 1024**2
    paths = extract(archive, members_dir, max_bytes=limit)
    members = {name: path.read_bytes() for name, path in paths.items()}
    out = {"member_bytes": sum(len(v) for v in members.values()),
           "members": {name: len(data) for name, data in sorted(members.items())}}
    for compression in COMPRESSIONS:
        packs, unpacks, size = [], [], 0
        for i in range(max(repeat, 3)):
            target = work / f"pack-{compression}-{i}"
            started = time.perf_counter()
            write_archive(members, target, compression=compression)
            packs.append(time.perf_counter() - started)
            size = target.stat().st_size
            into = work / f"unpack-{compression}-{i}"
            into.mkdir()
            started = time.perf_counter()
            extract(target, into, max_bytes=limit)
            unpacks.append(time.perf_counter() - started)
            target.unlink()
            shutil.rmtree(into)
        out[compression] = {"size": size, "pack_median_s": median(packs), "extract_median_s": median(unpacks),
                            "pack_s": packs, "extract_s": unpacks}
    return out


def run(args: argparse.Namespace, work: Path) -> dict:
    embedder = "hashing" if args.quick else args.embedder
    files = args.files or (150 if args.quick else 1000)
    load_before = os.getloadavg()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    log(f"work directory {work}; load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")

    origin = work / "origin" / REPO_NAME
    build_tree(origin, files, SMALL_TREE_PACKAGES, MODEL_TREE_MAX_BYTES)
    tree_bytes = sum(p.stat().st_size for p in origin.rglob("*") if p.is_file() and ".git" not in p.parts)
    a = clone(origin, work / "A" / REPO_NAME)
    b = clone(origin, work / "B" / REPO_NAME)
    log(f"tree: {files} files, {tree_bytes:,} bytes; clones {a} and {b}")

    stores = {c: work / f"artifacts-{c.replace('.', '')}" for c in COMPRESSIONS}
    envs = {c: environment(embedder, stores[c], c) for c in COMPRESSIONS}

    built = rebuild(a, envs["zstd"], args.repeat)
    reference, objects = export_digest(a, envs["zstd"])
    noop_wall, _ = cli(a, envs["zstd"], "artifact", "list")  # interpreter start-up and import, for reference

    results = {}
    for compression in COMPRESSIONS:
        log(f"push and pull, {compression}")
        results[compression] = push_and_pull(a, b, envs[compression], args.repeat, reference)

    log("compression and extraction in-process")
    packed = in_process(stores["zstd"] / results["zstd"]["key"], work / "inprocess", args.repeat)
    load_after = os.getloadavg()

    z = results["zstd"]
    return {
        "started_at": started_at, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_before": load_before, "load_after": load_after,
        "embedder": embedder, "repeat": args.repeat,
        "tree": {"files": files, "bytes": tree_bytes, "index_stats": z["index_stats"], "objects_exported": objects},
        "rebuild": built, "cli_noop_s": noop_wall, "artifacts": results, "in_process": packed,
        "speedup_pull": built["median_s"] / z["pull_median_s"],
        "speedup_install": built["median_s"] / z["pull_reported_median_s"],
        "target_met": built["median_s"] / z["pull_median_s"] >= TARGET_SPEEDUP,
        "exports_equal": all(r["exports_equal"] for r in results.values()),
    }


def report(doc: dict) -> None:
    t, z, g, p = doc["tree"], doc["artifacts"]["zstd"], doc["artifacts"]["tar.gz"], doc["in_process"]
    mb = 1024**2
    print(f"\nIndex artifacts, {doc['started_at']} to {doc['finished_at']}; embedder {doc['embedder']}; "
          f"{doc['machine']['cpus']} CPUs; load average {doc['load_before'][0]:.2f} before, "
          f"{doc['load_after'][0]:.2f} after; medians of {doc['repeat']}")
    print(f"tree: {t['files']} files ({t['bytes'] / mb:.1f} MiB); index: {t['index_stats']['files']} files, "
          f"{t['index_stats']['chunks']} chunks ({t['objects_exported']} objects exported)")
    print("\n(a) rebuild against pull")
    print("| measurement | seconds |")
    print("|---|---|")
    print(f"| rebuild: `codeindex sync --all` on A, fresh home | {doc['rebuild']['median_s']:.2f} |")
    print(f"| `codeindex artifact push` on A (zstd) | {z['push_median_s']:.2f} |")
    print(f"| `codeindex artifact pull --latest` on B, whole command | {z['pull_median_s']:.2f} |")
    print(f"| of which the pull it reports (`seconds`: download, checks, install, switch) | "
          f"{z['pull_reported_median_s']:.2f} |")
    print(f"| a command that does nothing much (`codeindex artifact list`), for start-up | {doc['cli_noop_s']:.2f} |")
    print(f"rebuild / pull command: {doc['speedup_pull']:.1f}x; rebuild / reported pull: {doc['speedup_install']:.1f}x; "
          f"target >= {TARGET_SPEEDUP:.0f}x (whole command): {'met' if doc['target_met'] else 'MISSED'}; "
          f"B's export equals A's: {'yes' if doc['exports_equal'] else 'NO'}")
    print(f"\n(b) compression of the same index: members {p['member_bytes']:,} bytes "
          f"({', '.join(f'{k} {v:,}' for k, v in p['members'].items())})")
    print("| compression | archive bytes | ratio | push (CLI) s | pull (CLI) s | pull reported s "
          "| pack alone s (MB/s) | extract alone s (MB/s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in (("zstd -9, all cores", z), ("tar.gz -9", g)):
        alone = p["zstd" if r is z else "tar.gz"]
        print(f"| {name} | {r['size']:,} | {p['member_bytes'] / r['size']:.2f} | {r['push_median_s']:.2f} | "
              f"{r['pull_median_s']:.2f} | {r['pull_reported_median_s']:.2f} | {alone['pack_median_s']:.3f} "
              f"({p['member_bytes'] / 1e6 / alone['pack_median_s']:.0f}) | {alone['extract_median_s']:.3f} "
              f"({p['member_bytes'] / 1e6 / alone['extract_median_s']:.0f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=0, help="files in the tree (default 1000; 150 with --quick)")
    parser.add_argument("--repeat", type=int, default=1, help="rebuilds, pushes and pulls per figure (medians)")
    parser.add_argument("--quick", action="store_true", help="a small tree and the hashing embedder (smoke run)")
    parser.add_argument("--embedder", default="minilm", choices=("minilm", "hashing"))
    parser.add_argument("--json", dest="json_out", type=Path, help="also write the JSON document here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="codeindex-bench-artifacts-"))
    try:
        doc = run(args, work)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(doc)
    line = json.dumps(doc, sort_keys=True)
    print(line)
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, sort_keys=True, indent=2) + "\n")
    sys.exit(0 if doc["exports_equal"] else 1)


if __name__ == "__main__":
    main()
