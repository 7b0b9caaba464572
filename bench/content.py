#!/usr/bin/env python
"""Benchmark of the content strategies and the shared-nothing fleet (issue 9, seed 004's targets),
against moto's S3 server on loopback.

    .venv/bin/python bench/content.py [--quick] [--parts 1234] [--bundle PATH] [--files N]
                                      [--commits N] [--repeat N] [--variants] [--json PATH] [--keep]

1. Per-file overhead of each content strategy, in one process, on real files (the Python sources
   of one commit of a real repository, ``--bundle``, default ../shared/data/click.bundle, else
   the installed celery package), plus files of 1 KB, 150 KB and 2 MB:
   ``inline``: the owner reads the file from git objects, hashes it and puts it in the batch
   message (JSON out and back in, as the broker carries it); the reader decodes and checks it.
   ``object_storage``: the owner's HEAD, PUT and presigned URL; the reader's download of the
   URL (cold download cache) and check. ``git_reference``: the reader's read of the file from
   its clone cache, warm (the clone made and the commit's tree open). Median and p95 in ms per
   file. Targets (seed 004): inline < 50 ms; S3 upload and download < 200 ms each; git fetch
   from a warm clone cache < 200 ms.
2. The download cache's hit rate over a replay of ``--commits`` (40) consecutive first-parent
   commits of the bundle, everything sent through object storage, one reader and its cache:
   (a) what codeindex sends: the files each commit changed; (b) a full ingestion of every
   commit's tree (what a pipeline without incremental plans sends, seed 004's). Target > 60 %.
3. Cold clone of the bundle's repository served over ``file://`` (``GitMirror.ensure``, a bare
   clone into an empty data directory), median of 3. Target < 60 s.
4. Full index of ``--files`` (1,000) real .py files (installed packages, each <= 64 KiB) by two
   workers (``-c 1`` each, hashing embedder), as ``codeindex repo add --json`` reports it:
   a shared-disk fleet (one index home for all, LanceDB on local disk, the repository by path,
   schema v1 batches: ``CODEINDEX_CONTENT_STRATEGY=path``) against a shared-nothing fleet
   (each worker its own home and data directory, LanceDB and content objects on S3, the
   repository by ``file://`` URL, ``auto`` strategy). Fresh Redis, database and bucket each.
   Target: shared-nothing at most 1.3x the shared-disk time. ``--variants`` also runs the
   fleets between the two, each with one part switched on (content in the messages; the
   repository by URL; LanceDB on S3), to show where the difference goes.

Progress goes to stderr; stdout gets the results and, as its last line, one JSON document with
every figure (also written to ``--json PATH``). Every process started is killed at the end;
the PostgreSQL databases (``codeindex_bench_*``) are dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleet import (  # noqa: E402 - after the path
    CLI, GIT, MAX_FILE_BYTES, PACKAGES, SITE_PACKAGES, Fleet, _on_signal, drop_all_databases, free_port, kill,
    kill_all, spawn,
)

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "click.bundle"
ACCESS_KEY, SECRET_KEY, REGION = "AKIABENCHCODEINDEX00", "bench-secret", "us-east-1"
TARGETS = {
    "inline_ms": ("inline < 50 ms per file", lambda v: v < 50),
    "upload_ms": ("S3 upload < 200 ms per file", lambda v: v < 200),
    "download_ms": ("S3 download < 200 ms per file", lambda v: v < 200),
    "git_warm_ms": ("git fetch, warm clone cache < 200 ms per file", lambda v: v < 200),
    "hit_rate": ("download cache hit rate > 60 %: incremental replay", lambda v: v > 0.60),
    "hit_rate_full_tree": ("download cache hit rate > 60 %: full ingestions", lambda v: v > 0.60),
    "cold_clone_s": ("cold clone < 60 s", lambda v: v < 60),
    "fleet_ratio": ("shared-nothing <= 1.3x shared-disk", lambda v: v <= 1.3),
}
_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[content-bench {time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def ms(samples: list[float]) -> dict[str, float]:
    """Median and p95 of ``samples`` (seconds) in milliseconds."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"median_ms": round(statistics.median(ordered) * 1000, 2), "p95_ms": round(p95 * 1000, 2),
            "files": len(ordered)}


