"""A real fleet for tests: `codeindex worker` subprocesses (Celery prefork workers) and
`codeindex beat`, on a private Redis (broker, results, locks, breakers) and a fresh PostgreSQL
database (state, registry), sharing one index home. Timings are shortened (heartbeat 0.5 s,
offline after 3 s, visibility timeout 12 s) so that faults play out in seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git, make_real_repo

CLI = str(Path(sys.executable).with_name("codeindex"))

FLEET_ENV = {
    "CODEINDEX_EMBEDDER": "hashing",
    "CODEINDEX_BATCH_FILES": "8",
    "CODEINDEX_VISIBILITY_TIMEOUT": "12",
    "CODEINDEX_TASK_TIME_LIMIT": "10",
    "CODEINDEX_TASK_SOFT_TIME_LIMIT": "8",
    "CODEINDEX_RETRY_BACKOFF_MAX": "2",
    "CODEINDEX_MAX_RETRIES": "8",
    "CODEINDEX_HEARTBEAT_INTERVAL": "0.5",
    "CODEINDEX_OFFLINE_AFTER": "3",
    "CODEINDEX_HEARTBEAT_CHECK_INTERVAL": "1",
    "CODEINDEX_REBALANCE_INTERVAL": "2",
    "CODEINDEX_LOCK_TTL": "3",
    "CODEINDEX_LOCK_TIMEOUT": "6",
    "CODEINDEX_BREAKER_FAIL_MAX": "3",
    "CODEINDEX_BREAKER_RESET_TIMEOUT": "2",
    "CODEINDEX_ROUTE_CACHE_SECONDS": "0.5",
    "CODEINDEX_GRACE_PERIOD": "20",
}


def wait_for(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.2):
    """Poll ``predicate`` until it returns something true; fail the test after ``timeout`` s."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        value = predicate()
        if value:
            if os.environ.get("CODEINDEX_TEST_TIMINGS"):
                sys.stderr.write(f"[{time.monotonic() - started:6.1f}s] {what}\n")
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


