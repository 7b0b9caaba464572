#!/usr/bin/env python
"""Benchmark of the fleet (DESIGN.md "Sharding") against the targets of the fleet issue.

    .venv/bin/python bench/fleet.py [--quick] [--parts 12345] [--json PATH] [--keep]
                                    [--batch-files N] [--repeat N] [--nice -10] [--py-spy PATH]

1. End-to-end throughput of a full index by one worker process and by two (``codeindex worker
   --shard-id a -c 1``, then ``a`` and ``b``, each ``-c 1``), feature-hashing embedder, so the
   pipeline and not the model is measured. N real git repositories (Python sources of installed
   packages, one package per repository) are enqueued exactly as ``codeindex repo add PATH
   --no-wait --json`` enqueues them, by its own code in one client started before the clock
   (one CLI process per repository costs about 2 s of start-up each here, which would
   compete with the workers for the 2 cores; ``--enqueue cli`` does that); the time runs
   from the first enqueue to the last sync run's ``finished_at`` (all ``succeeded`` in
   ``sync_runs``). Every run has a fresh Redis, database and index home, so nothing is
   cached. Target: two workers >= 1.6x one. Where the time went: the fleet's task events
   (workers run with ``-E``) give each task's start and end, hence how long 0, 1 or 2 tasks
   were running; /proc gives the CPU seconds of every process (the machine's other users
   included) and each worker's seconds waiting for a CPU; ``--py-spy`` samples the workers'
   stacks.
2. Routing overhead per task (:func:`route_timing`, ``workers.routing.route_task``) with a warm cache, in-process,
   against the registry in PostgreSQL; the cold cost (cache miss: a registry read); and the
   explicit placement of a new repository that precedes its first send (routing never places).
   Target: warm < 100 us.
3. Fraction of repositories moved when a shard joins and when one leaves, with the real
   registry: N shards, 10,000 repositories placed with ``workers.placement.place``; a shard
   joins and ``workers.placement.rebalance`` runs until it moves nothing; then a shard drains
   (``reassign_from``). Target: within 10 % of the ideal 1/(N+1).
4. Seconds from a worker's SIGKILL to all its repositories reassigned, at the default timings
   (heartbeat 10 s, offline after 30 s, beat checks every 10 s): two workers and one ``codeindex
   beat``; repeated with a new worker each time. Target: < 45 s.
5. Cold storage (issue 10) on a real history (``/work/shared/data/click.bundle`` when present,
   else this project's own): two workers with data directories of their own and beat, objects
   in S3 (moto's server on loopback), the repository served as a ``file://`` URL. The backup's
   and a restore's time and the bundle's size (as the tasks report them, and the CLI's wall
   time); then the code host is moved away, the owner SIGKILLed, and the time from the kill to
   the repository synced (``sync --all``) on its new owner from the bundle. Target: under 45 s
   plus the restore time.

Every process (redis-server, workers, beat, the enqueueing client, the event recorder) runs
in its own session and is killed by process group at the end, also on errors and on
SIGINT/SIGTERM. The PostgreSQL databases (127.0.0.1:5432, ``codeindex_bench_*``) are dropped
at the end. The machine's Redis (6379) and other databases are never touched.

Progress goes to stderr; stdout gets the result table, the details and, as its last line,
one JSON document with every figure (also written to ``--json PATH``).

Internal: ``--child-enqueue PATH...`` and ``--child-events FILE`` are the enqueueing client
and the task-event recorder of part 1.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path

SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
CLI = str(Path(sys.executable).with_name("codeindex"))
#: The server where each fleet gets a fresh database (--postgres): any existing database of it.
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
GIT = ["git", "-c", "user.email=bench@local", "-c", "user.name=bench", "-c", "commit.gpgsign=false",
       "-c", "init.defaultBranch=main", "-c", "core.autocrlf=false"]
# One repository per package; the first twelve have >= 150 .py files under 64 KiB, the next 90-150.
PACKAGES = ["celery", "huggingface_hub", "networkx", "sympy", "transformers", "pygments", "pip",
            "setuptools", "numpy", "scipy", "sklearn", "torch", "prompt_toolkit", "redis", "pydantic",
            "hypothesis", "rich", "pyarrow", "psycopg", "kombu", "_pytest", "lancedb"]
MAX_FILE_BYTES = 64 * 1024

TARGETS = {
    "1.ratio": ("two workers >= 1.6x one", lambda v: v >= 1.6),
    "2.warm_us": ("< 100 us", lambda v: v < 100.0),
    "3.join_rel_error": ("within 10 % of 1/(N+1)", lambda v: v <= 0.10),
    "3.leave_rel_error": ("within 10 % of 1/(N+1)", lambda v: v <= 0.10),
    "4.max_s": ("< 45 s", lambda v: v < 45.0),
    "5.failover": ("< 45 s + the restore", lambda v: v[0] < 45.0 + v[1]),
}

_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[fleet-bench {time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# processes, Redis, PostgreSQL: everything started here is stopped here

_PROCS: list[subprocess.Popen] = []
_DATABASES: list[str] = []


def spawn(args: list[str], env: dict, log_path: Path | None = None, **kwargs) -> subprocess.Popen:
    """Start ``args`` in a new session (its own process group), logging to ``log_path``."""
    out = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    kwargs.setdefault("stdout", out)
    kwargs.setdefault("stderr", subprocess.STDOUT if log_path is not None else subprocess.DEVNULL)
    try:
        proc = subprocess.Popen(args, env=env, start_new_session=True, **kwargs)
    finally:
        if log_path is not None:
            out.close()  # the child has its own copy
    _PROCS.append(proc)
    if _NICE:
        set_autogroup_nice(proc.pid, _NICE)
    return proc


#: --nice: the nice value of every process started here and of its session's scheduling group.
_NICE = 0


def set_autogroup_nice(pid: int, nice: int) -> None:
    """Give the session of ``pid`` (its own: started with setsid) the autogroup nice value ``nice``.

    With ``kernel.sched_autogroup_enabled`` the scheduler first shares the CPUs between
    sessions, then between the processes of a session: a process's own nice value then does
    not count against other sessions, its session's autogroup nice value does (sched(7))."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``proc``'s whole process group (a worker's pool children too); reap it."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    # A pool child re-parented to init keeps the group id: kill the group again once the leader is gone.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def kill_all() -> None:
    while _PROCS:
        proc = _PROCS.pop()
        kill(proc)


def drop_all_databases() -> None:
    import psycopg

    while _DATABASES:
        name = _DATABASES.pop()
        try:
            with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as exc:  # noqa: BLE001 - keep cleaning up
            log(f"could not drop database {name}: {exc}")


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Redis:
    """A private redis-server on a free port, no persistence."""

    def __init__(self, workdir: Path) -> None:
        import redis

        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        binary = shutil.which("redis-server") or "redis-server"
        self.proc = spawn([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
                          env=dict(os.environ))
        self.client = redis.Redis.from_url(self.url, socket_timeout=5)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.client.close()
        if self.proc in _PROCS:
            _PROCS.remove(self.proc)
        kill(self.proc, signal.SIGTERM)


def create_database() -> str:
    """A fresh database on the machine's PostgreSQL (dropped at the end); its DSN."""
    import psycopg

    name = f"codeindex_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    _DATABASES.append(name)
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"


def drop_database(dsn: str) -> None:
    import psycopg

    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if name in _DATABASES:
        _DATABASES.remove(name)


def base_env() -> dict[str, str]:
    """This process's environment without any CODEINDEX_* variable (every setting at its default)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CODEINDEX_", "SHARD_ID", "POD_NAME", "POD_IP"))}


class Fleet:
    """One fleet: a private Redis, a fresh database and index home, workers and beats."""

    def __init__(self, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home = workdir / "home"
        self.redis = Redis(workdir / "redis")
        self.dsn = create_database()
        self.env = {**base_env(), "CODEINDEX_BROKER_URL": self.redis.url, "CODEINDEX_RESULT_BACKEND": self.redis.url,
                    "CODEINDEX_STATE_URL": self.dsn, "CODEINDEX_HOME": str(self.home),
                    "CODEINDEX_EMBEDDER": "hashing", **(extra_env or {})}
        self.workers: dict[str, subprocess.Popen] = {}
        self.beats: list[subprocess.Popen] = []
        self._registry = None

    def registry(self):
        from workers.registry import ShardRegistry

        if self._registry is None:
            self._registry = ShardRegistry(self.dsn)
        return self._registry

    def start_worker(self, shard_id: str, concurrency: int = 1) -> subprocess.Popen:
        proc = spawn([CLI, "worker", "--shard-id", shard_id, "-c", str(concurrency), "--loglevel", "INFO"],
                     self.env, self.logs / f"worker-{shard_id}.log")
        self.workers[shard_id] = proc
        return proc

    def wait_ready(self, shard_ids, timeout: float = 120.0) -> None:
        """Wait until each shard is registered active and its worker consumes its queue."""
        deadline = time.monotonic() + timeout
        pending = set(shard_ids)
        while pending:
            for shard_id in sorted(pending):
                proc = self.workers[shard_id]
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {shard_id} exited {proc.returncode}:\n{self.log_tail(shard_id)}")
                shard = self.registry().get(shard_id)
                if shard is not None and shard.status == "active" and \
                        self.redis.client.exists(f"_kombu.binding.shard.{shard_id}"):
                    pending.discard(shard_id)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"workers {sorted(pending)} not ready after {timeout:.0f}s")
            time.sleep(0.1)

    def start_beat(self) -> subprocess.Popen:
        proc = spawn([CLI, "beat", "--loglevel", "INFO"], self.env, self.logs / f"beat-{len(self.beats)}.log")
        self.beats.append(proc)
        return proc

    def log_tail(self, shard_id: str, n: int = 3000) -> str:
        path = self.logs / f"worker-{shard_id}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        for proc in [*self.workers.values(), *self.beats]:
            if proc in _PROCS:
                _PROCS.remove(proc)
            kill(proc)
        if self._registry is not None:
            with contextlib.suppress(Exception):
                self._registry.close()
        self.redis.stop()
        drop_database(self.dsn)


# --------------------------------------------------------------------------------------
# CPU accounting from /proc


def system_cpu() -> tuple[int, int, int]:
    """(busy, total, steal) clock ticks of all CPUs since boot (steal: taken by the hypervisor)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields), fields[7]


def proc_cpu() -> dict[int, tuple[str, int, float, str]]:
    """pid -> (command, session id, CPU seconds user + system, kind) of every live process;
    kind is ``kernel`` for kernel threads, the database name for a PostgreSQL backend, else ``""``."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm_end = stat.rindex(")")
            comm = stat[stat.index("(") + 1:comm_end]
            rest = stat[comm_end + 2:].split()
            kind = ""
            if rest[1] in ("0", "2") and entry.name != "1":  # field 4: ppid; kthreadd's children
                kind = "kernel"
            elif comm == "postgres":
                args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
                kind = args[3] if len(args) > 3 and args[0] == "postgres:" else ""
        except (OSError, ValueError, IndexError):
            continue
        # fields 6 (session), 14 and 15 (utime, stime) of proc(5)
        out[int(entry.name)] = (comm, int(rest[3]), (int(rest[11]) + int(rest[12])) / ticks, kind)
    return out


def cpu_delta(before: dict, after: dict, sessions: dict[int, str], database: str, busy_s: float) -> dict[str, float]:
    """CPU seconds used between two :func:`proc_cpu` snapshots, grouped: a worker's main process
    and pool children, the bench's other processes (``sessions``), this fleet's PostgreSQL
    backends, kernel threads, and ``other``: the machine's busy time (``busy_s``, from
    /proc/stat) less all of the above, i.e. every process that is not this benchmark's (other
    users of the machine), including those that exited meanwhile."""
    out: dict[str, float] = defaultdict(float)
    for pid, (comm, sid, secs, kind) in after.items():
        prev = before.get(pid)
        used = secs - (prev[2] if prev and prev[0] == comm else 0.0)
        if used <= 0:
            continue
        if sid in sessions:
            label = sessions[sid]
            out[f"{label} {'main' if pid == sid else 'pool child'}" if label.startswith("worker") else label] += used
        elif comm == "postgres" and kind == database:
            out["postgres (this fleet)"] += used
        elif kind == "kernel":
            out["kernel threads"] += used
        elif pid == os.getpid():
            out["bench (polling)"] += used
    out["other (not this benchmark)"] = max(0.0, busy_s - sum(out.values()))
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def sched_times(sessions: dict[int, str]) -> dict[int, tuple[float, float, int, float]]:
    """pid -> (seconds on a CPU, seconds runnable but waiting for a CPU, session, seconds on a
    CPU of its threads other than the main one), summed over its threads
    (/proc/PID/task/TID/schedstat), of the worker processes of ``sessions``."""
    out = {}
    for pid, (_, sid, _, _) in proc_cpu().items():
        if sid not in sessions or not sessions[sid].startswith("worker"):
            continue
        run = wait = other = 0
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    fields = (task / "schedstat").read_text().split()
                    run, wait = run + int(fields[0]), wait + int(fields[1])
                    if task.name != str(pid):
                        other += int(fields[0])
        out[pid] = (run / 1e9, wait / 1e9, sid, other / 1e9)
    return out


def sched_delta(before: dict, after: dict, sessions: dict[int, str]) -> dict[str, dict[str, float]]:
    """Per worker process (main, pool child): seconds on a CPU (all threads; of them, threads
    other than the main one, e.g. LanceDB's) and seconds waiting for a CPU."""
    out: dict[str, dict[str, float]] = {}
    for pid, (run, wait, sid, other) in after.items():
        prev = before.get(pid, (0.0, 0.0, sid, 0.0))
        label = f"{sessions[sid]} {'main' if pid == sid else 'pool child'}"
        agg = out.setdefault(label, {"on_cpu_s": 0.0, "other_threads_on_cpu_s": 0.0, "runqueue_wait_s": 0.0})
        agg["on_cpu_s"] = round(agg["on_cpu_s"] + run - prev[0], 2)
        agg["other_threads_on_cpu_s"] = round(agg["other_threads_on_cpu_s"] + other - prev[3], 2)
        agg["runqueue_wait_s"] = round(agg["runqueue_wait_s"] + wait - prev[1], 2)
    return dict(sorted(out.items()))


def wait_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to ``max_wait`` s) for a second in which the machine's CPUs are busy less than
    ``threshold`` cores' worth (this is a shared machine); the last second's busy cores."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0, _ = system_cpu()
        time.sleep(1.0)
        b1, t1, _ = system_cpu()
        cores = (b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1)
        if cores < threshold or time.monotonic() > deadline:
            return round(cores, 2)