class Moto:
    """moto's S3 server (``moto_server``) in a process of its own on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        import boto3
        from botocore.config import Config

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        binary = str(Path(sys.executable).with_name("moto_server"))
        self.proc = spawn([binary, "-H", "127.0.0.1", "-p", str(self.port)], dict(os.environ),
                          workdir / "moto.log")
        self.client = boto3.client("s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                                   aws_secret_access_key=SECRET_KEY,
                                   config=Config(connect_timeout=2, read_timeout=30, retries={"max_attempts": 1},
                                                 s3={"addressing_style": "path"}))
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.list_buckets()
                return
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def bucket(self) -> str:
        name = f"bench-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def store(self, bucket: str, prefix: str = "objects"):
        from indexing.s3_objects import S3ObjectStore

        return S3ObjectStore(bucket, prefix, endpoint_url=self.url, region=REGION, access_key=ACCESS_KEY,
                             secret_key=SECRET_KEY)

    def env(self, bucket: str) -> dict[str, str]:
        return {"CODEINDEX_S3_ENDPOINT_URL": self.url, "CODEINDEX_S3_REGION": REGION,
                "CODEINDEX_S3_ACCESS_KEY_ID": ACCESS_KEY, "CODEINDEX_S3_SECRET_ACCESS_KEY": SECRET_KEY,
                "CODEINDEX_STORE_URI": f"s3://{bucket}/lancedb", "CODEINDEX_OBJECT_STORE_URI": f"s3://{bucket}/objects"}


# --------------------------------------------------------------------------------------
# repositories


def served_repository(work: Path, bundle: Path | None) -> tuple[Path, str]:
    """A bare repository of real history (the bundle's, else one commit of the installed
    celery package) and its branch."""
    bare = work / "upstream.git"
    if bundle is not None and bundle.is_file():
        subprocess.run(["git", "clone", "-q", "--bare", str(bundle), str(bare)], check=True, capture_output=True,
                       timeout=600)
        branch = subprocess.run(["git", "-C", str(bare), "symbolic-ref", "--short", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        return bare, branch
    log(f"no bundle at {bundle}: one commit of the installed celery package instead (no history for part 2)")
    src = work / "celery-src"
    shutil.copytree(SITE_PACKAGES / "celery", src, ignore=shutil.ignore_patterns("__pycache__"))
    for args in (("init", "-q"), ("add", "-A"), ("commit", "-q", "-m", "celery")):
        subprocess.run([*GIT, *args], cwd=src, check=True, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(bare)], check=True, capture_output=True)
    return bare, "main"


def first_parent(bare: Path, branch: str) -> list[str]:
    """The branch's first-parent history, oldest first."""
    out = subprocess.run(["git", "-C", str(bare), "rev-list", "--first-parent", "--reverse", branch], check=True,
                         capture_output=True, text=True).stdout
    return out.split()


def build_repository(dest: Path, n_files: int) -> tuple[int, int]:
    """A git repository at ``dest`` of ``n_files`` real .py files (<= 64 KiB each) of the
    installed packages (``bench.sync.candidate_files``), in one commit; (files, bytes)."""
    from bench.sync import candidate_files

    count = size = 0
    for src, rel in candidate_files(PACKAGES, MAX_FILE_BYTES):
        if src.suffix != ".py" or src.stat().st_size == 0:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        count, size = count + 1, size + src.stat().st_size
        if count >= n_files:
            break
    for args in (("init", "-q", "-b", "main"), ("add", "-A"), ("commit", "-q", "-m", "bench")):
        subprocess.run([*GIT, *args], cwd=dest, check=True, capture_output=True)
    return count, size


