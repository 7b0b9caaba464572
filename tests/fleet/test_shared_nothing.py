"""A fleet that shares no disk (issue 9): three workers, each with its own index home, data
directory, temporary directory and home under a root of its own; beat and the CLI under roots of
their own too. They share Redis, PostgreSQL and one S3 bucket (moto's server over HTTP), which
holds the vector store (LanceDB on S3) and the content objects. Repositories are served as
``file://`` URLs of bare repositories built from real sources (tests/history.py).

Every worker runs under ``strace`` (when the machine has it): after each test the traces show
that no worker opened, created, renamed or removed a path under another's root, and that every
path a worker wrote lies under its own root. Without strace the roots' listings are checked
(each holds only its own repositories' clones and caches). After every step the fleet's index
equals a fresh embedded full index of the same commit (same ids, same content hashes, nothing
extra)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from tests.fleet.conftest import CLI, Fleet, wait_for
from tests.history import History, differences, fresh_export, make_history
from tests.s3 import S3Endpoint, s3_server  # noqa: F401 - the session fixture, used by name

STRACE = shutil.which("strace")
#: The calls traced: every way a process names a path to open, create, rename or remove, and
#: how it changes directory and forks (to resolve relative paths).
TRACED = ("open,openat,openat2,creat,mkdir,mkdirat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,"
          "unlink,unlinkat,rmdir,truncate,chdir,fchdir,clone,clone3,fork,vfork")
#: Writes a process may make outside its root: devices, its own /proc entries, and the clock
#: state libuuid keeps for time-based UUIDs (uuid1: redis-py's Lock tokens).
NEUTRAL = ("/dev/null", "/dev/shm/", "/dev/tty", "/dev/urandom", "/proc/", "/var/lib/libuuid/")
#: 1 KB, 150 KB and 2 MB: one file below the inline limit (100 KB), two above it.
SIZES = {"small.py": 1_000, "medium.py": 150_000, "large.py": 2_000_000}
LIMITS = {"CODEINDEX_MAX_FILE_SIZE": str(4 * 1024 * 1024), "CODEINDEX_BATCH_BYTES": str(4 * 1024 * 1024)}


def python_file(name: str, size: int) -> str:
    """Real-looking Python of about ``size`` bytes (functions of a few lines each)."""
    lines, total, i = [], 0, 0
    while total < size:
        line = f"def {name}_{i}(value):\n    return value * {i} + len('{name}')  # {'-' * 40}\n\n\n"
        lines.append(line)
        total += len(line)
        i += 1
    return "".join(lines)


@dataclass
class Node:
    """One process's own root: its index home, data directory, temporary directory and home."""

    name: str
    root: Path
    trace: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        for sub in ("home", "data", "tmp", "pycache"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        return {"CODEINDEX_HOME": str(self.root / "home"), "CODEINDEX_DATA_DIR": str(self.root / "data"),
                "TMPDIR": str(self.root / "tmp"), "HOME": str(self.root),
                "PYTHONPYCACHEPREFIX": str(self.root / "pycache")}


@dataclass
class SharedNothing:
    """The fleet, its S3 bucket and the roots of its processes."""

    fleet: Fleet
    endpoint: S3Endpoint
    bucket: str
    nodes: dict[str, Node] = field(default_factory=dict)
    owned: dict[str, set[str]] = field(default_factory=dict)  # shard -> repositories it ever owned
    token: str = field(default_factory=lambda: f"ghp_{uuid.uuid4().hex}")  # the git token every process has

    @property
    def s3_env(self) -> dict[str, str]:
        e = self.endpoint
        return {"CODEINDEX_S3_ENDPOINT_URL": e.url, "CODEINDEX_S3_REGION": e.region,
                "CODEINDEX_S3_ACCESS_KEY_ID": e.access_key or "", "CODEINDEX_S3_SECRET_ACCESS_KEY": e.secret_key or "",
                "CODEINDEX_STORE_URI": f"s3://{self.bucket}/lancedb",
                "CODEINDEX_OBJECT_STORE_URI": f"s3://{self.bucket}/objects"}

    def node(self, name: str) -> Node:
        if name not in self.nodes:
            self.nodes[name] = Node(name, self.fleet.workdir / "roots" / name)
        return self.nodes[name]

    def start_worker(self, shard: str, extra_env: dict | None = None, **options) -> None:
        node = self.node(shard)
        prefix: tuple[str, ...] = ()
        if STRACE:
            node.trace = self.fleet.logs / f"trace-{shard}.txt"
            prefix = (STRACE, "-f", "--seccomp-bpf", "-qq", "-y", "-e", f"trace={TRACED}", "-e", "signal=none",
                      "-o", str(node.trace))
        self.fleet.start_worker(shard, extra_env={**node.env, **(extra_env or {})}, prefix=prefix, cwd=node.root,
                                **options)

    def start_beat(self) -> None:
        node = self.node("beat")
        self.fleet.start_beat(extra_env=node.env, cwd=node.root)

    def cli(self, *args: str, **options) -> subprocess.CompletedProcess:
        return self.fleet.cli(*args, extra_env={**self.node("cli").env, **options.pop("extra_env", {})}, **options)

    def sync(self, repo: str, *args: str, exit_code: int = 0) -> dict:
        """``codeindex sync --repo REPO --format json``: the summary; the exit code must be ``exit_code``."""
        proc = self.cli("sync", "--repo", repo, "--format", "json", *args, timeout=300, check=exit_code == 0)
        assert proc.returncode == exit_code, proc.stderr
        return json.loads(proc.stdout)

    def store(self):
        from indexing.lance_store import LanceDBStore

        return LanceDBStore(f"s3://{self.bucket}/lancedb", "codeindex", storage_options=self._storage_options())

    def _storage_options(self) -> dict[str, str]:
        from config.settings import Settings
        from workers.runtime import Runtime

        e = self.endpoint
        settings = Settings(s3_endpoint_url=e.url, s3_region=e.region, s3_access_key_id=e.access_key,
                            s3_secret_access_key=e.secret_key)
        return Runtime(settings).s3_storage_options()

    def export(self, repo_id: str) -> list[dict]:
        return [o for o in self.store().export() if o["repo"] == repo_id]

    def s3(self):
        e = self.endpoint
        return boto3.client("s3", endpoint_url=e.url, region_name=e.region, aws_access_key_id=e.access_key,
                            aws_secret_access_key=e.secret_key,
                            config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3},
                                          s3={"addressing_style": "path"}))

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def assert_exact(self, history: History, repo_id: str, commit: str | None = None) -> None:
        commit = commit or history.commits[-1]
        assert self.fleet.state().get_repo(repo_id).last_commit == commit
        current = self.export(repo_id)
        fresh = fresh_export(history.url, commit, self.fleet.workdir, repo_id, LIMITS)
        assert not differences(current, fresh), differences(current, fresh)

    def assert_contained(self) -> None:
        """No worker touched a path under another root; every path it wrote is under its own."""
        roots = {name: node.root.resolve() for name, node in self.nodes.items()}
        for name, node in self.nodes.items():
            if node.trace is None:
                continue
            touched, written = traced_paths(node.trace, node.root.resolve())
            assert touched, f"the trace of worker {name} names no path: is strace working?"
            for other, root in roots.items():
                if other != name:
                    stray = sorted(p for p in touched if _under(p, root))
                    assert not stray, f"worker {name} reached into {other}'s root: {stray[:10]}"
            outside = sorted(p for p in written if not _under(p, roots[name]) and not p.startswith(NEUTRAL))
            assert not outside, f"worker {name} wrote outside its root: {outside[:10]}"
        for name, root in roots.items():  # and the listing: each root holds only its own clones
            clones = {p.name for p in (root / "data").glob("*.git")}
            owned_ever = {f"{repo}.git" for repo in self.owned.get(name, set())}
            assert clones <= owned_ever, f"{name} holds clones of repositories it never owned: {clones - owned_ever}"

    def assert_token_never_shown(self) -> None:
        """The git token is in no log, no file any process wrote, no Redis value (messages,
        results, task events: what Flower shows), no row of PostgreSQL and no S3 object."""
        import base64

        import psycopg

        secrets = [self.token.encode(), base64.b64encode(f"x-access-token:{self.token}".encode())]
        places: list[tuple[str, bytes]] = []
        for path in [*self.fleet.logs.rglob("*"), *(self.fleet.workdir / "roots").rglob("*")]:
            if path.is_file() and not path.is_symlink():
                places.append((str(path), path.read_bytes()))
        client = self.fleet.redis()
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            value = {"string": lambda: client.get(key), "list": lambda: b"".join(client.lrange(key, 0, -1)),
                     "hash": lambda: b"".join(k + v for k, v in client.hgetall(key).items()),
                     "set": lambda: b"".join(client.smembers(key)),
                     "zset": lambda: b"".join(client.zrange(key, 0, -1))}.get(kind, lambda: b"")()
            places.append((f"redis {key!r}", key + (value or b"")))
        with psycopg.connect(self.fleet.dsn, connect_timeout=5) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
            for table in tables:
                rows = conn.execute(f'SELECT t::text FROM "{table}" t').fetchall()
                places.append((f"postgres {table}", "".join(r[0] for r in rows).encode()))
        for key in self.keys():
            places.append((f"s3 {key}", self.s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()))
        assert len(places) > 100, "too little was searched for the token"
        for where, data in places:
            for secret in secrets:
                assert secret not in data, f"the git token shows in {where}"

    def note_owners(self, *repos: str) -> None:
        for repo in repos:
            owner = self.fleet.owner(repo)
            if owner:
                self.owned.setdefault(owner, set()).add(repo)


