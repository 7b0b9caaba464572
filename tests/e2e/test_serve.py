"""``codeindex serve``: the warm local server and the thin client, as a user runs them.

Every command is the installed console script in a subprocess. Index homes live in short
directories under /tmp: a Unix socket's path holds at most 107 bytes, and pytest's tmp_path
with a long test name comes close.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cli.transport import connect, request_json
from config.local import LocalServer
from tests.conftest import git, make_real_repo

CODEINDEX = [str(Path(sys.executable).parent / "codeindex")]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    env.update(CODEINDEX_EMBEDDER="hashing", **extra)
    return env


def run(root: Path, *args: str, env: dict, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CODEINDEX, *args], cwd=root, input=stdin if stdin is not None else b"",
                          capture_output=True, env=env, timeout=300)


def start_server(root: Path, env: dict, home: Path, *args: str) -> subprocess.Popen:
    """``codeindex serve`` in the foreground of a child process, once its socket answers."""
    proc = subprocess.Popen([*CODEINDEX, "serve", *args], cwd=root, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conn = connect(LocalServer(home).socket)
        if conn is not None:
            conn.close()
            return proc
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("codeindex serve did not listen within 60 s")


def health(home: Path) -> dict:
    conn = connect(LocalServer(home).socket)
    assert conn is not None, "no server answers"
    try:
        return request_json(conn, "GET", "/healthz")
    finally:
        conn.close()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def short_home():
    directory = Path(tempfile.mkdtemp(prefix="ci-", dir="/tmp"))
    yield directory / "home"
    shutil.rmtree(directory, ignore_errors=True)


# Values that depend on when a command ran, not on what it did: run ids, durations and clock times
# (status's indexed_at is the time the last sync committed; two runs a minute apart differ in it).
# Everything else in the output is compared as is.
_VOLATILE = re.compile(r'("(?:run_id|seconds|started_at|finished_at|indexed_at)": )("[^"]*"|[0-9.]+)'
                       r'|(Time: +)[0-9.]+s')


_COMMIT = re.compile(r"\b[0-9a-f]{40}\b")
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_DECIMAL = re.compile(r"[0-9]+\.[0-9]+")


def normalized(proc: subprocess.CompletedProcess, root: Path) -> tuple[int, str, str]:
    """Exit code, stdout and stderr with the root's path, the per-run values and the commit ids
    (the two repositories' commits differ in their dates), task ids and timings (the verbose
    sync's log lines) blanked."""
    def clean(data: bytes) -> str:
        text = _VOLATILE.sub(lambda m: (m.group(1) or m.group(3)) + "X", data.decode().replace(str(root), "ROOT"))
        return _DECIMAL.sub("N", _UUID.sub("UUID", _COMMIT.sub("COMMIT", text)))
    return proc.returncode, clean(proc.stdout), clean(proc.stderr)


def script(root: Path, env: dict) -> list[subprocess.CompletedProcess]:
    """A user's session: syncs from every source, searches, status, export, and the errors."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py"))
    results = [run(root, "sync", "--all", env=env)]
    (root / files[0]).write_text((root / files[0]).read_text() + "\n# edited\n")
    git(root, "rm", "-q", files[1])
    git(root, "commit", "-qam", "edit")
    results.append(run(root, "sync", "--stdin", env=env, stdin=git(root, "diff", "--name-status", "HEAD~1").encode()))
    results.append(run(root, "sync", "--json", "--changes", str(root / "missing.json"), env=env))
    (root / "changes.json").write_text(json.dumps({"repositories": [{"path": str(root), "modified": [files[2]]}]}))
    results.append(run(root, "sync", "--json", "--changes", str(root / "changes.json"), env=env))
    results.append(run(root, "sync", "--detect-changes", "--dry-run", "--verbose", env=env))
    results.append(run(root, "search", "connection pool", "-k", "3", "--json", env=env))
    results.append(run(root, "search", "--queries", "-", "--mode", "hybrid", env=env, stdin=b"retry\nbroker url\n"))
    results.append(run(root, "search", env=env))  # neither QUERY nor --queries: exit 2
    results.append(run(root, "status", "--json", env=env))
    results.append(run(root, "export", env=env))
    # the reader leaves early (`| head`): exit 1, nothing said (click's rule in-process)
    results.append(subprocess.run(["bash", "-c", f'"{CODEINDEX[0]}" export | head -c 100 > /dev/null; '
                                  'echo "exit ${PIPESTATUS[0]}"'], cwd=root, env=env, capture_output=True, timeout=300))
    for path in files[3:]:
        (root / path).unlink()
    results.append(run(root, "sync", "--all", "--delete-missing", env=env))  # the mass-delete guard: exit 3
    return results


def indexed_at(status: subprocess.CompletedProcess) -> datetime:
    """The one repository's indexed_at in ``status --json``, which the comparison blanks."""
    (repo,) = json.loads(status.stdout)["repositories"]
    return datetime.fromisoformat(repo["indexed_at"])


def test_same_output_through_server(tmp_path: Path) -> None:
    """The same session in two identical repositories, one through a server, one in-process:
    the same exit codes and output, and the server served every command."""
    served_root = make_real_repo(tmp_path / "a" / "repo", celery_files=12, kombu_files=12)
    local_root = make_real_repo(tmp_path / "b" / "repo", celery_files=12, kombu_files=12)
    env = environment()
    home = served_root / ".codeindex"
    server = start_server(served_root, env, home, "--idle-timeout", "0")
    began = datetime.now(timezone.utc).replace(microsecond=0)
    try:
        served = script(served_root, env)
        assert health(home)["served"] == len(served)
    finally:
        stop(server)
    assert not (home / "serve.sock").exists(), "a stopped server removes its socket"
    in_process = script(local_root, env)
    ended = datetime.now(timezone.utc)
    # the blanked clock times are still checked: each is when that session's last sync committed
    assert began <= indexed_at(served[8]) <= indexed_at(in_process[8]) <= ended
    through = [normalized(proc, served_root) for proc in served]
    here = [normalized(proc, local_root) for proc in in_process]
    assert [r[0] for r in through] == [0, 0, 2, 0, 0, 0, 0, 2, 0, 0, 0, 3]
    assert through[10][1] == "exit 1\n" and through[10][2] == ""
    assert '"indexed_at": X' in through[8][1] and '"files": ' in through[8][1]
    for ours, theirs in zip(through, here):
        assert ours == theirs


def test_socket_0600_one_server_per_home_stale_socket(tmp_path: Path, short_home: Path) -> None:
    root = make_real_repo(tmp_path / "repo", celery_files=3, kombu_files=3)
    env = environment(CODEINDEX_HOME=str(short_home))
    first = start_server(root, env, short_home)
    try:
        socket_path = LocalServer(short_home).socket
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(socket_path).st_mode)
        second = run(root, "serve", env=env)
        assert second.returncode == 3
        assert f"already serves {short_home} (pid {first.pid})" in second.stderr.decode()
        assert health(short_home)["pid"] == first.pid
    finally:
        first.kill()
        first.wait(10)
    assert socket_path.exists(), "SIGKILL leaves the socket behind"
    in_process = run(root, "sync", "--all", env=env)  # the stale socket: the client runs the command itself
    assert in_process.returncode == 0, in_process.stderr.decode()
    assert "Added:     7 files" in in_process.stdout.decode()
    replacement = start_server(root, env, short_home)
    try:
        assert health(short_home)["pid"] == replacement.pid
        status = run(root, "status", "--json", env=env)
        assert json.loads(status.stdout)["repositories"][0]["files"] == 7
        assert health(short_home)["served"] == 1
        stopped = run(root, "serve", "--stop", "--json", env=env)
        assert json.loads(stopped.stdout) == {"stopped": True, "running": False, "pid": replacement.pid,
                                              "home": str(short_home)}
        replacement.wait(30)
    finally:
        stop(replacement)
    assert not socket_path.exists()
    again = run(root, "serve", "--stop", env=env)
    assert again.returncode == 0 and "no server runs" in again.stdout.decode()