def python_file(name: str, size: int) -> bytes:
    lines, total, i = [], 0, 0
    while total < size:
        line = f"def {name}_{i}(value):\n    return value * {i}  # {'-' * 40}\n\n\n"
        lines.append(line)
        total += len(line)
        i += 1
    return "".join(lines).encode()


# --------------------------------------------------------------------------------------
# part 1: per-file overhead


def part_overhead(work: Path, report: dict, bare: Path, branch: str, moto: Moto, quick: bool) -> None:
    from indexing.content import CloneCache, ContentEncoder, ContentPolicy, ContentReader, DownloadCache
    from indexing.git_source import GitTree
    from indexing.messages import Action, BatchJob, PlannedFile
    from indexing.tree import CommitTree

    # The real files, plus 1 KB, 150 KB and 2 MB ones, in a commit of a copy of the repository.
    repo = work / "overhead-src"
    subprocess.run(["git", "clone", "-q", "-b", branch, str(bare), str(repo)], check=True, capture_output=True)
    for name, size in (("size_1kb.py", 1_000), ("size_150kb.py", 150_000), ("size_2mb.py", 2_000_000)):
        (repo / name).write_bytes(python_file(name[:-3], size))
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True, capture_output=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "sizes"], cwd=repo, check=True, capture_output=True)
    url = repo.as_uri()
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    tree = CommitTree(GitTree(repo, commit))
    real = sorted(p for p in tree.tree.files() if p.endswith(".py") and not p.startswith("size_"))
    real = real[:40] if quick else real[:200]
    sized = ["size_1kb.py", "size_150kb.py", "size_2mb.py"]
    max_size = 4 * 1024 * 1024
    bucket = moto.bucket()
    store = moto.store(bucket)
    base = {"run_id": "bench", "repo_id": "bench", "root": "", "collection": "codeindex", "fence": 1, "commit": commit}
    results: dict[str, dict] = {}

    def one_by_one(strategy: str, paths: list[str], reader: ContentReader, *, fresh_cache: bool = False):
        owner, reading = [], []
        for rel in paths:
            encoder = ContentEncoder(ContentPolicy(strategy, 100 * 1024 if strategy == "inline" else 1,
                                                   5 * 1024 * 1024), store, repo_id="bench", git_url=url,
                                     branch=branch)
            planned = PlannedFile(path=rel, action=Action.ADD)
            t0 = time.perf_counter()
            contents = encoder.encode(tree, [planned], max_size)
            job = BatchJob(**base, files=[planned], schema_version=2, contents=contents)
            wire = job.model_dump_json()
            t1 = time.perf_counter()
            job = BatchJob.model_validate_json(wire)
            if fresh_cache and reader.downloads is not None:
                shutil.rmtree(reader.downloads.root, ignore_errors=True)
            reader.read(job, planned, max_size)
            t2 = time.perf_counter()
            got = contents[rel].strategy.value
            if got != strategy:
                raise RuntimeError(f"{rel} went {got}, not {strategy}")
            owner.append(t1 - t0)
            reading.append(t2 - t1)
        return owner, reading

    downloads = DownloadCache(work / "reader-cache" / "downloads", 10 * 1024**3)
    clones = CloneCache(work / "reader-cache" / "clones", 50 * 1024**3, timeout_s=300)
    reader = ContentReader(objects=store, downloads=downloads, clones=clones, timeout_s=60)
    try:
        small = [p for p in real if tree.tree.size(p) <= 100 * 1024]
        log(f"part 1: inline, {len(small)} real files (those up to 100 KB) and 1 KB")
        owner, reading = one_by_one("inline", small + sized[:1], reader)
        results["inline"] = {"owner": ms(owner), "reader": ms(reading), "total": ms([a + b for a, b in
                                                                                     zip(owner, reading)])}
        log(f"part 1: object storage, {len(real)} real files and 1 KB, 150 KB, 2 MB (upload, then a cold download)")
        owner, reading = one_by_one("object_storage", real + sized, reader, fresh_cache=True)
        results["object_storage"] = {"upload": ms(owner), "download": ms(reading),
                                     "sizes_upload_ms": {n: round(o * 1000, 1) for n, o in zip(sized, owner[-3:])},
                                     "sizes_download_ms": {n: round(r * 1000, 1) for n, r in zip(sized, reading[-3:])}}
        log("part 1: git references: a first read clones; then every file from the warm cache")
        t0 = time.perf_counter()
        one_by_one("git_reference", real[:1], reader)
        cold = time.perf_counter() - t0
        owner, reading = one_by_one("git_reference", real + sized, reader)
        results["git_reference"] = {"owner": ms(owner), "warm_read": ms(reading), "first_read_s": round(cold, 3),
                                    "sizes_read_ms": {n: round(r * 1000, 1) for n, r in zip(sized, reading[-3:])}}
    finally:
        reader.close()
        tree.close()
    report["overhead"] = results
    report["figures"].update({
        "inline_ms": results["inline"]["total"]["median_ms"],
        "upload_ms": results["object_storage"]["upload"]["median_ms"],
        "download_ms": results["object_storage"]["download"]["median_ms"],
        "git_warm_ms": results["git_reference"]["warm_read"]["median_ms"],
    })