# --------------------------------------------------------------------------------------
# part 1: throughput


def build_repos(workdir: Path, n_repos: int, files_per_repo: int) -> list[tuple[Path, int, int]]:
    """``n_repos`` git repositories of real .py files (each <= 64 KiB), one package each, with
    ``files_per_repo`` files (or all of a package's, when it has 90 to ``files_per_repo``); their
    (path, files, bytes)."""
    repos = []
    for package in PACKAGES:
        if len(repos) >= n_repos:
            break
        base = SITE_PACKAGES / package
        if not base.is_dir():
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            for name in sorted(filenames):
                src = Path(dirpath) / name
                if name.endswith(".py") and not src.is_symlink() and 0 < src.stat().st_size <= MAX_FILE_BYTES:
                    files.append(src)
        if len(files) < min(files_per_repo, 90):
            continue
        dest = workdir / package.strip("_")
        size = 0
        files = files[:files_per_repo]
        for src in files:
            target = dest / src.relative_to(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            size += src.stat().st_size
        for args in (("init", "-q"), ("add", "-A"), ("commit", "-q", "-m", "bench")):
            subprocess.run([*GIT, *args], cwd=dest, check=True, capture_output=True)
        repos.append((dest, len(files), size))
    if len(repos) < n_repos:
        raise SystemExit(f"only {len(repos)} packages with enough .py files in {SITE_PACKAGES}")
    return repos


def child_enqueue(paths: list[str]) -> None:
    """The enqueueing client: import the CLI, say ``ready``, wait for a line, then run
    ``codeindex repo add PATH --no-wait --json``'s code for each path; print each document
    (one per line) and the wall clock of the first and last enqueue."""
    import cli.main  # noqa: F401  (imports what the commands import, before the clock)
    import cli.output  # noqa: F401
    import indexing.messages  # noqa: F401
    import tasks.sync  # noqa: F401
    from cli import fleet

    print("ready", flush=True)
    sys.stdin.readline()
    first = time.time()
    docs = []
    for path in paths:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            fleet.repo_add(Path(path).resolve(), None, True, True)
        docs.append(json.loads(buf.getvalue()))
    last = time.time()
    for doc in docs:
        print(json.dumps(doc), flush=True)
    print(json.dumps({"first": first, "last": last}), flush=True)


def child_events(out_path: str) -> None:
    """The task-event recorder: every Celery event of the fleet (``-E``) as one JSON line."""
    from celery import Celery

    app = Celery(broker=os.environ["CODEINDEX_BROKER_URL"])
    with open(out_path, "a", buffering=1) as out, app.connection() as conn:
        def handler(event: dict) -> None:
            if event.get("type", "").startswith("task-"):
                out.write(json.dumps({k: event.get(k) for k in (
                    "type", "uuid", "name", "hostname", "timestamp", "runtime", "exception")}) + "\n")

        receiver = app.events.Receiver(conn, handlers={"*": handler})
        print("ready", flush=True)
        receiver.capture(limit=None, timeout=None, wakeup=True)


def task_spans(events_path: Path, senders: dict[str, str]) -> dict[str, list[dict]]:
    """Per worker shard: each task it ran, with name, outcome, start and end (epoch s) and
    duration (s), from the fleet's task events.

    A plan task replaces itself with its chord (``Task.replace``), whose body (the commit)
    keeps the plan's task id, and sends no end event of its own: its end is the last message
    its worker's pool child (``senders``: event hostname ``gen<pid>`` -> shard) sent before that
    worker started its next task."""
    events = []
    for line in events_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    events.sort(key=lambda e: e["timestamp"])
    name_at: dict[str, str] = {}
    running: dict[str, dict] = {}  # shard -> the span running on it
    spans = defaultdict(list)

    def close(shard: str, end: float, outcome: str) -> None:
        span = running.pop(shard)
        span.update(end=end, secs=end - span["start"], outcome=outcome)
        spans[shard].append(span)

    last_sent: dict[str, float] = {}
    for e in events:
        kind, shard = e["type"], (e.get("hostname") or "?").split("@", 1)[0]
        if kind == "task-sent" and shard in senders:
            last_sent[senders[shard]] = e["timestamp"]
        elif kind == "task-received":
            name_at[e["uuid"]] = e.get("name") or "?"
        elif kind == "task-started":
            if shard in running:  # the task before it replaced itself (a plan)
                close(shard, last_sent.get(shard, e["timestamp"]), "replaced")
            running[shard] = {"uuid": e["uuid"], "name": name_at.get(e["uuid"], "?"), "start": e["timestamp"]}
            last_sent.pop(shard, None)
        elif kind in ("task-succeeded", "task-failed", "task-retried", "task-rejected", "task-revoked"):
            if shard in running and running[shard]["uuid"] == e["uuid"]:
                close(shard, e["timestamp"], kind[5:])
    for shard in list(running):
        close(shard, last_sent.get(shard, running[shard]["start"]), "replaced")
    return dict(spans)


def timeline(spans_by_worker: dict[str, list[dict]], t0: float, t1: float) -> dict[str, float]:
    """Seconds of [t0, t1] during which 0, 1, 2... workers ran a task (from the task spans)."""
    events = []
    for spans in spans_by_worker.values():
        for s in spans:
            events.append((max(t0, s["start"]), 1))
            events.append((min(t1, s["end"]), -1))
    events.sort()
    busy, at, out = 0, t0, defaultdict(float)
    for t, delta in events:
        if t > at:
            out[busy] += t - at
            at = t
        busy += delta
    if t1 > at:
        out[busy] += t1 - at
    return {str(k): round(v, 2) for k, v in sorted(out.items())}


def start_profilers(py_spy: str, pids: dict[int, str], out_dir: Path) -> list[tuple[subprocess.Popen, Path]]:
    """``py-spy record`` (wall clock: idle stacks included, 50 Hz, non-blocking) of each pid."""
    started = []
    for pid, label in pids.items():
        out = out_dir / f"py-spy-{label.replace(' ', '-')}.txt"
        proc = spawn([py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "50", "--idle",
                      "--nonblocking", "--nolineno", "--output", str(out)], dict(os.environ),
                     out_dir / "py-spy.log")
        started.append((proc, out))
    return started


def stop_profilers(started: list[tuple[subprocess.Popen, Path]]) -> dict[str, dict[str, float]]:
    """Stop the profilers (SIGINT: they write their output) and summarise each: of the samples
    of the pool child's main thread (the one running tasks), the share in which each step is on
    the stack (wall clock: waiting for a CPU counts where it happens)."""
    steps = {
        "in a task": ("fast_trace_task (celery/app/trace.py)",),
        "embed batch (index_batch)": ("index_batch (indexing/sync.py)",),
        "import lancedb (first batch)": ("<module> (lancedb/__init__.py)",),
        "LanceDB upsert": ("LanceDBStore.upsert (",),
        "hashing embedder": ("HashingEmbedder.embed (",),
        "chunking": ("chunk_text (",),
        "embedding cache": ("SQLiteEmbeddingCache.",),
        "advance_run": ("advance_run (",),
        "plan task": ("plan (tasks/sync.py)",),
        "commit task": ("commit (tasks/sync.py)",),
    }
    summary = {}
    for proc, out in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc in _PROCS:
            _PROCS.remove(proc)
        kill(proc)
        if not out.exists():
            continue
        total, counts = 0, defaultdict(int)
        for line in out.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit() or "Worker.workloop (billiard/pool.py)" not in stack:
                continue
            total += int(n)
            for step, needles in steps.items():
                if any(needle in stack for needle in needles):
                    counts[step] += int(n)
        summary[out.stem.removeprefix("py-spy-")] = {
            "samples": total, **{k: round(counts[k] / total, 3) for k in steps if total}}
    return summary


def _stop_child(child) -> None:
    if child is not None:
        if child in _PROCS:
            _PROCS.remove(child)
        kill(child)


def run_throughput(workdir: Path, repos: list[tuple[Path, int, int]], n_workers: int, batch_files: int,
                   enqueue: str, quiet_wait: float, py_spy: str | None = None) -> dict:
    """One run: ``n_workers`` workers (``-c 1``) on a fresh fleet index every repository."""
    import psycopg

    fleet = Fleet(workdir, {"CODEINDEX_BATCH_FILES": str(batch_files)})
    child = recorder = None
    profilers: list = []
    me = os.path.abspath(__file__)
    try:
        shard_ids = ["a", "b", "c", "d"][:n_workers]
        for shard_id in shard_ids:
            fleet.start_worker(shard_id)
        fleet.wait_ready(shard_ids)
        events_path = fleet.logs / "events.jsonl"
        recorder = spawn([sys.executable, me, "--child-events", str(events_path)], fleet.env,
                         stdout=subprocess.PIPE, stderr=open(fleet.logs / "events.log", "ab"), text=True)
        if recorder.stdout.readline().strip() != "ready":
            raise RuntimeError("the event recorder did not start; see " + str(fleet.logs / "events.log"))
        paths = [str(p) for p, _, _ in repos]
        if enqueue == "inprocess":
            child = spawn([sys.executable, me, "--child-enqueue", *paths], fleet.env,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(fleet.logs / "enqueue.log", "ab"),
                          text=True, cwd=str(workdir))
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("the enqueueing client did not start; see " + str(fleet.logs / "enqueue.log"))
        quiet = wait_quiet(quiet_wait)  # also lets the recorder's consumer settle
        sessions = {fleet.workers[s].pid: f"worker {s}" for s in shard_ids}
        sessions.update({recorder.pid: "event recorder", fleet.redis.proc.pid: "redis-server"})
        if child is not None:
            sessions[child.pid] = "enqueueing client"
        if py_spy:
            profilers = start_profilers(py_spy, {pid: f"{sessions[sid]} pool child" for pid, (_, sid, _, _)
                                                 in proc_cpu().items() if sid in sessions and pid != sid
                                                 and sessions[sid].startswith("worker")}, fleet.logs)
            time.sleep(1.0)
        procs0, cpu0, sched0 = proc_cpu(), system_cpu(), sched_times(sessions)
        t0 = time.time()
        if child is not None:
            child.stdin.write("go\n")
            child.stdin.flush()
            lines = [json.loads(line) for line in child.stdout.read().splitlines() if line.strip()]
            child.wait(timeout=60)
            docs, stamps = lines[:-1], lines[-1]
            enqueue_s = stamps["last"] - t0
        else:
            docs = []
            for path in paths:
                out = subprocess.run([CLI, "repo", "add", path, "--no-wait", "--json"], env=fleet.env, check=True,
                                     capture_output=True, text=True, timeout=120)
                docs.append(json.loads(out.stdout))
            enqueue_s = time.time() - t0
        run_ids = [d["run_id"] for d in docs]
        placement = defaultdict(int)
        for d in docs:
            placement[d["shard_id"]] += 1
        deadline = time.monotonic() + 900
        with psycopg.connect(fleet.dsn, autocommit=True) as conn:
            while True:
                rows = conn.execute("SELECT id, repo_id, status, finished_at, shard_id, added, errors, message "
                                    "FROM sync_runs WHERE id = ANY(%s)", [run_ids]).fetchall()
                done = [r for r in rows if r[2] in ("succeeded", "partial", "failed")]
                if len(done) == len(run_ids):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(done)} of {len(run_ids)} runs finished after 900 s")
                time.sleep(0.25)
            observed = time.time() - t0
            procs1, cpu1, sched1 = proc_cpu(), system_cpu(), sched_times(sessions)
            senders = {f"gen{pid}": sessions[sid].split()[1] for pid, (_, sid, _, _) in procs1.items()
                       if sid in sessions and pid != sid and sessions[sid].startswith("worker")}
            files, chunks, size = conn.execute(
                "SELECT count(*), COALESCE(sum(chunk_count), 0), COALESCE(sum(size), 0) FROM files").fetchone()
        time.sleep(0.5)  # the last events
        profile = stop_profilers(profilers) if profilers else None
        statuses = defaultdict(int)
        for r in rows:
            statuses[r[2]] += 1
        end = max(datetime.fromisoformat(r[3]).timestamp() for r in rows)
        seconds = end - t0
        spans = task_spans(events_path, senders)
        per_task: dict[str, dict] = {}
        for s, items in sorted(spans.items()):
            for item in items:
                agg = per_task.setdefault(f"{s}:{item['name'].removeprefix('codeindex.')}",
                                          {"count": 0, "seconds": 0.0, "not_succeeded": 0})
                agg["count"] += 1
                agg["seconds"] = round(agg["seconds"] + item["secs"], 2)
                agg["not_succeeded"] += item["outcome"] not in ("succeeded", "replaced")
        busy = {s: round(sum(i["secs"] for i in items), 2) for s, items in sorted(spans.items())}
        run_ends = sorted(datetime.fromisoformat(r[3]).timestamp() - t0 for r in rows)
        first_start = min((i["start"] for items in spans.values() for i in items), default=t0) - t0
        return {
            "workers": n_workers, "batch_files": batch_files, "repos": len(repos), "files": files, "chunks": chunks,
            "bytes": int(size), "seconds": round(seconds, 2), "observed_seconds": round(observed, 2),
            "enqueue_seconds": round(enqueue_s, 3), "enqueue": enqueue, "first_task_start_s": round(first_start, 2),
            "files_per_s": round(files / seconds, 1), "chunks_per_s": round(chunks / seconds, 1),
            "runs": dict(statuses), "errors": sum(r[6] for r in rows),
            "placement": dict(sorted(placement.items())),
            "committed_on": {s: sum(1 for r in rows if r[4] == s) for s in shard_ids},
            "busy_cores_before": quiet,
            "system_cpu_busy": round((cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1]), 3),
            "steal_s": round((cpu1[2] - cpu0[2]) / os.sysconf("SC_CLK_TCK"), 1),
            "sched": sched_delta(sched0, sched1, sessions),
            "cpu_s": cpu_delta(procs0, procs1, sessions, fleet.dsn.rsplit("/", 1)[1],
                               (cpu1[0] - cpu0[0]) / os.sysconf("SC_CLK_TCK")),
            "task_busy_s": busy, "per_task": per_task,
            "concurrency_timeline_s": timeline(spans, t0, end),
            "run_ends_s": [round(x, 1) for x in run_ends],
            **({"py_spy": profile} if profile else {}),
        }
    finally:
        for proc, _ in profilers:
            _stop_child(proc)
        _stop_child(child)
        _stop_child(recorder)
        fleet.stop()


