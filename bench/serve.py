#!/usr/bin/env python
"""What a command costs in-process and through ``codeindex serve``, one process per command.

    .venv/bin/python bench/serve.py [--runs 15] [--embedder minilm] [--files 200]

A repository of real sources (this project's and the installed kombu's ``.py`` files, up to
``--files``) is indexed in full; then each command below runs ``--runs`` times in a fresh
process, first with no server (in-process), then with ``codeindex serve`` running for the
home (the thin client). Prints the median and p90 wall time of each, the import cost of the
thin client (``python -X importtime``), and one JSON line. Targets (issue 13): a no-op sync
through the server under 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "codeindex")

COMMANDS = {
    "no-op sync (--detect-changes)": ["sync", "--detect-changes"],
    "no-op sync (1 path on stdin)": ["sync", "--stdin"],
    "search (vector, k=5)": ["search", "retry the connection", "-k", "5"],
    "status --json": ["status", "--json"],
}


def timed(args: list[str], cwd: Path, env: dict, stdin: bytes) -> float:
    started = time.perf_counter()
    proc = subprocess.run([CLI, *args], cwd=cwd, env=env, input=stdin, capture_output=True, timeout=600)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{args} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return seconds


def make_repo(root: Path, files: int) -> str:
    import kombu

    sources = sorted(p for base in (PROJECT / "indexing", Path(kombu.__file__).parent) for p in base.rglob("*.py"))
    for path in sources[:files]:
        target = root / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    for git in (["init", "-q"], ["add", "-A"], ["-c", "user.name=bench", "-c", "user.email=bench@localhost",
                                                 "commit", "-qm", "sources"]):
        subprocess.run(["git", *git], cwd=root, check=True, capture_output=True, timeout=120)
    return (root / sources[0].parent.name / sources[0].name).relative_to(root).as_posix()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cs-", dir="/tmp"))
    root, home = work / "repo", work / "home"
    root.mkdir()
    one_path = make_repo(root, args.files).encode() + b"\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    env.update(CODEINDEX_HOME=str(home), CODEINDEX_EMBEDDER=args.embedder)
    print(f"[serve bench] full index of {args.files} files ({args.embedder})", file=sys.stderr)
    timed(["sync", "--all"], root, env, b"")
    rows: dict[str, dict[str, list[float]]] = {name: {} for name in COMMANDS}
    server = None
    try:
        for mode in ("in-process", "serve"):
            if mode == "serve":
                server = subprocess.Popen([CLI, "serve", "--idle-timeout", "0"], cwd=root, env=env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                while not (home / "serve.sock").exists():
                    time.sleep(0.05)
                timed(["status"], root, env, b"")  # the first command: the server's own imports
            for name, command in COMMANDS.items():
                stdin = one_path if "--stdin" in command else b""
                rows[name][mode] = [timed(command, root, env, stdin) for _ in range(args.runs)]
                print(f"[serve bench] {mode}: {name}: median {statistics.median(rows[name][mode]):.3f} s",
                      file=sys.stderr)
        probe = subprocess.run([sys.executable, "-X", "importtime", "-c", "import cli.client"], cwd=root,
                               env=env, capture_output=True, text=True, timeout=60)
        import_us = sum(int(line.split("|")[1]) for line in probe.stderr.splitlines()
                        if line.startswith("import time:") and line.split("|")[1].strip().isdigit()
                        and line.split("|")[2].rstrip() == " cli.client")
    finally:
        if server is not None:
            subprocess.run([CLI, "serve", "--stop"], cwd=root, env=env, capture_output=True, timeout=120)
            server.wait(60)
        shutil.rmtree(work, ignore_errors=True)

    def p90(values: list[float]) -> float:
        return sorted(values)[max(0, int(round(0.9 * len(values))) - 1)]

    print(f"codeindex commands, one process each, {args.runs} runs, {args.files} files, embedder {args.embedder}, "
          f"CPUs {os.cpu_count()}")
    print(f"{'command':<32} {'in-process median':>18} {'p90':>7} {'serve median':>13} {'p90':>7}")
    for name, modes in rows.items():
        here, there = modes["in-process"], modes["serve"]
        print(f"{name:<32} {statistics.median(here):>17.3f}s {p90(here):>6.3f}s "
              f"{statistics.median(there):>12.3f}s {p90(there):>6.3f}s")
    print(f"thin client import (cli.client and what it imports, -X importtime cumulative): {import_us / 1000:.1f} ms")
    print(json.dumps({"bench": "codeindex-serve", "runs": args.runs, "embedder": args.embedder,
                      "client_import_ms": round(import_us / 1000, 1),
                      "results": {name: {mode: {"median_s": round(statistics.median(v), 4), "p90_s": round(p90(v), 4)}
                                         for mode, v in modes.items()} for name, modes in rows.items()}}))


if __name__ == "__main__":
    main()