def _under(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(str(root) + "/")


_LINE = re.compile(r"^(?P<pid>\d+)\s+(?:<\.\.\. )?(?P<call>\w+)(?:\(| resumed>)(?P<rest>.*)$")
_DIRFD_PATH = re.compile(r'(?:AT_FDCWD|\d+)<(?P<dir>[^>]*)>, "(?P<path>(?:[^"\\]|\\.)*)"')
_STRING = re.compile(r'"(?P<path>(?:[^"\\]|\\.)*)"')
_RESULT_PATH = re.compile(r"= \d+<(?P<path>[^>]*)>$")
_WRITES = ("creat", "mkdir", "mkdirat", "rename", "renameat", "renameat2", "link", "linkat", "symlink",
           "symlinkat", "unlink", "unlinkat", "rmdir", "truncate")


def traced_paths(trace: Path, start_cwd: Path) -> tuple[set[str], set[str]]:
    """Every absolute path the traced processes named (``touched``) and those they wrote
    (opened for writing, created, renamed, removed), relative ones resolved against the
    process's working directory (followed through chdir and fork)."""
    cwd: dict[str, str] = {}
    touched: set[str] = set()
    written: set[str] = set()
    for line in trace.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        pid, call, rest = m["pid"], m["call"], m["rest"]
        here = cwd.get(pid, str(start_cwd))
        if call in ("clone", "clone3", "fork", "vfork"):
            child = re.search(r"= (\d+)$", rest)
            if child:
                cwd[child.group(1)] = here
            continue
        paths = [os.path.normpath(os.path.join(d["dir"], d["path"])) for d in _DIRFD_PATH.finditer(rest)]
        if not paths and call != "fchdir":
            named = [s["path"] for s in _STRING.finditer(rest) if s["path"]]
            if call in ("symlink", "symlinkat"):
                named = named[1:]  # the first is the link's content, not a path it opens
            paths = [os.path.normpath(os.path.join(here, p)) for p in named]
        if result := _RESULT_PATH.search(rest):
            paths.append(result["path"])
        if call == "chdir" and rest.rstrip().endswith("= 0") and paths:
            cwd[pid] = paths[0]
        elif call == "fchdir" and (fd := re.search(r"\d+<(?P<dir>[^>]*)>", rest)) and rest.rstrip().endswith("= 0"):
            cwd[pid] = fd["dir"]
            paths = [fd["dir"]]
        touched.update(paths)
        if call in _WRITES or re.search(r"O_WRONLY|O_RDWR|O_CREAT", rest):
            written.update(paths)
    return touched, written


@pytest.fixture
def shared_nothing(fleet: Fleet, s3_server: S3Endpoint):  # noqa: F811 - the fixture imported above
    """A shared-nothing fleet with no workers yet, on a bucket of its own (dropped afterwards)."""
    bucket = f"codeindex-fleet-{uuid.uuid4().hex[:12]}"
    fleet.home = fleet.workdir / "roots" / "cli" / "home"  # nothing of the fleet is read from here
    sn = SharedNothing(fleet, s3_server, bucket)
    sn.s3().create_bucket(Bucket=bucket)
    secrets = fleet.workdir / "secrets"  # a mounted secret: read by every process, written by none
    secrets.mkdir(parents=True)
    (secrets / "git-token").write_text(sn.token + "\n")
    fleet.env["CODEINDEX_GIT_TOKEN_FILE"] = str(secrets / "git-token")
    fleet.env.update(sn.s3_env)
    fleet.env.update(LIMITS)
    fleet.env.update(sn.node("cli").env)
    yield sn
    fleet.stop_all()
    s3_server.drop_bucket(bucket)


def add_large_files(history: History, marker: str) -> str:
    for name, size in SIZES.items():
        (history.work / name).write_text(python_file(f"{marker}_{name[:-3]}", size))
    return history.commit(f"files of 1 KB, 150 KB and 2 MB ({marker})")


def strategies_logged(fleet: Fleet, shard: str, repo_id: str) -> list[dict[str, int]]:
    """The content strategy counts the owner logged for each sync of ``repo_id``."""
    found = re.findall(rf"of {re.escape(repo_id)}: content strategies ([\w= ]+)$", fleet.log(f"worker-{shard}"),
                       re.MULTILINE)
    return [{k: int(v) for k, v in (pair.split("=") for pair in line.split())} for line in found]


def test_three_workers_sharing_no_disk_index_replay_and_survive_an_owner_killed_mid_sync(
        shared_nothing: SharedNothing, tmp_path: Path) -> None:
    sn, fleet = shared_nothing, shared_nothing.fleet
    for shard in ("a", "b", "c"):
        sn.start_worker(shard)
    sn.start_beat()
    celery_like = make_history(tmp_path / "upstream", "celery-src", celery_files=30, kombu_files=10)
    kombu_like = make_history(tmp_path / "upstream", "kombu-src", celery_files=10, kombu_files=30)
    for history in (celery_like, kombu_like):
        added = json.loads(sn.cli("repo", "add", history.url, "--name", history.bare.stem, "--json",
                                  timeout=300).stdout)
        assert added["errors"] == 0 and added["commit"] == history.commits[-1]
        sn.assert_exact(history, history.bare.stem)
    sn.note_owners("celery-src", "kombu-src")
    # Replay: each commit synced incrementally, each index exact at its commit.
    for commit in celery_like.replay():
        summary = sn.sync("celery-src")
        assert summary["errors"] == 0 and summary["commit"] == commit
        sn.assert_exact(celery_like, "celery-src", commit)
    # The owner of kombu-src is killed mid-sync: beat moves the repository, the new owner clones
    # it into its own data directory and completes the run the CLI waits for.
    list(kombu_like.replay())
    # Every upsert waits for the table's write lock, which the test holds, so that the owner
    # dies with the plan made and the batches in flight.
    from workers.locks import redis_lock
    from workers.runtime import table_lock_key

    table_lock = redis_lock(fleet.redis(), table_lock_key(sn.s3_env["CODEINDEX_STORE_URI"], "codeindex"),
                            what="the table (held by the test)", ttl=60, timeout=30)
    table_lock.__enter__()
    cli = subprocess.Popen([CLI, "sync", "--repo", "kombu-src", "--all", "--format", "json"], env=fleet.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=sn.node("cli").root)
    try:
        wait_for(lambda: (runs := [r for r in fleet.state().list_runs(20) if r.repo_id == "kombu-src"
                                   and r.trigger != "repo-add"]) and runs[0].files_total > 0, 120,
                 "the sync of kombu-src to be planned")
        time.sleep(1.0)  # the batches are taken, and wait for the lock
        victim = fleet.owner("kombu-src")
        fleet.kill(victim, signal.SIGKILL)
    finally:
        table_lock.__exit__(None, None, None)
    out, err = cli.communicate(timeout=300)
    assert cli.returncode == 0, err
    summary = json.loads(out)
    assert summary["errors"] == 0 and summary["commit"] == kombu_like.commits[-1]
    wait_for(lambda: fleet.shard_status(victim) == "offline", 60, f"shard {victim} to be declared offline")
    new_owner = wait_for(lambda: (o := fleet.owner("kombu-src")) not in (None, victim) and o, 60,
                         "kombu-src to move to a live shard")
    sn.assert_exact(kombu_like, "kombu-src")
    # The next commit is fetched by the new owner into its own data directory: it clones.
    (kombu_like.work / "after_failover.py").write_text("def after_failover():\n    return 'new owner'\n")
    head = kombu_like.commit("a commit after the failover")
    summary = sn.sync("kombu-src")
    assert summary["errors"] == 0 and summary["commit"] == head and summary["added"] == 1, summary
    assert (sn.node(new_owner).root / "data" / "kombu-src.git").is_dir()
    sn.note_owners("kombu-src")
    sn.assert_exact(kombu_like, "kombu-src")
    # And the celery repository's owner (a new one too, if the victim held it) goes on.
    assert sn.sync("celery-src")["errors"] == 0
    sn.note_owners("celery-src")
    sn.assert_exact(celery_like, "celery-src")
    sn.assert_contained()
    keys = sn.keys()
    assert keys and all(k.startswith(("lancedb/", "objects/")) for k in keys), sorted(keys)[:10]
    sn.assert_token_never_shown()


def test_each_content_strategy_carries_1kb_150kb_and_2mb_files_and_a_corrupted_object_is_refused(
        shared_nothing: SharedNothing, tmp_path: Path) -> None:
    sn, fleet = shared_nothing, shared_nothing.fleet
    strategies = {"a": "auto", "b": "object_storage", "c": "git_reference"}
    # Time limits above what a batch with the 2 MB file takes on a slow machine under strace
    # (the fleet's 8 s soft limit was exceeded on 2026-12-07, by the code that passed on 2026-12-06):
    # this test is about content, not about time limits.
    fleet.env.update({"CODEINDEX_TASK_TIME_LIMIT": "60", "CODEINDEX_TASK_SOFT_TIME_LIMIT": "50",
                      "CODEINDEX_VISIBILITY_TIMEOUT": "90"})
    for shard, strategy in strategies.items():
        sn.start_worker(shard, extra_env={"CODEINDEX_CONTENT_STRATEGY": strategy})
    histories = {}
    for shard, strategy in strategies.items():
        name = f"by-{strategy.replace('_', '-')}"
        history = histories[shard] = make_history(tmp_path / "upstream", name, celery_files=6, kombu_files=4)
        fleet.registry().assign(name, shard)
        sn.cli("repo", "add", history.url, "--name", name, "--json", timeout=300)
        add_large_files(history, name.replace("-", "_"))
        summary = sn.sync(name)
        assert summary["errors"] == 0 and summary["added"] == 3, summary
        sn.assert_exact(history, name)
    sn.note_owners(*(f"by-{s.replace('_', '-')}" for s in strategies.values()))
    # What each owner sent for the three files (the log line of its second sync).
    assert strategies_logged(fleet, "a", "by-auto")[-1] == {"inline": 1, "object_storage": 2}
    assert strategies_logged(fleet, "b", "by-object-storage")[-1] == {"object_storage": 3}
    assert strategies_logged(fleet, "c", "by-git-reference")[-1] == {"git_reference": 3}
    # The inline content went through Redis in the batch messages, and stays in none of its
    # values (results, chord state): an extended result would keep the arguments for a day.
    small = python_file("by_auto_small", SIZES["small.py"]).splitlines()[0].encode()  # one line: JSON escapes newlines
    client = fleet.redis()
    kept = [key for key in client.scan_iter(count=1000) if client.type(key) == b"string"
            and small in (client.get(key) or b"")]
    assert not kept, f"file content kept in Redis under {kept[:5]}"
    stored = set(sn.keys("objects/projects/"))
    assert {k.split("/")[2] for k in stored} == {"by-auto", "by-object-storage"}  # no object for git references
    for repo, names in (("by-auto", ("medium.py", "large.py")), ("by-object-storage", tuple(SIZES))):
        marker = repo.replace("-", "_")
        for name in names:
            digest = hashlib.sha256(python_file(f"{marker}_{name[:-3]}", SIZES[name]).encode()).hexdigest()
            assert f"objects/projects/{repo}/{digest}.py" in stored, (repo, name)

    # A corrupted object: a 150 KB file's object has its bytes changed after upload (its
    # metadata, the checksum the owner trusts, kept). The reader refuses it by checksum.
    history = histories["a"]
    text = python_file("to_corrupt", 150_000)
    (history.work / "corrupt_me.py").write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    corrupted = text.replace("value", "VALUE", 1).encode()
    assert len(corrupted) == len(text.encode())
    key = f"objects/projects/by-auto/{digest}.py"
    sn.s3().put_object(Bucket=sn.bucket, Key=key, Body=corrupted, Metadata={"sha256": digest})
    history.commit("a file whose object is corrupted in S3")
    summary = sn.sync("by-auto", exit_code=1)  # 1: some files failed
    assert summary["errors"] == 1, summary
    refused = {f["path"]: f for f in summary["files"]}["corrupt_me.py"]
    assert refused["action"] == "ERROR" and "does not match its checksum" in refused["reason"], refused
    assert all(o["path"] != "corrupt_me.py" for o in sn.export("by-auto"))  # nothing indexed from it
    assert key not in sn.keys("objects/projects/by-auto/")  # and the corrupt object removed
    # The next full sync uploads the right bytes, and the index is exact.
    assert sn.sync("by-auto", "--all")["errors"] == 0
    sn.assert_exact(history, "by-auto")
    sn.assert_contained()


def breaker_state(fleet: Fleet, dependency: str) -> str | None:
    value = fleet.redis().get(f"codeindex:{dependency}:pybreaker:state")
    return value.decode() if value else None


def test_s3_down_for_30_seconds_mid_sync_opens_the_breaker_and_loses_nothing(
        shared_nothing: SharedNothing, tmp_path: Path) -> None:
    sn, fleet = shared_nothing, shared_nothing.fleet
    if sn.endpoint.server is None:
        pytest.fail("this test stops S3 for 30 s: it needs the moto server the test command starts, "
                    "not the external CODEINDEX_TEST_S3_ENDPOINT")
    # Retries that outlast the outage (40, at most 4 s apart), and time limits above one S3
    # call's worst case (Lance: 3 attempts within 30 s).
    patient = {"CODEINDEX_MAX_RETRIES": "40", "CODEINDEX_RETRY_BACKOFF_MAX": "4", "CODEINDEX_TASK_TIME_LIMIT": "60",
               "CODEINDEX_TASK_SOFT_TIME_LIMIT": "50", "CODEINDEX_VISIBILITY_TIMEOUT": "90"}
    fleet.env.update(patient)
    for shard in ("a", "b"):
        sn.start_worker(shard)
    sn.start_beat()
    history = make_history(tmp_path / "upstream", "outage", celery_files=30, kombu_files=20)
    fleet.registry().assign("outage", "a")
    sn.cli("repo", "add", history.url, "--name", "outage", "--json", timeout=300)
    sn.note_owners("outage")
    add_large_files(history, "outage")
    list(history.replay())
    run_id = sn.cli("sync", "--repo", "outage", "--no-wait").stdout.strip().splitlines()[-1]
    wait_for(lambda: (r := fleet.state().get_run(run_id)) and r.files_total > 0, 120, "the plan")
    sn.endpoint.server.stop()
    stopped = time.monotonic()
    try:
        wait_for(lambda: "open" in (breaker_state(fleet, "vector_store"), breaker_state(fleet, "object_storage")),
                 60, "a breaker of S3 (vector store or object storage) to open")
        time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
    finally:
        sn.endpoint.server.start()
    run = wait_for(lambda: (r := fleet.state().get_run(run_id)) and r.status != "running" and r, 300,
                   "the sync to finish once S3 is back")
    assert run.status == "succeeded", run.message
    sn.assert_exact(history, "outage")
    sn.assert_contained()
