"""Shared fixtures: real git repositories built from real source trees on this machine
(the installed celery and kombu packages), and an embedded index in a temporary home."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import celery
import kombu
import pytest

FLEET_TESTS = "tests/fleet/"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the fleet tests first (they are the longest); the order is the same in every
    pytest-xdist worker, as xdist requires."""
    items.sort(key=lambda item: not item.nodeid.startswith(FLEET_TESTS))


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # pytest-xdist is a dev dependency; without it the suite runs in one process
    pass
else:
    class FleetInTurn(LoadScopeScheduling):
        """pytest-xdist's scheduler for scripts/test: the fleet tests are one work unit, run one
        after another on one worker (they wait on heartbeats, visibility timeouts and breakers,
        which two fleets at once on two cores would stretch); every other test is a unit of its
        own, sent to whichever worker is free. (``--dist loadgroup`` would do this with
        ``xdist_group`` marks, but pytest-xdist 3.8 renames the node ids to group them, which
        pytest 9.2's node ids no longer allow.)"""

        def _split_scope(self, nodeid: str) -> str:
            return "fleet" if nodeid.startswith(FLEET_TESTS) else nodeid

    def pytest_xdist_make_scheduler(config: pytest.Config, log) -> LoadScopeScheduling:
        """pytest-xdist's hook: the scheduler of the run (:class:`FleetInTurn`)."""
        return FleetInTurn(config, log)


GIT_ENV = {
    "GIT_AUTHOR_NAME": "codeindex-tests", "GIT_AUTHOR_EMAIL": "tests@codeindex.invalid",
    "GIT_COMMITTER_NAME": "codeindex-tests", "GIT_COMMITTER_EMAIL": "tests@codeindex.invalid",
}


def git(root: Path, *args: str) -> str:
    """Run git in ``root`` and return its stdout (raises on failure)."""
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True,
                          env=env, timeout=60).stdout


def copy_tree(src: Path, dst: Path, limit: int | None = None) -> list[str]:
    """Copy the .py files under ``src`` to ``dst`` (at most ``limit``), return their relative paths."""
    copied = []
    for path in sorted(src.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(src)
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(rel.as_posix())
        if limit and len(copied) >= limit:
            break
    return copied


def make_real_repo(root: Path, celery_files: int = 40, kombu_files: int = 30) -> Path:
    """A git repository of real code: part of the installed celery and kombu sources, one commit."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    copy_tree(Path(celery.__file__).parent / "app", root / "celery_app", celery_files)
    copy_tree(Path(kombu.__file__).parent, root / "kombu", kombu_files)
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "real sources")
    return root


@pytest.fixture
def real_repo(tmp_path: Path) -> Path:
    """A fresh git repository of real celery and kombu sources."""
    return make_real_repo(tmp_path / "repo")


@pytest.fixture
def index_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An embedded index in a temporary home, with the feature-hashing embedder."""
    from config.settings import configure
    from workers import runtime
    from workers.app import apply_settings

    home = tmp_path / "home"
    settings = configure(home=home, embedder="hashing")
    runtime.reset()
    apply_settings(settings)
    yield home
    runtime.reset()


def sync(root: Path, source: str = "paths", changes=(), repo_id: str = "repo", **options) -> dict:
    """Run one sync through the Celery tasks (eager, in-process) and return its summary."""
    from config.settings import get_settings
    from indexing.messages import SyncRequest
    from tasks.sync import plan

    request = SyncRequest(run_id=str(uuid.uuid4()), repo_id=repo_id, root=str(root), source=source,
                          collection=get_settings().collection, changes=list(changes), **options)
    return plan.apply_async(args=[request.model_dump(mode="json")]).get(disable_sync_subtasks=False)


def join_processes(procs, errors, timeout: float) -> list[str]:
    """Wait up to ``timeout`` seconds for each of ``procs`` (multiprocessing processes), kill
    any still running, and return the messages they put on the queue ``errors``."""
    for proc in procs:
        proc.join(timeout=timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    return messages


def export_index(home: Path | None = None) -> list[dict]:
    """Every object of the current index, sorted by id (the ``codeindex export`` view)."""
    from config.settings import get_settings
    from workers.runtime import runtime

    return list(runtime().vector_store(get_settings().collection).export())


# ---------------------------------------------------------------------------------------------
# Real servers for the fleet: a private Redis per test session (so a test may restart it) and a
# fresh PostgreSQL database per test session on the machine's server (127.0.0.1:5432, trust).


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private ``redis-server`` (no persistence) on a free port, started and stopped by tests."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port, self.proc = workdir, free_port(), None
        self.started_once = False
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server on :attr:`port`. A first start whose port another process took
        since :func:`free_port` chose it (another pytest-xdist worker's server, say) moves to a
        new port; a restart keeps its port, as the clients configured with :attr:`url` need."""
        for _ in range(5):
            if self._start_here():
                return
            if self.started_once:
                break
            self.port = free_port()
        pytest.fail(f"redis-server could not listen on 127.0.0.1:{self.port}: see {self.workdir / 'redis.log'}")

    def _start_here(self) -> bool:
        """Start ``redis-server`` on :attr:`port` and wait for it (10 s); False when it could not
        listen there (it exited, or what answers there is another process's server)."""
        import time

        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: the fleet tests need a real Redis")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while self.proc.poll() is None:
            try:
                if client.info("server")["process_id"] != self.proc.pid:
                    break  # another server answers on this port
                self.started_once = True
                return True
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.stop()
        return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop the server (its data is lost, as a restart without persistence loses it) and start it again."""
        import time

        self.stop()
        time.sleep(down_seconds)
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A private Redis server for this test session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the private Redis, flushed before each test."""
    import redis

    redis.Redis.from_url(redis_server.url, socket_timeout=5).flushall()
    return redis_server.url


POSTGRES_ADMIN_DSN = os.environ.get("CODEINDEX_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_database() -> str:
    """A fresh PostgreSQL database for this test session (dropped at the end); its DSN."""
    import psycopg

    name = f"codeindex_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_DSN} (scripts/test starts it): {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    yield dsn
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_dsn(postgres_database: str) -> str:
    """The session database, emptied of codeindex's tables before each test."""
    import psycopg

    with psycopg.connect(postgres_database, autocommit=True, connect_timeout=5) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return postgres_database