def part_throughput(work: Path, report: dict, n_repos: int, files_per_repo: int, batch_files: int,
                    enqueue: str, repeat: int, quiet_wait: float, py_spy: str | None) -> None:
    log(f"part 1: building {n_repos} repositories of up to {files_per_repo} files")
    repos = build_repos(work / "repos", n_repos, files_per_repo)
    pairs = []
    for rep in range(1, repeat + 1):
        results = {}
        for n_workers in (1, 2):
            log(f"part 1: pair {rep}: full index of {n_repos} repositories with {n_workers} worker(s), "
                f"batch_files {batch_files}")
            results[n_workers] = r = run_throughput(work / f"fleet-{rep}-{n_workers}", repos, n_workers, batch_files,
                                                    enqueue, quiet_wait, py_spy)
            log(f"part 1: pair {rep}: {n_workers} worker(s): {r['files']} files, {r['chunks']} chunks in "
                f"{r['seconds']:.1f}s ({r['files_per_s']} files/s, {r['chunks_per_s']} chunks/s); runs {r['runs']}; "
                f"CPU s {r['cpu_s']}")
        pairs.append({"one": results[1], "two": results[2],
                      "ratio": round(results[1]["seconds"] / results[2]["seconds"], 3)})
    report["1"] = {"pairs": pairs, "ratio": round(statistics.median(p["ratio"] for p in pairs), 3),
                   "repos": [p.name for p, _, _ in repos], "batch_files": batch_files, "enqueue": enqueue}