# --------------------------------------------------------------------------------------
# part 2: the download cache over a replay


def part_hit_rate(work: Path, report: dict, bare: Path, branch: str, moto: Moto, commits: int) -> None:
    from indexing.content import ContentEncoder, ContentPolicy, ContentReader, DownloadCache
    from indexing.git_source import GitTree
    from indexing.messages import Action, BatchJob, PlannedFile
    from indexing.tree import CommitTree

    history = first_parent(bare, branch)
    if len(history) < commits + 1:
        log(f"part 2 skipped: the history has {len(history)} first-parent commits, fewer than {commits + 1}")
        report["hit_rate"] = {"skipped": f"{len(history)} commits"}
        return
    replay = history[-(commits + 1):]
    store = moto.store(moto.bucket())
    url = bare.as_uri()
    out: dict[str, dict] = {}
    for scenario in ("changed files", "full tree"):
        cache = DownloadCache(work / f"hit-rate-{scenario.replace(' ', '-')}", 10 * 1024**3)
        reader = ContentReader(objects=store, downloads=cache, timeout_s=60)
        sent = 0
        for previous, commit in zip(replay, replay[1:]):
            git_tree = GitTree(bare, commit)
            tree = CommitTree(git_tree)
            try:
                if scenario == "changed files":
                    paths = sorted({c.path for c in git_tree.changes_since(previous) if git_tree.exists(c.path)})
                else:
                    paths = sorted(git_tree.files())
                planned = [PlannedFile(path=p, action=Action.ADD) for p in paths]
                encoder = ContentEncoder(ContentPolicy("object_storage", 1, 1), store, repo_id="replay",
                                         git_url=url, branch=branch)
                contents = encoder.encode(tree, planned, 4 * 1024 * 1024)
                job = BatchJob(run_id="r", repo_id="replay", root="", collection="c", fence=1, commit=commit,
                               files=planned, schema_version=2, contents=contents)
                for p in planned:
                    if contents[p.path].problem:
                        continue
                    reader.read(job, p, 4 * 1024 * 1024)
                    sent += 1
            finally:
                tree.close()
        out[scenario] = {"files_read": sent, "hits": cache.hits, "misses": cache.misses,
                         "hit_rate": round(cache.hit_rate, 4)}
        log(f"part 2: {scenario}: {sent} files read over {commits} commits, hit rate {cache.hit_rate:.1%}")
    out["commits"] = {"first": replay[1][:12], "last": replay[-1][:12], "count": commits}
    report["hit_rate"] = out
    report["figures"]["hit_rate"] = out["changed files"]["hit_rate"]
    report["figures"]["hit_rate_full_tree"] = out["full tree"]["hit_rate"]