class Fleet:
    """Workers, beat and CLI calls of one test's fleet; everything is stopped at teardown."""

    def __init__(self, workdir: Path, redis_server, postgres_dsn: str) -> None:
        self.workdir, self.redis_server, self.dsn = workdir, redis_server, postgres_dsn
        self.home = workdir / "home"
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **FLEET_ENV,
                    "CODEINDEX_BROKER_URL": redis_server.url, "CODEINDEX_RESULT_BACKEND": redis_server.url,
                    "CODEINDEX_STATE_URL": postgres_dsn, "CODEINDEX_HOME": str(self.home)}
        self.env.pop("CODEINDEX_SHARD_ID", None)
        self.workers: dict[str, subprocess.Popen] = {}
        self.beats: list[subprocess.Popen] = []
        self._registry = self._state = None

    # processes

    def _spawn(self, args: list[str], log_name: str, extra_env: dict | None = None,
               prefix: tuple[str, ...] = (), cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{log_name}.log", "ab")
        return subprocess.Popen([*prefix, CLI, *args], env={**self.env, **(extra_env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)

    def start_worker(self, shard_id: str, capacity: int = 100, concurrency: int = 1, wait: bool = True,
                     extra_env: dict | None = None, permissions: bool = False, prefix: tuple[str, ...] = (),
                     cwd: Path | None = None) -> subprocess.Popen:
        """Start ``codeindex worker``; ``permissions``: without the power to ignore file
        permissions (as any user but root runs), so that a test can make a directory read-only;
        ``prefix``: a command the worker runs under (a tracer); ``cwd``: its working directory."""
        if permissions and os.geteuid() == 0:
            prefix = (*prefix, "setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search")
        proc = self._spawn(["worker", "--shard-id", shard_id, "--capacity", str(capacity), "-c", str(concurrency),
                            "--loglevel", "INFO"], f"worker-{shard_id}", extra_env, prefix, cwd)
        self.workers[shard_id] = proc
        if wait:
            wait_for(lambda: self.shard_status(shard_id) == "active" and self.consuming(shard_id), 60,
                     f"worker {shard_id} to register and consume")
        return proc

    def start_beat(self, name: str = "beat", extra_env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
        proc = self._spawn(["beat", "--loglevel", "INFO"], name, extra_env, cwd=cwd)
        self.beats.append(proc)
        return proc

    def kill(self, shard_id: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the worker's whole process group (its pool children too)."""
        proc = self.workers[shard_id]
        os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        for opened in (self._registry, self._state):
            if opened is not None:
                opened.close()
        for proc in [*self.workers.values(), *self.beats]:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # the CLI

    def cli(self, *args: str, input: str | None = None, timeout: float = 120, check: bool = True,
            extra_env: dict | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([CLI, *args], env={**self.env, **(extra_env or {})}, input=input, text=True,
                              capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"codeindex {' '.join(args)} exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def sync(self, root: Path, *args: str, repo: str | None = None, input: str | None = None,
             timeout: float = 120) -> dict:
        """``codeindex sync --json`` against the fleet; the summary."""
        proc = self.cli("sync", "--root", str(root), "--repo", repo or root.name, "--format", "json", *args,
                        input=input, timeout=timeout)
        return json.loads(proc.stdout)

    # the registry, the broker

    def registry(self):
        """The fleet's registry, opened once for the test."""
        from workers.registry import ShardRegistry

        if self._registry is None:
            self._registry = ShardRegistry(self.dsn)
        return self._registry

    def shard_status(self, shard_id: str) -> str | None:
        shard = self.registry().get(shard_id)
        return shard.status if shard else None

    def owner(self, repo_id: str) -> str | None:
        return self.registry().assignment(repo_id)

    def redis(self):
        import redis

        return redis.Redis.from_url(self.redis_server.url, socket_timeout=5)

    def consuming(self, shard_id: str) -> bool:
        """True once the worker's consumer is attached (kombu's binding of its shard queue)."""
        return bool(self.redis().exists(f"_kombu.binding.shard.{shard_id}"))

    def queue_depth(self, queue: str) -> int:
        return int(self.redis().llen(queue))

    def export(self, repo_id: str) -> list[dict]:
        """The fleet's objects of ``repo_id``, sorted by id (what `codeindex export` prints)."""
        from indexing.lance_store import LanceDBStore

        store = LanceDBStore(str(self.home / "lancedb"), "codeindex")
        return [o for o in store.export() if o["repo"] == repo_id]

    def state(self):
        """The fleet's state store, opened once for the test."""
        from indexing.pg_state import PostgresStateStore

        if self._state is None:
            self._state = PostgresStateStore(self.dsn)
        return self._state


@pytest.fixture
def fleet(tmp_path: Path, redis_server, redis_url: str, postgres_dsn: str):
    """A fleet with no workers yet; start them with ``fleet.start_worker("a")``."""
    f = Fleet(tmp_path / "fleet", redis_server, postgres_dsn)
    yield f
    f.stop_all()
    if os.environ.get("CODEINDEX_TEST_SHOW_LOGS"):
        for log in sorted(f.logs.glob("*.log")):
            sys.stderr.write(f"===== {log.name}\n{log.read_text(errors='replace')[-4000:]}\n")


def make_repo(workdir: Path, name: str, celery_files: int = 24, kombu_files: int = 16) -> Path:
    """A git repository of real celery and kombu sources named ``name``."""
    return make_real_repo(workdir / name, celery_files, kombu_files)


def fresh_export(root: Path, workdir: Path, repo_id: str) -> list[dict]:
    """A fresh full index of a clean clone of ``root``'s HEAD, embedded mode, in a new home."""
    clone = workdir / f"clone-{uuid.uuid4().hex[:8]}"
    git(workdir, "clone", "-q", str(root), str(clone))
    home = workdir / f"fresh-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    env.update({"CODEINDEX_EMBEDDER": "hashing", "CODEINDEX_HOME": str(home)})
    subprocess.run([CLI, "sync", "--all", "--root", str(clone), "--repo", repo_id, "--format", "json"],
                   env=env, check=True, capture_output=True, timeout=300)
    export = subprocess.run([CLI, "export", "--root", str(clone)], env=env, check=True, capture_output=True,
                            text=True, timeout=120)
    return [json.loads(line) for line in export.stdout.splitlines() if line.strip()]


def assert_index_exact(fleet: Fleet, root: Path, workdir: Path, repo_id: str | None = None) -> None:
    """The fleet's index of the repository equals a fresh full index of the same commit."""
    repo_id = repo_id or root.name
    current = fleet.export(repo_id)
    fresh = fresh_export(root, workdir, repo_id)
    if len(current) != len(fresh):
        fresh_ids = {o["id"] for o in fresh}
        extra = [(o["path"], o["chunk_index"]) for o in current if o["id"] not in fresh_ids]
        current_ids = [o["id"] for o in current]
        missing = [(o["path"], o["chunk_index"]) for o in fresh if o["id"] not in set(current_ids)]
        pytest.fail(f"{len(current)} objects in the fleet ({len(set(current_ids))} distinct ids), {len(fresh)} in a "
                    f"fresh index; extra {sorted(extra)[:20]}; missing {sorted(missing)[:20]}")
    assert [o["id"] for o in current] == [o["id"] for o in fresh]
    assert current == fresh