# --------------------------------------------------------------------------------------
# part 2: routing overhead


def route_timing(route_task, task, repo_ids: list[str], rounds: int = 3) -> float:
    """Mean seconds per ``route_task`` call (the Celery router) for ``task`` over ``repo_ids``,
    after one warm-up pass that fills the runtime's owner cache."""
    for repo_id in repo_ids:
        route_task(task.name, [{"repo_id": repo_id}], {}, {}, task=task)
    started = time.perf_counter()
    for _ in range(rounds):
        for repo_id in repo_ids:
            route_task(task.name, [{"repo_id": repo_id}], {}, {}, task=task)
    return (time.perf_counter() - started) / (rounds * len(repo_ids))


def part_routing(work: Path, report: dict, n_repos: int) -> None:
    import tasks.embed  # noqa: F401  (registers the tasks)
    import tasks.sync  # noqa: F401  (registers the tasks)
    from config.settings import configure
    from workers import placement, routing, runtime
    from workers.app import app

    # The task instances, as Celery hands them to the router (not the modules' lazy proxies).
    plan, batch = app.tasks["codeindex.sync.plan"], app.tasks["codeindex.embed.batch"]

    dsn = create_database()
    try:
        # A fleet's settings; routing reads the registry only, the broker is never contacted.
        settings = configure(state_url=dsn, broker_url="redis://127.0.0.1:1/0", home=work / "routing-home",
                             embedder="hashing")
        runtime.reset()
        rt = runtime.runtime()
        registry = rt.registry
        shards = ["a", "b", "c", "d"]
        for s in shards:
            registry.register(s, s, "127.0.0.1", 1000)
        repo_ids = [f"route-{i:05d}" for i in range(n_repos)]
        for rid in repo_ids:
            placement.place(registry, rid)
        warm = []
        for _ in range(7):
            rt.owners.forget()  # every owner cached afresh by route_timing's warm-up pass
            warm.append(route_timing(routing.route_task, plan, repo_ids, rounds=5) * 1e6)
        cold_assigned = []
        for rid in repo_ids:
            rt.owners.forget(rid)
            t = time.perf_counter()
            routing.route_task(plan.name, [{"repo_id": rid}], {}, {}, task=plan)
            cold_assigned.append((time.perf_counter() - t) * 1e6)
        place_new = []
        for i in range(min(200, n_repos)):
            t = time.perf_counter()
            rt.place(f"route-new-{i:05d}")
            routing.route_task(plan.name, [{"repo_id": f"route-new-{i:05d}"}], {}, {}, task=plan)
            place_new.append((time.perf_counter() - t) * 1e6)
        embed = []
        for _ in range(3):
            t = time.perf_counter()
            for rid in repo_ids:
                routing.route_task(batch.name, [{"repo_id": rid}], {}, {}, task=batch)
            embed.append((time.perf_counter() - t) / len(repo_ids) * 1e6)

        def q(values, p):
            values = sorted(values)
            return round(values[min(len(values) - 1, int(p * len(values)))], 1)

        report["2"] = {
            "shards": len(shards), "capacity": 1000, "repos": n_repos,
            "route_cache_seconds": settings.route_cache_seconds,
            "warm_us": round(statistics.median(warm), 2), "warm_us_runs": [round(x, 2) for x in warm],
            "cold_assigned_us_median": q(cold_assigned, 0.5), "cold_assigned_us_p95": q(cold_assigned, 0.95),
            "cold_new_us_median": q(place_new, 0.5), "cold_new_us_p95": q(place_new, 0.95),
            "embed_us": round(statistics.median(embed), 2),
        }
        runtime.reset()
        configure()
    finally:
        drop_database(dsn)
    log(f"part 2: warm {report['2']['warm_us']} us, cold {report['2']['cold_assigned_us_median']} us "
        f"(new repository placed, then routed: {report['2']['cold_new_us_median']} us)")