# --------------------------------------------------------------------------------------
# part 3: cold clone


def part_cold_clone(work: Path, report: dict, bare: Path, branch: str, repeat: int) -> None:
    from indexing.git_source import GitMirror

    times = []
    for i in range(repeat):
        target = work / f"cold-clone-{i}" / "repo.git"
        t0 = time.perf_counter()
        GitMirror(target, bare.as_uri(), branch=branch, timeout_s=300).ensure()
        times.append(time.perf_counter() - t0)
        shutil.rmtree(target.parent)
    size = sum(p.stat().st_size for p in bare.rglob("*") if p.is_file())
    report["cold_clone"] = {"seconds": [round(t, 3) for t in times], "repository_bytes": size,
                            "commits": len(first_parent(bare, branch))}
    report["figures"]["cold_clone_s"] = round(statistics.median(times), 3)
    log(f"part 3: cold clone median {statistics.median(times):.2f}s ({size / 1e6:.1f} MB on disk)")


# --------------------------------------------------------------------------------------
# part 4: the two fleets


def node_env(root: Path) -> dict[str, str]:
    for sub in ("home", "data", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return {"CODEINDEX_HOME": str(root / "home"), "CODEINDEX_DATA_DIR": str(root / "data"), "TMPDIR": str(root / "tmp")}


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` so far (/proc/PID/stat, proc(5))."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: The fleets of part 4: (S3 store, repository by URL, content in the messages, own roots).
#: ``--variants`` adds the three between them, each with one of the parts switched on.
FLEETS = {"shared-disk": (False, False, False, False), "shared-nothing": (True, True, True, True)}
VARIANTS = {"disk, path, schema 2": (False, False, True, False), "disk, by URL": (False, True, True, False),
            "S3 store, path, schema 1": (True, False, False, False)}


def one_fleet(work: Path, kind: str, repo: Path, moto: Moto) -> dict:
    """Index ``repo`` in full with two workers of a fresh fleet of ``kind`` (a key of
    :data:`FLEETS` or :data:`VARIANTS`); the figures."""
    s3_store, by_url, schema2, own_roots = {**FLEETS, **VARIANTS}[kind]
    extra: dict[str, str] = {}  # the default batches (64 files or 1 MiB)
    if s3_store:
        extra.update(moto.env(moto.bucket()))
    if not schema2:
        extra["CODEINDEX_CONTENT_STRATEGY"] = "path"
    fleet = Fleet(work, extra)
    try:
        for shard in ("a", "b"):
            env = {**fleet.env, **(node_env(work / "roots" / shard) if own_roots else {})}
            fleet.workers[shard] = spawn([CLI, "worker", "--shard-id", shard, "-c", "1", "--loglevel", "INFO"], env,
                                         fleet.logs / f"worker-{shard}.log")
        fleet.wait_ready(["a", "b"])
        cli_env = {**fleet.env, **(node_env(work / "roots" / "cli") if own_roots else {})}
        source = (work / "served.git").as_uri() if by_url else str(repo)
        if by_url:
            subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(work / "served.git")], check=True,
                           capture_output=True)
        moto_cpu = cpu_seconds(moto.proc.pid)
        t0 = time.perf_counter()
        proc = subprocess.run([CLI, "repo", "add", source, "--name", "thousand", "--json"], env=cli_env,
                              capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        moto_cpu = cpu_seconds(moto.proc.pid) - moto_cpu
        if proc.returncode != 0:
            raise RuntimeError(f"repo add failed ({kind}): {proc.stderr[-2000:]}\n{fleet.log_tail('a')}")
        summary = json.loads(proc.stdout)
        return {"wall_s": round(wall, 2), "run_s": summary["seconds"], "moto_cpu_s": round(moto_cpu, 2),
                "files": summary["added"],
                "chunks_embedded": summary["chunks_embedded"], "chunks_reused": summary["chunks_reused"],
                "errors": summary["errors"]}
    finally:
        fleet.stop()
        for shard in ("a", "b"):
            fleet.workers.pop(shard, None)


def part_fleets(work: Path, report: dict, moto: Moto, n_files: int, repeat: int, variants: bool) -> None:
    repo = work / "thousand"
    files, size = build_repository(repo, n_files)
    log(f"part 4: a repository of {files} real .py files ({size / 1e6:.1f} MB)")
    kinds = [*FLEETS, *(VARIANTS if variants else ())]
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for i in range(repeat):
        for n, kind in enumerate(kinds):
            log(f"part 4: {kind} fleet, run {i + 1} of {repeat}")
            result = one_fleet(work / f"fleet-{n}-{i}", kind, repo, moto)
            log(f"part 4: {kind}: {result}")
            runs[kind].append(result)
    medians = {kind: statistics.median(r["wall_s"] for r in results) for kind, results in runs.items()}
    report["fleets"] = {"files": files, "bytes": size, "runs": runs, "median_wall_s": medians}
    report["figures"]["fleet_ratio"] = round(medians["shared-nothing"] / medians["shared-disk"], 3)


# --------------------------------------------------------------------------------------


def print_report(report: dict) -> None:
    figures = report["figures"]
    print("\nTargets")
    for key, (label, ok) in TARGETS.items():
        if key in figures:
            print(f"  {'PASS' if ok(figures[key]) else 'MISS'}  {label:<52} {figures[key]}")
    if "overhead" in report:
        print("\nPer-file overhead (ms): median / p95")
        for strategy, parts in report["overhead"].items():
            for part, value in parts.items():
                if isinstance(value, dict) and "median_ms" in value:
                    print(f"  {strategy:<15} {part:<10} {value['median_ms']:8.2f} / {value['p95_ms']:8.2f}"
                          f"  ({value['files']} files)")
                elif isinstance(value, dict):
                    print(f"  {strategy:<15} {part:<10} {value}")
    for key in ("hit_rate", "cold_clone", "fleets"):
        if key in report:
            print(f"\n{key}: {json.dumps(report[key], indent=1)}")
    print()
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer files and repeats (a smoke run)")
    parser.add_argument("--parts", default="1234", help="which parts to run (default 1234)")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="a git bundle of real history")
    parser.add_argument("--files", type=int, default=1000, help="files of part 4's repository")
    parser.add_argument("--commits", type=int, default=40, help="commits replayed in part 2")
    parser.add_argument("--repeat", type=int, default=None, help="repeats of parts 3 and 4 (default 3 and 1)")
    parser.add_argument("--variants", action="store_true", help="part 4 also runs the fleets between the two, "
                        "each with one part of the shared-nothing fleet switched on")
    parser.add_argument("--json", type=Path, help="also write the JSON document here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_signal)
    work = Path(tempfile.mkdtemp(prefix="codeindex-content-bench-"))
    report: dict = {"figures": {}, "machine": {"cpus": os.cpu_count()}, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                                   time.gmtime())}
    moto = None
    try:
        moto = Moto(work)
        bare, branch = served_repository(work, args.bundle)
        if "1" in args.parts:
            part_overhead(work, report, bare, branch, moto, args.quick)
        if "2" in args.parts:
            part_hit_rate(work, report, bare, branch, moto, 10 if args.quick else args.commits)
        if "3" in args.parts:
            part_cold_clone(work, report, bare, branch, args.repeat or (1 if args.quick else 3))
        if "4" in args.parts:
            part_fleets(work, report, moto, 200 if args.quick else args.files, args.repeat or 1, args.variants)
    finally:
        if moto is not None:
            kill(moto.proc)
        kill_all()
        drop_all_databases()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print_report(report)


if __name__ == "__main__":
    main()
