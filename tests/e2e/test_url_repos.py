"""Repositories added by git URL, in the embedded mode, as a user runs the CLI: the owner's own
clone under the data directory, syncs from the last indexed commit to the fetched head read from
git objects, and an index that after every commit equals a fresh full index of that commit.
Credentials never appear in anything the commands print or write."""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from tests.conftest import git
from tests.history import CLI, History, differences, fresh_export, make_history


def run(cwd: Path, home: Path, *args: str, env: dict | None = None, check: bool = True,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    environment.update({"CODEINDEX_EMBEDDER": "hashing", "CODEINDEX_HOME": str(home), **(env or {})})
    proc = subprocess.run([CLI, *args], cwd=cwd, input=stdin, capture_output=True, text=True, env=environment,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"codeindex {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def export(cwd: Path, home: Path, repo_id: str) -> list[dict]:
    lines = run(cwd, home, "export").stdout.splitlines()
    return [o for o in (json.loads(line) for line in lines if line.strip()) if o["repo"] == repo_id]


@pytest.fixture
def history(tmp_path: Path) -> History:
    return make_history(tmp_path / "upstream", "lib")


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    place = tmp_path / "anywhere"  # not a git work tree: the URL repository is all there is
    place.mkdir()
    return place


def assert_exact(cwd: Path, home: Path, history: History, commit: str, workdir: Path, env: dict | None = None) -> None:
    current, fresh = export(cwd, home, "lib"), fresh_export(history.url, commit, workdir, "lib", env)
    assert current == fresh, differences(current, fresh)


def test_a_url_repository_is_cloned_by_its_owner_and_follows_its_branch_exactly(history, cwd, tmp_path):
    home = tmp_path / "home"
    added = json.loads(run(cwd, home, "repo", "add", history.url, "--name", "lib", "--json").stdout)
    assert added["added"] > 30 and added["errors"] == 0 and added["commit"] == history.commits[-1]
    clone = home / "repos" / "lib.git"
    assert (clone / "HEAD").is_file() and not (clone / "index").exists()  # a bare clone in the data directory
    assert_exact(cwd, home, history, history.commits[-1], tmp_path)

    expected = [(1, 0, 0), (0, 6, 0), (0, 1, 1), (0, 0, 1), (1, 2, 2)]  # updated, added, deleted per commit
    for commit, (updated, added_n, deleted) in zip(history.replay(), expected):
        summary = json.loads(run(cwd, home, "sync", "--repo", "lib", "--format", "json").stdout)
        assert summary["commit"] == commit
        assert (summary["updated"], summary["added"], summary["deleted"]) == (updated, added_n, deleted), summary
        assert summary["unchanged"] == 0  # only what the diff names is looked at
        assert_exact(cwd, home, history, commit, tmp_path)

    [row] = json.loads(run(cwd, home, "repo", "list", "--json").stdout)
    assert (row["url"], row["branch"], row["last_commit"], row["root"]) == (history.url, "main", history.commits[-1], "")
    assert 0 <= row["age_seconds"] < 120
    text = run(cwd, home, "repo", "list").stdout
    assert f"lib  shard=local" in text and history.url in text and "indexed=" in text


def test_a_rewritten_history_is_synced_in_full_from_the_new_head(history, cwd, tmp_path):
    home = tmp_path / "home"
    list(history.replay())
    run(cwd, home, "repo", "add", history.url, "--name", "lib")
    git(history.work, "reset", "-q", "--hard", history.commits[1])
    (history.work / "after_rewrite.py").write_text("REWRITTEN = True\n")
    git(history.work, "add", "-A")
    git(history.work, "commit", "-q", "-m", "rewritten")
    git(history.work, "push", "-q", "--force", str(history.bare), "HEAD:refs/heads/main")
    head = git(history.work, "rev-parse", "HEAD").strip()
    clone = home / "repos" / "lib.git"  # the owner's clone fetches the rewrite, and gc then prunes the old commits
    subprocess.run(["git", "-C", str(clone), "fetch", "-q", history.url, "+refs/heads/main:refs/heads/main"], check=True)
    subprocess.run(["git", "-C", str(clone), "gc", "-q", "--prune=now"], check=True)
    assert subprocess.run(["git", "-C", str(clone), "cat-file", "-e", history.commits[-1]]).returncode != 0
    guarded = run(cwd, home, "sync", "--repo", "lib", "--format", "json", check=False)
    assert guarded.returncode == 3 and "above the 20% guard" in guarded.stderr  # the rewrite drops 9 of 42 files
    summary = json.loads(run(cwd, home, "sync", "--repo", "lib", "--force", "--format", "json").stdout)
    assert summary["commit"] == head and summary["errors"] == 0
    assert "scanning the whole repository" in summary["message"]
    assert_exact(cwd, home, history, head, tmp_path)


def test_sync_all_and_stdin_read_the_fetched_head_not_a_work_tree(history, cwd, tmp_path):
    home = tmp_path / "home"
    run(cwd, home, "repo", "add", history.url, "--name", "lib")
    first = history.commits[-1]
    list(history.replay())
    listed = "kombu/clocks.py\nbrand_new.py\n"
    summary = json.loads(run(cwd, home, "sync", "--repo", "lib", "--stdin", "--format", "json", stdin=listed).stdout)
    assert {f["path"]: f["action"] for f in summary["files"]} == {"kombu/clocks.py": "UNCHANGED", "brand_new.py": "ADD"}
    assert summary["commit"] == history.commits[-1] != first
    both = run(cwd, home, "sync", "--repo", "lib", "--all", "--stdin", stdin=listed, check=False)
    assert both.returncode == 2 and "choose one change source, not --stdin and --all" in both.stderr, both.stderr
    full = json.loads(run(cwd, home, "sync", "--repo", "lib", "--all", "--format", "json").stdout)
    assert full["errors"] == 0 and full["commit"] == history.commits[-1]
    assert_exact(cwd, home, history, history.commits[-1], tmp_path)


def test_large_files_travel_through_the_local_object_store(tmp_path, cwd):
    history = make_history(tmp_path / "upstream", "lib", celery_files=5, kombu_files=5)
    (history.work / "medium.py").write_text("".join(f"MEDIUM_{i} = {i}  # {'x' * 60}\n" for i in range(1_800)))
    (history.work / "large.py").write_text("".join(f"LARGE_{i} = {i}  # {'y' * 60}\n" for i in range(24_000)))
    head = history.commit("a 150 KB and a 2 MB file")
    assert 140_000 < (history.work / "medium.py").stat().st_size < 160_000
    assert 1_900_000 < (history.work / "large.py").stat().st_size < 2_100_000
    home = tmp_path / "home"
    env = {"CODEINDEX_MAX_FILE_SIZE": str(4 * 1024 * 1024), "CODEINDEX_BATCH_BYTES": str(4 * 1024 * 1024)}
    run(cwd, home, "repo", "add", history.url, "--name", "lib", env=env)
    stored = sorted(p.name for p in (home / "objects" / "projects" / "lib").glob("*.py"))
    assert len(stored) == 2  # the two files above the inline limit (100 KB), by their SHA-256
    assert_exact(cwd, home, history, head, tmp_path, env)


def test_bad_sources_are_refused_with_one_line_and_nothing_kept(history, cwd, tmp_path):
    home = tmp_path / "home"
    secret = f"tok-{uuid.uuid4().hex}"
    cases = [
        ([f"https://user:{secret}@example.com/pallets/flask.git"], "holds credentials"),
        ([history.url, "--branch", "no-such-branch"], "branch 'no-such-branch' does not exist"),
        (["git@github.com:pallets/flask.git"], "neither a git URL nor a directory"),
        (["ftp://example.com/x.git"], "unsupported repository URL"),
        ([(tmp_path / "nowhere.git").as_uri()], "repository not found"),
    ]
    for args, message in cases:
        proc = run(cwd, home, "repo", "add", *args, "--name", "bad", check=False)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert secret not in proc.stdout + proc.stderr


class _RefusingGitServer(http.server.BaseHTTPRequestHandler):
    """Answers every request 401, remembering the Authorization headers it was sent."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("given", ["file", "environment"])
def test_a_token_is_sent_to_git_and_never_printed_logged_or_stored(history, cwd, tmp_path, given):
    home = tmp_path / "home"
    token = f"ghp_{uuid.uuid4().hex}"
    token_file = tmp_path / "secrets" / "git-token"
    token_file.parent.mkdir()
    token_file.write_text(token + "\n")
    env = {"CODEINDEX_GIT_TOKEN_FILE": str(token_file)} if given == "file" else {"CODEINDEX_GIT_TOKEN": token}
    env["CODEINDEX_DEBUG"] = "1"  # tracebacks and INFO logs too
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingGitServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/org/private.git"
        refused = run(cwd, home, "repo", "add", url, "--name", "private", "--branch", "main", env=env,
                      check=False)
    finally:
        server.shutdown()
    assert refused.returncode == 2 and "access to" in refused.stderr and "was refused" in refused.stderr
    header = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
    assert header in _RefusingGitServer.seen  # git did get the token, through its environment
    added = run(cwd, home, "repo", "add", history.url, "--name", "lib", env=env)
    list(history.replay())
    synced = run(cwd, home, "sync", "--repo", "lib", "--verbose", "--format", "json", env=env)
    listed = run(cwd, home, "repo", "list", "--json", env=env)
    printed = "".join(p.stdout + p.stderr for p in (refused, added, synced, listed))
    secrets = [token, base64.b64encode(f"x-access-token:{token}".encode()).decode()]
    for secret in secrets:
        assert secret not in printed
        for path in home.rglob("*"):  # the state, the store, the clone's config, the logs: everything written
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