# --------------------------------------------------------------------------------------
# part 3: moved fraction on join and leave


def part_moves(report: dict, n_shards: int, n_repos: int, capacity: int) -> None:
    from workers import placement
    from workers.registry import ShardRegistry
    from workers.ring import virtual_nodes

    dsn = create_database()
    try:
        registry = ShardRegistry(dsn)
        shards = [f"s{i}" for i in range(1, n_shards + 1)]
        for s in shards:
            registry.register(s, s, "127.0.0.1", capacity)
        repo_ids = [f"repo-{i:05d}" for i in range(n_repos)]
        t = time.perf_counter()
        for rid in repo_ids:
            placement.place(registry, rid)
        place_s = time.perf_counter() - t
        before = registry.assignments()
        loads_before = {s.shard_id: s.load for s in registry.shards()}
        log(f"part 3: placed {n_repos} repositories on {n_shards} shards in {place_s:.1f}s: {loads_before}")

        new = f"s{n_shards + 1}"
        registry.register(new, new, "127.0.0.1", capacity)
        moves_before = registry.moves_total()
        passes, moved_join = 0, []
        t = time.perf_counter()
        while True:
            passes += 1
            moves = placement.rebalance(registry, max_moves=10**6)
            moved_join.extend(moves)
            if not moves:
                break
        rebalance_s = time.perf_counter() - t
        after_join = registry.assignments()
        changed = sum(1 for r in repo_ids if before[r] != after_join[r])
        to_new = sum(1 for m in moved_join if m.shard_id == new)
        loads_join = {s.shard_id: s.load for s in registry.shards()}
        join_frac = changed / n_repos
        ideal = 1 / (n_shards + 1)

        leaving = "s1"
        registry.set_status(leaving, "draining")
        t = time.perf_counter()
        moved_leave = placement.reassign_from(registry, leaving)
        drain_s = time.perf_counter() - t
        after_leave = registry.assignments()
        changed_leave = sum(1 for r in repo_ids if after_join[r] != after_leave[r])
        from_other = sum(1 for r in repo_ids if after_join[r] != after_leave[r] and after_join[r] != leaving)
        loads_leave = {s.shard_id: s.load for s in registry.shards()}
        leave_frac = changed_leave / n_repos
        # For reference: the ring alone (no registry, no capacity limits) at the default capacity,
        # whose 400 virtual nodes per shard spread keys less evenly than the bench's capacity.
        from config.settings import Settings
        from workers.ring import HashRing, moved_fraction

        cap0 = Settings.model_fields["shard_capacity"].default
        ring_before = HashRing({s: cap0 for s in shards}, vnodes=placement.RING_VNODES)
        ring_join = HashRing({s: cap0 for s in [*shards, new]}, vnodes=placement.RING_VNODES)
        ring_leave = HashRing({s: cap0 for s in [*shards, new] if s != leaving}, vnodes=placement.RING_VNODES)
        ring_only = {"capacity": cap0, "vnodes_per_shard": virtual_nodes(cap0, placement.RING_VNODES),
                     "join_fraction": round(moved_fraction(ring_before, ring_join, repo_ids), 4),
                     "leave_fraction": round(moved_fraction(ring_join, ring_leave, repo_ids), 4)}
        report["3"] = {
            "ring_only_default_capacity": ring_only,
            "shards": n_shards, "repos": n_repos, "capacity": capacity, "ring_vnodes_per_shard":
                virtual_nodes(capacity, placement.RING_VNODES), "place_s": round(place_s, 1),
            "place_ms_per_repo": round(place_s / n_repos * 1000, 2), "loads_before": loads_before,
            "join_moved": changed, "join_fraction": round(join_frac, 4), "join_ideal": round(ideal, 4),
            "join_rel_error": round(abs(join_frac - ideal) / ideal, 4), "join_moves_to_new_shard": to_new,
            "join_rebalance_passes": passes, "join_rebalance_s": round(rebalance_s, 1),
            "moves_counter_delta": registry.moves_total() - moves_before, "loads_after_join": loads_join,
            "leave_shard": leaving, "leave_moved": changed_leave, "leave_fraction": round(leave_frac, 4),
            "leave_ideal": round(ideal, 4), "leave_rel_error": round(abs(leave_frac - ideal) / ideal, 4),
            "leave_moves_between_others": from_other, "leave_reassign_s": round(drain_s, 1),
            "leave_placements": len(moved_leave), "loads_after_leave": loads_leave,
        }
        registry.close()
    finally:
        drop_database(dsn)
    r = report["3"]
    log(f"part 3: join moved {r['join_fraction']:.4f} (ideal {r['join_ideal']:.4f}), "
        f"leave moved {r['leave_fraction']:.4f} (ideal {r['leave_ideal']:.4f})")


