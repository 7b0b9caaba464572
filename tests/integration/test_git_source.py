"""The owner's clone and the tree of one commit (indexing.git_source) against real git: bare
repositories of real kombu sources, with commits that add, modify, rename and delete files,
symlinks in the tree, out of it and in a loop, a binary and an oversized file, served as
``file://`` URLs; unreachable and hanging servers on loopback ports; credentials kept out of
every argv, message and repr."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import celery
import kombu
import psutil
import pytest

from indexing import git_source
from indexing.changes import Change, ChangeKind, parse_nul
from indexing.errors import FileIssue, RepositoryError, StoreError
from indexing.git_source import EntryKind, GitCredentials, GitMirror, GitTree, redact, repo_dir_name
from indexing.paths import is_linked
from indexing.scanner import FileFilter, decode, read_file, walk
from tests.conftest import copy_tree, git

#: The size limit of the reads: ``data/big.txt`` is above it.
MAX = 64 * 1024
TOKEN = "ghs_T0ken-for+tests/only=="


@dataclass
class Upstream:
    work: Path  # the work tree the commits are made in
    bare: Path  # what the mirrors clone
    commits: list[str]

    @property
    def url(self) -> str:
        return self.bare.as_uri()


def commit_and_push(up: Upstream, message: str) -> str:
    git(up.work, "add", "-A", "--", ".", ":(exclude)vendor")  # the submodule has no work tree
    git(up.work, "commit", "-q", "-m", message)
    git(up.work, "push", "-q", "-f", str(up.bare), "main")
    sha = git(up.work, "rev-parse", "HEAD").strip()
    up.commits.append(sha)
    return sha


def build_upstream(base: Path) -> Upstream:
    """Two commits of real code: the first with every kind of path, the second adding,
    modifying, renaming and deleting files and changing links."""
    up = Upstream(base / "work", base / "upstream.git", [])
    up.work.mkdir(parents=True)
    git(up.work, "init", "-q", "-b", "main")
    git(base, "init", "-q", "--bare", "-b", "main", str(up.bare))
    w = up.work
    copy_tree(Path(kombu.__file__).parent, w / "kombu", 40)
    (w / ".gitignore").write_text("*.log\nbuild/\n")
    (w / "kombu" / ".gitignore").write_text("!keep.log\n")
    (w / "data").mkdir()
    (w / "data" / "blob.bin").write_bytes(bytes(range(256)) * 8)
    (w / "data" / "big.txt").write_text("x = 1\n" * (MAX // 6 + 100))
    (w / "docs").mkdir()
    (w / "docs" / "données é.py").write_text("name = 'é'\n")
    (w / "docs" / "tab\tname.py").write_text("tab = True\n")
    links = w / "links"
    links.mkdir()
    for name, target in [("in_tree.py", "../kombu/clocks.py"), ("pkg", "../kombu/asynchronous"),
                         ("chain.py", "in_tree.py"), ("loop_a", "loop_b"), ("loop_b", "loop_a"),
                         ("dangling.py", "nowhere.py"), ("deep_escape", "pkg/../../.."),
                         ("to_dir_file.py", "pkg/timer.py")]:
        os.symlink(target, links / name)
    os.symlink("../../etc/passwd", w / "evil")
    os.symlink("/etc/passwd", w / "abs_evil")
    # A submodule: a gitlink entry (mode 160000) naming a commit of another repository.
    git(w, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},vendor/sub")
    commit_and_push(up, "real sources and a submodule")

    for rel in ("kombu/abstract.py", "kombu/common.py", "kombu/asynchronous/timer.py"):
        with open(w / rel, "a") as fh:
            fh.write("\n# changed by the second commit\n")
    copy_tree(Path(kombu.__file__).parent / "utils", w / "kombu" / "utils", 2)
    git(w, "mv", "kombu/compat.py", "kombu/compat_moved.py")
    (w / "kombu" / "log.py").unlink()
    (w / "kombu" / "pidbox.py").unlink()
    (links / "in_tree.py").unlink()
    os.symlink("../kombu/entity.py", links / "in_tree.py")
    commit_and_push(up, "add, modify, rename, delete")
    return up


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Upstream:
    return build_upstream(tmp_path_factory.mktemp("upstream"))


@pytest.fixture(scope="module")
def mirror(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> GitMirror:
    m = GitMirror(tmp_path_factory.mktemp("data") / f"{repo_dir_name('kombu')}.git", upstream.url, branch="main")
    m.fetch()
    return m


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """Every (argv, env) git_source starts a process with, by wrapping its one call site."""
    calls: list[tuple[list[str], dict[str, str]]] = []
    real = git_source._popen

    def recording(argv: list[str], **kwargs):
        calls.append((list(argv), dict(kwargs.get("env") or {})))
        return real(argv, **kwargs)

    monkeypatch.setattr(git_source, "_popen", recording)
    return calls


def checkout(repo: Path, commit: str, dest: Path) -> Path:
    """The files of ``commit`` as a checkout has them: ``git archive`` unpacked by tar."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit], check=True,
                             capture_output=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    return dest


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Listener:
    """A loopback HTTP server that records each request's header block and answers with
    ``reply`` (None: never answers, a hanging server)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply, self.requests, self._held = reply, [], []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data and (chunk := conn.recv(4096)):
                    data += chunk
            except OSError:
                pass
            self.requests.append(data.decode("latin-1"))
            if self.reply is None:
                self._held.append(conn)
                continue
            conn.sendall(self.reply)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self.sock.close()


# --- the clone -------------------------------------------------------------------------------

def test_clone_then_fetch_then_head(upstream: Upstream, tmp_path: Path) -> None:
    m = GitMirror(tmp_path / "data" / "repo.git", upstream.url, branch="main")
    assert m.head() is None and not m.commit_exists(upstream.commits[0])
    started = time.perf_counter()
    assert m.ensure() is True
    print(f"\nclone of a {len(upstream.commits)}-commit repository of real code: {time.perf_counter() - started:.3f} s")
    assert m.head() == upstream.commits[-1]
    assert m.ensure() is False
    started = time.perf_counter()
    assert m.fetch() == upstream.commits[-1]
    print(f"fetch with nothing new: {time.perf_counter() - started:.3f} s")
    assert m.commit_exists(upstream.commits[0]) and m.commit_exists(upstream.commits[0][:10])
    assert not m.commit_exists("0" * 40) and not m.commit_exists("--all") and not m.commit_exists("HEAD")
    refs = git(m.path, "for-each-ref", "--format=%(refname)").split()
    assert refs == ["refs/heads/main"]  # one branch, no tags, no other refs
    assert git(m.path, "config", "--bool", "core.bare").strip() == "true"
    assert not list(m.path.parent.glob(".*partial*"))


def test_fetch_after_new_commits_returns_the_new_head_even_after_a_force_push(
        upstream: Upstream, tmp_path: Path) -> None:
    up = Upstream(tmp_path / "work", tmp_path / "upstream.git", list(upstream.commits))
    shutil.copytree(upstream.work, up.work, symlinks=True)
    shutil.copytree(upstream.bare, up.bare, symlinks=True)
    m = GitMirror(tmp_path / "data" / "repo.git", up.url, branch="main")
    assert m.fetch() == up.commits[-1]  # cloned by the first fetch
    (up.work / "kombu" / "new_module.py").write_text("NEW = 1\n")
    new = commit_and_push(up, "a third commit")
    assert m.fetch() == new
    with GitTree(m.path, "refs/heads/main") as tree:
        assert tree.commit == new and tree.read("kombu/new_module.py", MAX) == b"NEW = 1\n"
    git(up.work, "reset", "-q", "--hard", up.commits[-3])  # rewrite history: drop two commits
    (up.work / "rewritten.py").write_text("R = 1\n")
    rewritten = commit_and_push(up, "rewritten history")
    assert m.fetch() == rewritten
    assert m.commit_exists(new)  # still in the clone until gc: the planner's commit_exists decides


def test_tree_agrees_with_a_checkout_for_every_file(upstream: Upstream, mirror: GitMirror, tmp_path: Path) -> None:
    for number, commit in enumerate(upstream.commits):
        root = checkout(mirror.path, commit, tmp_path / f"checkout{number}")
        with GitTree(mirror.path, commit) as tree:
            files = list(tree.files())
            assert files == sorted(files)
            scanned = set(walk(root, FileFilter(root, use_gitignore=False)))
            # A link out of the tree is listed (git cannot know what it leads to); a scan of a
            # checkout passes over one that happens to reach a directory there.
            assert scanned <= set(files)
            for rel in set(files) - scanned:
                with pytest.raises(FileIssue, match="^symlink pointing outside the repository"):
                    tree.read(rel, MAX)
            for rel in files:
                assert tree.exists(rel), rel
                try:
                    expected = read_file(root, rel, MAX)
                except FileIssue as issue:
                    with pytest.raises(FileIssue) as raised:
                        tree.read(rel, MAX)
                    mine = raised.value
                    assert mine.status == issue.status, rel
                    if mine.reason.startswith("symlink pointing outside"):
                        # On disk a target outside that does not exist reads as missing first.
                        assert issue.reason.startswith(("symlink pointing outside", "file not found")), rel
                    else:
                        assert mine.reason == issue.reason, rel
                    continue
                assert tree.read(rel, MAX) == expected, rel
                assert tree.size(rel) == len(expected), rel
                assert tree.is_linked(rel) == is_linked(root, rel), rel  # what an indexed file records


def test_symlinks_are_followed_inside_the_tree_and_refused_outside(upstream: Upstream, mirror: GitMirror) -> None:
    with GitTree(mirror.path, upstream.commits[0]) as tree:
        kinds = {e.path: (e.kind, e.mode) for e in tree.entries()}
        assert kinds["links/pkg"] == (EntryKind.SYMLINK, "120000")
        assert kinds["vendor/sub"] == (EntryKind.SUBMODULE, "160000")
        assert kinds["kombu/clocks.py"] == (EntryKind.FILE, "100644")
        clocks = (Path(kombu.__file__).parent / "clocks.py").read_bytes()
        assert tree.read("links/in_tree.py", MAX) == clocks  # relative to the link's directory
        assert tree.read("links/chain.py", MAX) == clocks  # a chain of two links
        timer = (Path(kombu.__file__).parent / "asynchronous" / "timer.py").read_bytes()
        assert tree.read("links/pkg/timer.py", MAX) == timer  # through a link to a directory
        assert tree.read("links/to_dir_file.py", MAX) == tree.read("kombu/asynchronous/timer.py", MAX)
        assert tree.size("links/in_tree.py") == len(clocks)
        assert tree.is_linked("links/pkg/timer.py") and tree.is_linked("links/in_tree.py")
        assert not tree.is_linked("kombu/clocks.py")
        files = set(tree.files())
        assert "links/pkg" not in files and "vendor/sub" not in files  # a link to a directory, a submodule
        assert {"evil", "abs_evil", "links/loop_a", "links/dangling.py", "links/in_tree.py"} <= files
        for rel in ("evil", "abs_evil", "links/deep_escape"):
            with pytest.raises(FileIssue, match=r"^symlink pointing outside the repository \(") as raised:
                tree.read(rel, MAX)
            assert raised.value.status == "error" and not raised.value.transient
        with pytest.raises(FileIssue, match=r"^unreadable: Too many levels of symbolic links$"):
            tree.read("links/loop_a", MAX)
        expected = {"links/dangling.py": "file not found", "no/such.py": "file not found",
                    "kombu/clocks.py/x": "file not found", "kombu": "not a regular file",
                    "links/pkg": "not a regular file", "vendor/sub": "not a regular file",
                    "../outside.py": "outside the repository root"}
        for rel, reason in expected.items():
            with pytest.raises(FileIssue) as raised:
                tree.read(rel, MAX)
            assert raised.value.reason == reason, rel
        with pytest.raises(FileIssue) as raised:
            tree.read("data/big.txt", MAX)
        assert raised.value.status == "skipped" and raised.value.reason.startswith("oversized: ")
        binary = tree.read("data/blob.bin", MAX)
        assert binary == bytes(range(256)) * 8
        with pytest.raises(FileIssue, match="binary file"):
            decode(binary)
        assert tree.read("docs/données é.py", MAX) == "name = 'é'\n".encode()
        assert tree.read("docs/tab\tname.py", MAX) == b"tab = True\n"
        assert tree.exists("links/dangling.py") and tree.exists("kombu") and tree.exists("vendor/sub")
        assert tree.exists("links/pkg/timer.py") and not tree.exists("no/such.py")


def test_the_reader_is_one_process_restarted_when_it_dies(upstream: Upstream, mirror: GitMirror) -> None:
    def cat_files() -> list[psutil.Process]:
        return [p for p in psutil.Process().children(recursive=True) if "cat-file" in " ".join(p.cmdline())]

    with GitTree(mirror.path, upstream.commits[-1]) as tree:
        for rel in list(tree.files())[:20]:
            try:
                tree.read(rel, MAX)
            except FileIssue:
                pass
        (proc,) = cat_files()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        clocks = (Path(kombu.__file__).parent / "clocks.py").read_bytes()
        assert tree.read("kombu/clocks.py", MAX) == clocks
        assert len(cat_files()) == 1
    assert cat_files() == []
    with GitTree(mirror.path, upstream.commits[-1], timeout_s=0.5) as tree:  # a hung process is replaced
        tree.read("kombu/clocks.py", MAX)
        (proc,) = cat_files()
        os.kill(proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        assert tree.read("kombu/clocks.py", MAX) == clocks
        assert 0.5 <= time.monotonic() - started < 3 and not proc.is_running()
    assert cat_files() == []


def test_read_latency_from_a_warm_reader(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    names = copy_tree(Path(kombu.__file__).parent, work / "kombu", 100)
    names += copy_tree(Path(celery.__file__).parent, work / "celery", 120)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "two hundred files")
    m = GitMirror(tmp_path / "repo.git", work.as_uri(), branch="main")
    started = time.perf_counter()
    m.ensure()
    clone_s = time.perf_counter() - started
    with GitTree(m.path, m.head()) as tree:
        files = list(tree.files())
        tree.read(files[0], 1 << 20)  # starts the process
        started = time.perf_counter()
        contents = {rel: tree.read(rel, 1 << 20) for rel in files}
        elapsed = time.perf_counter() - started
    assert len(files) >= 200
    assert all(contents[rel] == (work / rel).read_bytes() for rel in files)
    total = sum(map(len, contents.values()))
    print(f"\nclone of {len(files)} files: {clone_s:.3f} s; read {len(files)} files ({total / 1e6:.2f} MB) from a "
          f"warm git cat-file in {elapsed * 1000:.1f} ms: {elapsed / len(files) * 1000:.3f} ms per file")


def test_changes_since_matches_git_diff(upstream: Upstream, mirror: GitMirror) -> None:
    first, second = upstream.commits
    with GitTree(mirror.path, second) as tree:
        changes = tree.changes_since(first)
        diff = git(mirror.path, "diff", "--name-status", "-z", "-M", first, second)
        assert changes == list(parse_nul(diff))
        assert Change("kombu/compat.py", ChangeKind.DELETED) in changes
        assert Change("kombu/compat_moved.py", ChangeKind.ADDED) in changes
        assert Change("kombu/log.py", ChangeKind.DELETED) in changes
        assert Change("kombu/abstract.py", ChangeKind.MODIFIED) in changes
        assert Change("links/in_tree.py", ChangeKind.MODIFIED) in changes
        assert tree.changes_since(second) == []
        for unknown in ("0" * 40, "no-such-branch", "--output=/tmp/x"):
            with pytest.raises(RepositoryError, match="not"):
                tree.changes_since(unknown)
    with pytest.raises(RepositoryError):
        GitTree(mirror.path, "0" * 40)


def test_gitignore_rules_come_from_the_commit(upstream: Upstream, mirror: GitMirror) -> None:
    with GitTree(mirror.path, upstream.commits[0]) as tree:
        assert tree.gitignore_rules("") == ["*.log", "build/"]
        assert tree.gitignore_rules("kombu") == ["!keep.log"]
        assert tree.gitignore_rules("kombu/asynchronous") is None and tree.gitignore_rules("nowhere") is None


# --- failures --------------------------------------------------------------------------------

def test_a_missing_branch_is_a_repository_error(upstream: Upstream, mirror: GitMirror, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="branch 'nope' does not exist"):
        GitMirror(tmp_path / "a.git", upstream.url, branch="nope").ensure()
    assert not (tmp_path / "a.git").exists() and not list(tmp_path.glob(".*partial*"))
    clone = tmp_path / "b.git"
    shutil.copytree(mirror.path, clone, symlinks=True)
    with pytest.raises(RepositoryError, match="branch 'gone' does not exist"):
        GitMirror(clone, upstream.url, branch="gone").fetch()
    for bad in ("-x", "a..b", "a b", "x.lock", ""):
        with pytest.raises(RepositoryError, match="not a valid git branch name"):
            GitMirror(tmp_path / "c.git", upstream.url, branch=bad)


def test_unreachable_repositories_fail_within_the_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(RepositoryError, match="repository not found"):
        GitMirror(tmp_path / "a.git", "file:///nonexistent", branch="main", timeout_s=5).ensure()
    url = f"http://127.0.0.1:{closed_port()}/x.git"
    with pytest.raises(StoreError, match="after 3 attempts"):
        GitMirror(tmp_path / "b.git", url, branch="main", timeout_s=5, backoff_s=0.05).fetch()
    assert time.monotonic() - started < 10
    hanging = Listener(reply=None)
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"timed out after 1 s and was killed \(after 3 attempts\)"):
            GitMirror(tmp_path / "c.git", f"http://127.0.0.1:{hanging.port}/x.git", branch="main", timeout_s=1,
                      backoff_s=0.05).fetch()
        elapsed = time.monotonic() - started
    finally:
        hanging.close()
    assert 3 <= elapsed < 12 and len(hanging.requests) == 3
    assert not [p for p in psutil.Process().children(recursive=True) if p.name().startswith("git")]
    for url in ("ext::sh -c touch% /tmp/pwned", "git@github.com:org/repo.git", "ftp://host/x.git", "/srv/x.git"):
        with pytest.raises(RepositoryError, match="unsupported repository URL"):
            GitMirror(tmp_path / "d.git", url, branch="main")


def test_a_killed_clone_is_redone(upstream: Upstream, mirror: GitMirror, tmp_path: Path) -> None:
    data = tmp_path / "data"
    partial = data / ".repo.git.partial-0123456789ab"
    (partial / "objects" / "pack").mkdir(parents=True)
    (partial / "objects" / "pack" / "tmp_pack_x").write_bytes(b"half a pack")
    (partial / "HEAD").write_text("ref: refs/heads/main\n")
    m = GitMirror(data / "repo.git", upstream.url, branch="main")
    assert m.head() is None
    assert m.ensure() is True and m.head() == upstream.commits[-1]
    assert not partial.exists() and sorted(p.name for p in data.iterdir()) == ["repo.git"]
    empty = data / "empty.git"
    empty.mkdir()
    assert GitMirror(empty, upstream.url, branch="main").ensure() is True
    foreign = data / "foreign.git"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a clone")
    with pytest.raises(RepositoryError, match="is not a git clone"):
        GitMirror(foreign, upstream.url, branch="main").ensure()
    # A fetch killed with SIGKILL leaves its ref lock; an old one is cleared, the fetch works.
    lock = m.path / "refs" / "heads" / "main.lock"
    lock.write_text(upstream.commits[0] + "\n")
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    assert m.fetch() == upstream.commits[-1] and not lock.exists()


# --- credentials -----------------------------------------------------------------------------

def test_the_token_goes_to_git_through_the_environment_only(recorded: list, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")  # an operator's own pair is kept, ours comes after it
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.abbrev")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "12")
    creds = GitCredentials(token=TOKEN, ssh_key_path=None)
    header = "Authorization: Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    port = closed_port()
    m = GitMirror(tmp_path / "a.git", f"http://127.0.0.1:{port}/x.git", branch="main", credentials=creds,
                  backoff_s=0.05)
    with pytest.raises(StoreError) as raised:
        m.fetch()
    encoded = header.rpartition(" ")[2]
    shown = [str(raised.value), repr(raised.value), repr(m), repr(creds), str(creds), repr(m.credentials)]
    assert not any(TOKEN in text or encoded in text for text in shown)
    assert len(recorded) == 3
    for argv, env in recorded:
        assert not any(TOKEN in arg or encoded in arg for arg in argv)
        assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_ALLOW_PROTOCOL"] == "file:http:https:ssh"
        assert env["GIT_CONFIG_COUNT"] == "2" and env["GIT_CONFIG_KEY_0"] == "core.abbrev"
        assert env["GIT_CONFIG_KEY_1"] == f"http.http://127.0.0.1:{port}/.extraHeader"
        assert env["GIT_CONFIG_VALUE_1"] == header


def test_credentials_in_the_url_are_taken_out_of_it(recorded: list, tmp_path: Path) -> None:
    url = f"http://user:secret@127.0.0.1:{closed_port()}/x.git"
    m = GitMirror(tmp_path / "a.git", url, branch="main", backoff_s=0.05)
    assert "secret" not in m.url and "user" not in m.url and "secret" not in repr(m)
    with pytest.raises(StoreError) as raised:
        m.fetch()
    assert "secret" not in str(raised.value)
    assert all("secret" not in arg for argv, _ in recorded for arg in argv)
    assert all(env["GIT_CONFIG_VALUE_" + str(int(env["GIT_CONFIG_COUNT"]) - 1)]
               == "Authorization: Basic " + base64.b64encode(b"user:secret").decode() for _, env in recorded)
    message = f"fatal: unable to access '{url}': Failed to connect (git clone {url})"
    assert "secret" not in redact(message) and "127.0.0.1" in redact(message)
    with pytest.raises(RepositoryError, match="refusing to send a token over plain http"):
        GitMirror(tmp_path / "b.git", "http://user:secret@example.com/x.git", branch="main")
    with pytest.raises(RepositoryError, match="user name") as raised:
        GitMirror(tmp_path / "b.git", "https://ghp_abc123DEF@example.com/x.git", branch="main")
    assert "ghp_abc123DEF" not in str(raised.value)


def test_the_token_reaches_the_server_as_a_basic_header(tmp_path: Path) -> None:
    server = Listener(reply=b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    try:
        m = GitMirror(tmp_path / "a.git", f"http://127.0.0.1:{server.port}/x.git", branch="main",
                      credentials=GitCredentials(token=TOKEN, ssh_key_path=None), timeout_s=10)
        with pytest.raises(RepositoryError, match="repository not found") as raised:
            m.ensure()
    finally:
        server.close()
    expected = "Authorization: Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    assert server.requests and all(expected in request for request in server.requests)
    assert TOKEN not in str(raised.value)


def test_the_ssh_key_goes_through_git_ssh_command(recorded: list, tmp_path: Path) -> None:
    key = tmp_path / "keys dir" / "id_ed25519"
    key.parent.mkdir()
    key.write_text("not a real key\n")
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    creds = GitCredentials.from_files(token_file, key)
    assert creds.token == TOKEN and creds.ssh_key_path == key and TOKEN not in repr(creds)
    m = GitMirror(tmp_path / "a.git", f"ssh://git@127.0.0.1:{closed_port()}/x.git", branch="main",
                  credentials=creds, timeout_s=10, backoff_s=0.05)
    with pytest.raises(StoreError):
        m.fetch()
    env = recorded[0][1]
    assert env["GIT_SSH_COMMAND"] == (f"ssh -i '{key}' -o IdentitiesOnly=yes -o BatchMode=yes "
                                      "-o StrictHostKeyChecking=accept-new")
    assert "GIT_CONFIG_VALUE_0" not in env or TOKEN not in env["GIT_CONFIG_VALUE_0"]  # no header for ssh
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(RepositoryError, match="is empty"):
        GitCredentials.from_files(empty, None)
    with pytest.raises(RepositoryError, match="not a file"):
        GitCredentials.from_files(None, tmp_path / "missing_key")


def test_redact_removes_every_form_of_the_secret() -> None:
    creds = GitCredentials(token=TOKEN, ssh_key_path=None)
    encoded = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    text = (f"token {TOKEN}; header Authorization: Basic {encoded}; bare {encoded}; "
            "url https://x-access-token:abc123@github.com/o/r.git and https://tok456@github.com/o/r.git; "
            "authorization: bearer zzz999")
    clean = redact(text, creds)
    for secret in (TOKEN, encoded, "abc123", "tok456", "zzz999"):
        assert secret not in clean
    assert "github.com/o/r.git" in clean
    assert redact("ssh://git@host/r.git") == "ssh://git@host/r.git"


def test_repo_dir_name_is_safe_and_distinct() -> None:
    assert repo_dir_name("kombu") == "kombu"
    names = {repo_dir_name(i) for i in ("org/repo", "org_repo", "Org/Repo", "../etc", ".hidden", "a" * 200, "é")}
    assert len(names) == 7
    for name in names:
        assert name and len(name) <= 80 and not name.startswith((".", "-"))
        assert all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in name)
    assert len({n.lower() for n in names | {repo_dir_name("org/Repo")}}) == 8