def test_thin_client_imports_no_celery_lancedb_model(tmp_path: Path, short_home: Path) -> None:
    root = make_real_repo(tmp_path / "repo", celery_files=3, kombu_files=3)
    env = environment(CODEINDEX_HOME=str(short_home))
    assert run(root, "sync", "--all", env=env).returncode == 0
    server = start_server(root, env, short_home)
    try:
        probe = ("import sys; sys.argv = ['codeindex', 'sync', '--detect-changes', '--json']\n"
                 "from cli.client import forward\n"
                 "code = forward(sys.argv[1:])\n"
                 "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'celery', 'kombu', 'lancedb', 'torch', "
                 "'sentence_transformers', 'numpy', 'pydantic', 'typer', 'tokenizers'})\n"
                 "sys.stderr.write(f'heavy={heavy} code={code}\\n')\n")
        proc = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, timeout=60)
        assert "heavy=[] code=0" in proc.stderr.decode(), proc.stderr.decode()
        summary = json.loads(proc.stdout)  # nothing committed since the full index: nothing to do
        assert summary["status"] == "succeeded" and summary["added"] == summary["updated"] == 0
        assert health(short_home)["served"] == 1
    finally:
        stop(server)


def _running_runs(home: Path) -> int:
    try:
        with sqlite3.connect(f"file:{home / 'state.sqlite'}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM sync_runs WHERE status = 'running' AND files_done > 0").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_server_killed_mid_sync_loses_nothing(tmp_path: Path, short_home: Path) -> None:
    """SIGKILL the server while it syncs: the client says so (exit 4); the next sync, in-process,
    completes the work, and the index equals a fresh full index of the same tree."""
    root = make_real_repo(tmp_path / "repo", celery_files=120, kombu_files=80)
    env = environment(CODEINDEX_HOME=str(short_home))
    server = start_server(root, env, short_home)
    client = subprocess.Popen([*CODEINDEX, "sync", "--all"], cwd=root, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _running_runs(short_home) == 0:
            assert client.poll() is None, "the sync ended before the server could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.kill()
        _, err = client.communicate(timeout=120)
    finally:
        server.kill()
        server.wait(10)
        client.kill()
    assert client.returncode == 4, err.decode()
    assert "the codeindex server" in err.decode() and "stopped during the command" in err.decode()
    again = run(root, "sync", "--all", env=env)
    assert again.returncode == 0, again.stderr.decode()
    exported = run(root, "export", "--vectors", env=env).stdout
    fresh_home = short_home.parent / "fresh"
    fresh = run(root, "sync", "--all", env={**env, "CODEINDEX_HOME": str(fresh_home)})
    assert fresh.returncode == 0
    assert exported == run(root, "export", "--vectors", env={**env, "CODEINDEX_HOME": str(fresh_home)}).stdout
    runs = run(root, "runs", "--json", env=env)
    statuses = sorted(r["status"] for r in json.loads(runs.stdout))
    assert statuses == ["abandoned", "succeeded"]


def test_sync_daemon_starts_a_detached_server_that_idles_out(tmp_path: Path, short_home: Path) -> None:
    root = make_real_repo(tmp_path / "repo", celery_files=3, kombu_files=3)
    env = environment(CODEINDEX_HOME=str(short_home), CODEINDEX_SERVE_IDLE_TIMEOUT="3")
    first = run(root, "sync", "--all", "--daemon", env=env)
    assert first.returncode == 0, first.stderr.decode()
    assert "Added:     7 files" in first.stdout.decode()
    about = health(short_home)
    assert about["served"] == 1 and about["home"] == str(short_home)
    second = run(root, "sync", "--detect-changes", env={**env, "CODEINDEX_DAEMON": "1"})
    assert second.returncode == 0 and "Processing 0 changes" in second.stdout.decode()
    assert health(short_home)["pid"] == about["pid"] and health(short_home)["served"] == 2
    deadline = time.monotonic() + 30
    while (short_home / "serve.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (short_home / "serve.sock").exists(), "the idle timeout stops the server"
    assert "idle for 3 s, exiting" in (short_home / "serve.log").read_text()