# --------------------------------------------------------------------------------------
# part 4: SIGKILL to reassignment


def part_failover(work: Path, report: dict, trials: int, n_repos: int) -> None:
    from workers import placement

    fleet = Fleet(work / "failover")
    results = []
    try:
        names = iter("abcdefghij")
        alive = [next(names), next(names)]
        for s in alive:
            fleet.start_worker(s)
        fleet.wait_ready(alive)
        fleet.start_beat()
        registry = fleet.registry()
        for trial in range(1, trials + 1):
            if trial > 1:
                joiner = next(names)
                fleet.start_worker(joiner)
                fleet.wait_ready([joiner])
                alive.append(joiner)
            for i in range(n_repos):
                placement.place(registry, f"t{trial}-repo-{i:02d}")
            loads = {s.shard_id: s.load for s in registry.shards() if s.shard_id in alive}
            victim = max(alive, key=lambda s: (loads.get(s, 0), -alive.index(s)))
            owned = len(registry.assignments(victim))
            lag = registry.get(victim).heartbeat_lag()
            t0 = time.time()
            os.killpg(fleet.workers[victim].pid, signal.SIGKILL)
            fleet.workers[victim].wait(timeout=15)
            alive.remove(victim)
            offline_at = None
            while True:
                now = time.time()
                if offline_at is None and registry.get(victim).status == "offline":
                    offline_at = now
                if not registry.assignments(victim):
                    break
                if now - t0 > 180:
                    raise RuntimeError(f"trial {trial}: shard {victim} still owns repositories 180 s after SIGKILL")
                time.sleep(0.1)
            done = time.time() - t0
            owners = registry.assignments()
            results.append({"trial": trial, "victim": victim, "repos_owned": owned,
                            "heartbeat_lag_at_kill_s": round(lag, 1),
                            "offline_after_s": round((offline_at or now) - t0, 1), "reassigned_after_s": round(done, 1),
                            "new_owners": sorted({owners[r] for r in owners if r.startswith(f"t{trial}-")})})
            log(f"part 4: trial {trial}: {owned} repositories of {victim} reassigned {done:.1f}s after SIGKILL "
                f"(heartbeat {lag:.1f}s old at the kill)")
    finally:
        fleet.stop()
    secs = [r["reassigned_after_s"] for r in results]
    report["4"] = {"trials": results, "seconds": secs, "max_s": max(secs), "mean_s": round(statistics.mean(secs), 1)}


def part_cold_storage(work: Path, report: dict) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/s3.py: moto's server, as the tests run it
    from tests.s3 import MOTO_ACCESS_KEY, MOTO_SECRET_KEY, MotoServer

    source = work / "cold-origin.git"
    bundle = Path("/work/shared/data/click.bundle")
    origin = str(bundle) if bundle.exists() else str(Path(__file__).resolve().parents[1])
    subprocess.run(["git", "clone", "-q", "--bare", origin, str(source)], check=True, capture_output=True, timeout=600)
    moto = MotoServer()
    moto.start()
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    s3_env = {"CODEINDEX_S3_ENDPOINT_URL": moto.url, "CODEINDEX_S3_REGION": "us-east-1",
              "CODEINDEX_S3_ACCESS_KEY_ID": MOTO_ACCESS_KEY, "CODEINDEX_S3_SECRET_ACCESS_KEY": MOTO_SECRET_KEY,
              "CODEINDEX_OBJECT_STORE_URI": f"s3://{bucket}/objects"}
    import boto3

    boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id=MOTO_ACCESS_KEY,
                 aws_secret_access_key=MOTO_SECRET_KEY).create_bucket(Bucket=bucket)
    fleet = Fleet(work / "cold", extra_env=s3_env)

    def cli(*args: str) -> tuple[dict, float]:
        started = time.perf_counter()
        proc = subprocess.run([CLI, *args, "--json"] if args[0] != "sync" else [CLI, *args], env=fleet.env,
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"codeindex {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        return json.loads(proc.stdout), time.perf_counter() - started

    try:
        for shard in ("a", "b"):
            data = work / "cold" / f"data-{shard}"
            proc = spawn([CLI, "worker", "--shard-id", shard, "-c", "1", "--loglevel", "INFO"],
                         {**fleet.env, "CODEINDEX_DATA_DIR": str(data)}, fleet.logs / f"worker-{shard}.log")
            fleet.workers[shard] = proc
        fleet.wait_ready(["a", "b"])
        fleet.start_beat()
        added, add_s = cli("repo", "add", source.as_uri(), "--name", "click")
        log(f"part 5: full index of click ({added['added']} files) in {add_s:.1f} s")
        made, backup_wall = cli("backup", "--repo", "click")
        restored, restore_wall = cli("restore", "--repo", "click")
        victim = fleet.registry().assignments()["click"]
        source.rename(source.with_name("cold-origin-gone.git"))
        t0 = time.time()
        os.killpg(fleet.workers[victim].pid, signal.SIGKILL)
        fleet.workers[victim].wait(timeout=15)
        while fleet.registry().assignments().get("click") in (None, victim):
            if time.time() - t0 > 180:
                raise RuntimeError("click was not reassigned within 180 s of the SIGKILL")
            time.sleep(0.1)
        reassigned = time.time() - t0
        summary, _ = cli("sync", "--repo", "click", "--all", "--format", "json")
        synced = time.time() - t0
        doc, _ = cli("backups", "--repo", "click")
        failover_restore = doc["restores"][-1]
        if failover_restore["source"] != "bundle" or summary["errors"]:
            raise RuntimeError(f"the new owner did not sync from the bundle: {failover_restore} {summary}")
    finally:
        fleet.stop()
        moto.stop()
    report["5"] = {"repository": origin, "files": added["added"], "bundle_bytes": made["bundle"]["size"],
                   "backup_s": made["seconds"], "backup_wall_s": round(backup_wall, 2),
                   "restore_s": restored["seconds"], "restore_wall_s": round(restore_wall, 2),
                   "reassigned_after_s": round(reassigned, 1), "synced_after_s": round(synced, 1),
                   "failover_restore_s": failover_restore["seconds"], "sync_commit": summary["commit"]}
    log(f"part 5: bundle {made['bundle']['size']} bytes, backup {made['seconds']} s, restore {restored['seconds']} s; "
        f"SIGKILL -> reassigned {reassigned:.1f} s -> synced from the bundle {synced:.1f} s")


# --------------------------------------------------------------------------------------
# the report


def verdict(key: str, value) -> tuple[str, str]:
    target, ok = TARGETS[key]
    return target, ("pass" if ok(value) else "MISS")


def print_report(report: dict, header: list[str]) -> None:
    rows = []
    if "1" in report:
        r = report["1"]
        for i, pair in enumerate(r["pairs"], 1):
            for k, label in (("one", "1 worker"), ("two", "2 workers")):
                x = pair[k]
                rows.append((f"1. full index, {label} (-c 1), pair {i}",
                             f"{x['seconds']:.1f} s: {x['files_per_s']} files/s, {x['chunks_per_s']} chunks/s", "", ""))
            rows.append((f"1. throughput two / one, pair {i}", f"{pair['ratio']:.2f}x", "", ""))
        rows.append((f"1. throughput two / one{' (median of pairs)' if len(r['pairs']) > 1 else ''}",
                     f"{r['ratio']:.2f}x", *verdict("1.ratio", r["ratio"])))
    if "2" in report:
        r = report["2"]
        rows.append((f"2. routing per task, warm cache ({r['shards']} shards, {r['repos']} repos)",
                     f"{r['warm_us']:.1f} us", *verdict("2.warm_us", r["warm_us"])))
        rows.append(("2. routing, cold (cache miss, assigned repo)",
                     f"{r['cold_assigned_us_median']:.0f} us median, {r['cold_assigned_us_p95']:.0f} us p95", "", ""))
        rows.append(("2. a new repo: explicit placement (assignment written), then routing",
                     f"{r['cold_new_us_median']:.0f} us median, {r['cold_new_us_p95']:.0f} us p95", "", ""))
    if "3" in report:
        r = report["3"]
        rows.append((f"3. shard joins ({r['shards']} -> {r['shards'] + 1}), moved",
                     f"{r['join_fraction']:.4f} vs {r['join_ideal']:.4f} (error {r['join_rel_error'] * 100:.1f} %)",
                     *verdict("3.join_rel_error", r["join_rel_error"])))
        rows.append((f"3. shard leaves ({r['shards'] + 1} -> {r['shards']}), moved",
                     f"{r['leave_fraction']:.4f} vs {r['leave_ideal']:.4f} (error {r['leave_rel_error'] * 100:.1f} %)",
                     *verdict("3.leave_rel_error", r["leave_rel_error"])))
    if "4" in report:
        r = report["4"]
        rows.append(("4. SIGKILL -> all repositories reassigned",
                     ", ".join(f"{s:.1f} s" for s in r["seconds"]), *verdict("4.max_s", r["max_s"])))
    if "5" in report:
        r = report["5"]
        rows.append(("5. backup: bundle size, task time (CLI wall)",
                     f"{r['bundle_bytes'] / 1e6:.1f} MB, {r['backup_s']:.2f} s ({r['backup_wall_s']:.2f} s)", "", ""))
        rows.append(("5. restore: task time (CLI wall)", f"{r['restore_s']:.2f} s ({r['restore_wall_s']:.2f} s)", "", ""))
        rows.append(("5. SIGKILL -> synced on the new owner from the bundle",
                     f"{r['synced_after_s']:.1f} s (reassigned {r['reassigned_after_s']:.1f} s, restore "
                     f"{r['failover_restore_s']:.2f} s)",
                     *verdict("5.failover", (r["synced_after_s"], r["failover_restore_s"]))))
    for key in sorted(k for k in report if k.endswith(".error")):
        rows.append((f"{key}", report[key][:100], "", "ERROR"))
    print("\n".join(header))
    print()
    width = max(len(r[0]) for r in rows) if rows else 10
    vwidth = max(len(r[1]) for r in rows) if rows else 10
    twidth = max(len(r[2]) for r in rows) if rows else 10
    print(f"{'measurement':<{width}}  {'figure':<{vwidth}}  {'target':<{twidth}}  verdict")
    for name, value, target, ok in rows:
        print(f"{name:<{width}}  {value:<{vwidth}}  {target:<{twidth}}  {ok}")
    print()
    if "1" in report:
        r = report["1"]
        print(f"1. repositories: {', '.join(r['repos'])}; batch_files {r['batch_files']}; enqueue: {r['enqueue']}")
        for i, pair in enumerate(r["pairs"], 1):
            for k in ("one", "two"):
                x = pair[k]
                embeds = [v for k2, v in x["per_task"].items() if k2.endswith("embed.batch")]
                per_batch = sum(v["seconds"] for v in embeds) / max(1, sum(v["count"] for v in embeds))
                print(f"   pair {i}, {k}: {x['files']} files, {x['chunks']} chunks, {x['bytes']} bytes; "
                      f"runs {x['runs']}, errors {x['errors']}; enqueue took {x['enqueue_seconds']} s; "
                      f"repositories per shard {x['placement']}")
                print(f"        busy cores just before: {x['busy_cores_before']}; "
                      f"system CPU busy {x['system_cpu_busy'] * 100:.0f} % of {os.cpu_count()} CPUs; "
                      f"hypervisor steal {x['steal_s']} s; CPU s by process: {x['cpu_s']}")
                print("        worker processes, s on a CPU (of which threads other than the main one) / s runnable "
                      "but waiting for a CPU: " + "; ".join(
                          f"{k2} {v['on_cpu_s']} ({v['other_threads_on_cpu_s']}) / {v['runqueue_wait_s']}"
                          for k2, v in x["sched"].items()))
                print(f"        task busy s {x['task_busy_s']}; seconds with 0/1/2 tasks running "
                      f"{x['concurrency_timeline_s']}; mean embed batch {per_batch:.2f} s")
                print("        per task (count, s, not succeeded): " + "; ".join(
                    f"{k2} {v['count']} {v['seconds']} {v['not_succeeded']}"
                    for k2, v in sorted(x["per_task"].items())))
                print(f"        runs finished at (s after the first enqueue): {x['run_ends_s']}")
                for who, shares in x.get("py_spy", {}).items():
                    print(f"        py-spy {who}: " + "; ".join(f"{k.strip()} {v * 100:.0f} %" if k != "samples"
                                                             else f"{v} samples" for k, v in shares.items()))
    if "2" in report:
        r = report["2"]
        print(f"2. {r['shards']} shards, {r['repos']} repositories; warm runs (us) {r['warm_us_runs']}; "
              f"embed-queue task {r['embed_us']} us; route_cache_seconds {r['route_cache_seconds']}")
    if "3" in report:
        r = report["3"]
        print(f"3. capacity {r['capacity']} each ({r['ring_vnodes_per_shard']} virtual nodes); place "
              f"{r['place_ms_per_repo']} ms per repository; loads {r['loads_before']} -> join {r['loads_after_join']}"
              f" ({r['join_moves_to_new_shard']} of {r['join_moved']} moves to the new shard, "
              f"{r['join_rebalance_passes']} passes, {r['join_rebalance_s']} s) -> leave of {r['leave_shard']} "
              f"{r['loads_after_leave']} ({r['leave_moves_between_others']} moves between other shards)")
        ro = r["ring_only_default_capacity"]
        print(f"   reference, the ring alone at the default capacity {ro['capacity']} "
              f"({ro['vnodes_per_shard']} virtual nodes): join moves {ro['join_fraction']}, "
              f"leave moves {ro['leave_fraction']} of the same keys")
    if "4" in report:
        for t in report["4"]["trials"]:
            print(f"4. trial {t['trial']}: killed {t['victim']} owning {t['repos_owned']} repositories, heartbeat "
                  f"{t['heartbeat_lag_at_kill_s']} s old; offline after {t['offline_after_s']} s, reassigned "
                  f"after {t['reassigned_after_s']} s to {t['new_owners']}")


def main() -> None:
    global PG_ADMIN_DSN, _NICE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, a smoke run (under 2 minutes); part 1 then has 4 embedding batches "
                             "in all, so each worker's cold start dominates and its ratio means nothing")
    parser.add_argument("--parts", default="12345", help="which parts to run (default 12345)")
    parser.add_argument("--repos", type=int, help="part 1: repositories (default 16; quick 4)")
    parser.add_argument("--files-per-repo", type=int, help="part 1: files per repository (default 150; quick 40)")
    parser.add_argument("--batch-files", type=int, default=64,
                        help="part 1: CODEINDEX_BATCH_FILES (default 64, the setting's default)")
    parser.add_argument("--repeat", type=int, help="part 1: pairs of runs (one worker, two) (default 2; quick 1)")
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="part 1: before each run, wait up to this many seconds for the machine's other "
                             "processes to go quiet (default 20)")
    parser.add_argument("--nice", type=int, default=0,
                        help="run every process the benchmark starts at this nice value, and their sessions' "
                             "scheduling groups (autogroups) too (e.g. -10, as root): on a shared machine, other "
                             "users' processes then get little of the CPU the fleet wants (default 0, unchanged)")
    parser.add_argument("--py-spy", metavar="PATH",
                        help="part 1: profile each worker's pool child with this py-spy binary (it costs CPU: "
                             "for finding where the time goes, not for the figures)")
    parser.add_argument("--enqueue", choices=("inprocess", "cli"), default="inprocess",
                        help="part 1: run `repo add`'s code in one pre-started client (default) or one CLI "
                             "process per repository")
    parser.add_argument("--route-repos", type=int, help="part 2: repositories (default 1000; quick 200)")
    parser.add_argument("--move-repos", type=int, help="part 3: repositories (default 10000; quick 2000)")
    parser.add_argument("--move-shards", type=int, default=4, help="part 3: shards before the join (default 4)")
    parser.add_argument("--move-capacity", type=int, default=5000,
                        help="part 3: capacity of each shard (default 5000)")
    parser.add_argument("--kill-trials", type=int, help="part 4: trials (default 3; quick 1)")
    parser.add_argument("--kill-repos", type=int, default=20, help="part 4: repositories placed per trial")
    parser.add_argument("--postgres", default=PG_ADMIN_DSN,
                        help=f"a database of the PostgreSQL server to create the fleets' databases on "
                             f"(default {PG_ADMIN_DSN})")
    parser.add_argument("--json", type=Path, help="also write the JSON document to this file")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, repositories)")
    parser.add_argument("--child-enqueue", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--child-events", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_enqueue:
        child_enqueue(args.child_enqueue)
        return
    if args.child_events:
        child_events(args.child_events)
        return

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(drop_all_databases)
    atexit.register(kill_all)
    for key in [k for k in os.environ if k.startswith("CODEINDEX_")]:
        del os.environ[key]
    PG_ADMIN_DSN = args.postgres
    if args.nice:
        _NICE = args.nice
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every process started here

    n_repos = args.repos or (4 if args.quick else 16)
    files_per_repo = args.files_per_repo or (40 if args.quick else 150)
    route_repos = args.route_repos or (200 if args.quick else 1000)
    move_repos = args.move_repos or (2000 if args.quick else 10000)
    trials = args.kill_trials or (1 if args.quick else 3)
    repeat = args.repeat or (1 if args.quick else 2)
    parts = set(args.parts)
    work = Path(tempfile.mkdtemp(prefix="codeindex-bench-fleet-", dir="/tmp")).resolve()
    log(f"working directory {work}; parts {''.join(sorted(parts))}")
    report: dict = {}
    runtimes = {}
    try:
        for part, run in (("1", lambda: part_throughput(work, report, n_repos, files_per_repo, args.batch_files,
                                                        args.enqueue, repeat, args.quiet_wait, args.py_spy)),
                          ("2", lambda: part_routing(work, report, route_repos)),
                          ("3", lambda: part_moves(report, args.move_shards, move_repos, args.move_capacity)),
                          ("4", lambda: part_failover(work, report, trials, args.kill_repos)),
                          ("5", lambda: part_cold_storage(work, report))):
            if part not in parts:
                continue
            started = time.perf_counter()
            try:
                run()
            except Exception as exc:  # noqa: BLE001 - report and go on with the next part
                import traceback

                traceback.print_exc()
                report[f"{part}.error"] = f"{type(exc).__name__}: {exc}"
            runtimes[part] = round(time.perf_counter() - started, 1)
            log(f"part {part} done in {runtimes[part]:.1f}s")
    finally:
        kill_all()
        drop_all_databases()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    total = time.perf_counter() - _T0
    header = [
        f"codeindex fleet benchmark ({'quick' if args.quick else 'full'} mode; parts {''.join(sorted(parts))}; "
        f"total {total:.0f} s; " + ", ".join(f"part {k} {v:.0f} s" for k, v in runtimes.items()) + ")",
        f"CPUs {os.cpu_count()} (nproc {len(os.sched_getaffinity(0))}); nice {os.getpriority(os.PRIO_PROCESS, 0)}; "
        f"Python {sys.version.split()[0]}; "
        f"{datetime.now().astimezone().isoformat(timespec='seconds')}",
    ]
    print_report(report, header)
    document = {"bench": "codeindex-fleet", "mode": "quick" if args.quick else "full", "parts": "".join(sorted(parts)),
                "nice": os.getpriority(os.PRIO_PROCESS, 0), "argv": sys.argv[1:],
                "runtime_s": {**runtimes, "total": round(total, 1)}, "cpus": os.cpu_count(), **report}
    text = json.dumps(document, sort_keys=True, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
