"""Repositories read from git objects instead of a work tree: the owner's bare clone of a
repository added by URL (cloned, fetched with a timeout and retries, credentials passed to git
through its environment only), and the tree of one commit, read through one long-running
``git cat-file --batch`` process, so that an index always corresponds to exactly one commit.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import logging
import os
import posixpath
import re
import select
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from indexing import metrics
from indexing.changes import GIT_TIMEOUT_SECONDS, Change, parse_nul
from indexing.errors import FileIssue, RepositoryError, StoreError
from indexing.scanner import GITIGNORE_MAX_BYTES

log = logging.getLogger("codeindex.git")

T = TypeVar("T")

#: How many times a clone or fetch is tried before its StoreError is raised.
FETCH_ATTEMPTS = 3
#: The most symlinks followed while resolving one path: Linux's MAXSYMLINKS (path_resolution(7)),
#: so a chain that reads from a checkout reads from git objects too, and a loop fails the same way.
MAX_SYMLINK_HOPS = 40
#: URL schemes a repository may be added with; also git's GIT_ALLOW_PROTOCOL, so that no other
#: transport (``ext::`` runs a command) is used, not even by a redirect or a submodule.
SCHEMES = ("file", "http", "https", "ssh")
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_HEX_SHA = re.compile(r"[0-9a-fA-F]{4,64}")
#: A ``user:password@`` in any URL, and any userinfo at all in an http(s) URL (a token alone is
#: accepted as the user name by GitHub and others).
_URL_PASSWORD = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@:]*:[^/\s@]*@")
_HTTP_USERINFO = re.compile(r"(?P<scheme>\bhttps?://)[^/\s@]+@", re.IGNORECASE)
_AUTH_HEADER = re.compile(r"(?P<name>authorization:\s*[A-Za-z]+\s+)\S+", re.IGNORECASE)


# --- credentials ---------------------------------------------------------------------------

@dataclass(frozen=True)
class GitCredentials:
    """How git authenticates to a remote: ``token`` for HTTPS (sent as HTTP Basic with
    ``username``, ``x-access-token`` being what GitHub expects for app and personal tokens),
    ``ssh_key_path`` for SSH. The token is left out of the repr; see :func:`redact`."""

    token: str | None = field(repr=False)
    ssh_key_path: Path | None
    username: str = "x-access-token"

    @classmethod
    def from_files(cls, token_file: Path | None, ssh_key_path: Path | None) -> GitCredentials:
        """Credentials from a file holding the token (surrounding whitespace stripped) and the
        path of an SSH private key. Raises :class:`RepositoryError` naming the file (never its
        content) when it cannot be read, is empty, or the key is not a file."""
        token = None
        if token_file is not None:
            try:
                token = Path(token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise RepositoryError(f"cannot read the git token file {token_file}: {exc.strerror}") from None
            except UnicodeDecodeError:  # its message would quote bytes of the token
                raise RepositoryError(f"the git token file {token_file} is not UTF-8 text") from None
            if not token:
                raise RepositoryError(f"the git token file {token_file} is empty")
        if ssh_key_path is not None and not Path(ssh_key_path).is_file():
            raise RepositoryError(f"the SSH key {ssh_key_path} is not a file")
        return cls(token=token, ssh_key_path=Path(ssh_key_path) if ssh_key_path else None)

    def _authorization(self) -> str:
        """The HTTP header line ``Authorization: Basic base64(username:token)`` (RFC 7617)."""
        pair = f"{self.username}:{self.token}".encode()
        return f"Authorization: Basic {base64.b64encode(pair).decode('ascii')}"

    def _secrets(self) -> list[str]:
        """Every form in which the token can show up in text: the header value first (it is
        longer), then the token itself and its URL-quoted form."""
        if not self.token:
            return []
        header = self._authorization().rpartition(" ")[2]
        return [header, self.token, re.sub(r"[^A-Za-z0-9._~-]", lambda m: f"%{ord(m[0]):02X}", self.token)]


def redact(text: str, credentials: GitCredentials | None = None) -> str:
    """``text`` with the token of ``credentials`` (and its base64 header form), any
    ``Authorization:`` header value, any ``user:password@`` of a URL and any userinfo of an
    http(s) URL replaced by ``***``. Every error message of this module goes through it."""
    for secret in credentials._secrets() if credentials else ():
        text = text.replace(secret, "***")
    text = _AUTH_HEADER.sub(r"\g<name>***", text)
    text = _URL_PASSWORD.sub(r"\g<scheme>***@", text)
    return _HTTP_USERINFO.sub(r"\g<scheme>***@", text)


def _git_env(credentials: GitCredentials | None, url: str | None) -> dict[str, str]:
    """The environment git runs with: never a prompt, only :data:`SCHEMES`, and the credentials.

    The token goes in as ``http.<scheme>://<host>/.extraHeader`` through ``GIT_CONFIG_COUNT`` /
    ``GIT_CONFIG_KEY_<n>`` / ``GIT_CONFIG_VALUE_<n>`` (git-config(1), "ENVIRONMENT", git >= 2.31),
    so it is in no argv, no URL and no config file; the ``http.<url>.*`` form (git-config(1))
    scopes it to the repository's host, so a redirect to another host does not receive it.
    Pairs the operator already set are kept: ours is appended after them. The SSH key goes in
    as ``GIT_SSH_COMMAND`` (git(1)), in batch mode so ssh never asks either.
    """
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"  # git(1): fail instead of waiting for a password
    env["GIT_ALLOW_PROTOCOL"] = ":".join(SCHEMES)
    if credentials is None or url is None:
        return env
    parts = urlsplit(url)
    if credentials.token and parts.scheme in ("http", "https"):
        count = env.get("GIT_CONFIG_COUNT", "")
        n = int(count) if count.isdigit() else 0
        env[f"GIT_CONFIG_KEY_{n}"] = f"http.{parts.scheme}://{parts.netloc}/.extraHeader"
        env[f"GIT_CONFIG_VALUE_{n}"] = credentials._authorization()
        env["GIT_CONFIG_COUNT"] = str(n + 1)
    if credentials.ssh_key_path is not None:
        env["GIT_SSH_COMMAND"] = (f"ssh -i {shlex.quote(str(credentials.ssh_key_path))} -o IdentitiesOnly=yes "
                                  "-o BatchMode=yes -o StrictHostKeyChecking=accept-new")
    return env


# --- running git ---------------------------------------------------------------------------

def _popen(argv: list[str], **kwargs) -> subprocess.Popen:
    """The one place this module starts a process (tests wrap it to see every argv and env).
    Raises :class:`StoreError` when git cannot be started."""
    try:
        return subprocess.Popen(argv, **kwargs)
    except OSError as exc:
        raise StoreError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def _run(argv: list[str], *, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion in its own process group, its output captured.

    Raises :class:`subprocess.TimeoutExpired` after ``timeout_s`` seconds, once the whole group
    (git and the helpers it started: ``git-remote-https``, ``ssh``, ``index-pack``) is stopped.
    """
    proc = _popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group first, because git removes its ``*.lock`` files on SIGTERM
    but cannot on SIGKILL; SIGKILL for what is left after a grace period."""
    for sig, grace_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.communicate(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _stderr_detail(stderr: bytes, credentials: GitCredentials | None) -> str:
    """git's own explanation: its ``fatal:``/``error:``/``remote:``/``ssh:`` lines, redacted."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    told = [line for line in lines if line.startswith(("fatal:", "error:", "remote:", "ssh:"))] or lines[-2:]
    return redact("; ".join(told), credentials)[:600] or "no message"


# Failures that retrying does not mend (a usage error: the registration must change), matched on
# git's stderr; anything else (a refused connection, DNS, a 5xx, an early EOF) is a StoreError.
_ACCESS = re.compile(r"Authentication failed|could not read (Username|Password)|terminal prompts disabled|"
                     r"Permission denied \(|returned error: 40[13]|Host key verification failed|"
                     r"HTTP Basic: Access denied", re.IGNORECASE)
_NO_BRANCH = re.compile(r"Remote branch .+ not found|couldn't find remote ref", re.IGNORECASE)
_NO_REPOSITORY = re.compile(r"does not appear to be a git repository|repository '.*' not found|"
                            r"Repository not found|returned error: 404", re.IGNORECASE)


# --- the owner's clone ---------------------------------------------------------------------

class GitMirror:
    """The bare clone, at ``path`` (``<data_dir>/<repo_dir_name(repo_id)>.git``), of one branch
    of the repository at ``url`` (``file://``, ``https://``, ``http://`` or ``ssh://``).

    ``git clone --bare --no-tags --single-branch`` rather than ``--mirror``: a mirror fetches
    every ref of the remote (on a forge, every pull request's ``refs/pull/*`` and every tag),
    where a sync needs one branch; the fetch names the branch with an explicit forced refspec,
    so a rewritten history is taken as it is (the old commit then fails ``commit_exists`` and
    the sync falls back to a full one).

    Credentials in ``url`` (``https://user:token@host/...``) are taken out of it and used as
    ``credentials`` when none are given; the URL that git sees, stores and prints never has them.
    A token is sent over ``https`` only (plain ``http`` to a loopback host, for tests).
    ``timeout_s``: the most one git process may run (seconds) before it is killed; a clone or a
    fetch is tried :data:`FETCH_ATTEMPTS` times, waiting ``backoff_s``, then twice that, between.
    Callers serialise the calls on one repository (the repository lock): an interrupted clone's
    leftovers and stale lock files are cleared on the assumption that no other git writes here.
    Raises :class:`RepositoryError` for an unsupported URL or an invalid branch name.
    """

    def __init__(self, path: Path, url: str, *, branch: str, credentials: GitCredentials | None = None,
                 timeout_s: float = 300.0, backoff_s: float = 1.0) -> None:
        self.path = Path(path)
        self.url, from_url = _clean_url(url)
        self.branch = _checked_branch(branch)
        self.credentials = credentials or from_url
        if self.credentials and self.credentials.token:
            parts = urlsplit(self.url)
            if parts.scheme == "http" and (parts.hostname or "") not in _LOOPBACK_HOSTS:
                raise RepositoryError(f"refusing to send a token over plain http to {self.url}; use https://")
        self.timeout_s = timeout_s
        self._backoff_s = backoff_s

    def __repr__(self) -> str:
        return f"GitMirror(path={str(self.path)!r}, url={self.url!r}, branch={self.branch!r})"

    def ensure(self) -> bool:
        """Clone the repository when there is no clone at ``path``; True when it cloned.

        The clone is made in a temporary sibling (``.<name>.partial-<random>``) and renamed into
        place (``os.replace``, atomic), so ``path`` exists only complete; the partial clone of a
        killed process is removed and the clone made again. An empty directory at ``path``
        counts as no clone. Raises :class:`RepositoryError` when ``path`` holds something else
        than a git repository, or for a missing branch, a missing repository, refused access;
        :class:`StoreError` for network failures and timeouts after the retries.
        """
        if self._present():
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f".{glob.escape(self.path.name)}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = self.path.parent / f".{self.path.name}.partial-{uuid.uuid4().hex[:12]}"
        started = time.monotonic()

        def clone() -> None:
            shutil.rmtree(partial, ignore_errors=True)  # what a killed attempt left
            self._git("clone", "--bare", "--no-tags", "--single-branch", "--branch", self.branch,
                      "--", self.url, str(partial), what="clone")

        try:
            self._retrying("clone", clone)
            try:
                os.replace(partial, self.path)
            except OSError:
                if self._present():  # another process cloned it meanwhile, against the locking rule
                    return False
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        seconds = time.monotonic() - started
        metrics.git_network("clone", seconds)
        log.info("git clone done url=%s branch=%s path=%s seconds=%.2f", self.url, self.branch, self.path, seconds)
        return True

    def fetch(self) -> str:
        """Bring the branch up to date (cloning first when needed) and return its head commit
        (40 hex digits). Errors as :meth:`ensure`; a branch deleted on the remote is a
        :class:`RepositoryError`."""
        if self.ensure():
            return self._head_or_fail()
        self._clear_stale_locks()
        started = time.monotonic()
        refspec = f"+refs/heads/{self.branch}:refs/heads/{self.branch}"
        # gc.autoDetach=false: the maintenance a fetch may start runs inside this process group
        # and its timeout, instead of as a detached gc that could hold locks after we return.
        self._retrying("fetch", lambda: self._git("-C", str(self.path), "-c", "gc.autoDetach=false", "fetch",
                                                  "--no-tags", "--no-write-fetch-head", "--", self.url, refspec,
                                                  what="fetch"))
        head = self._head_or_fail()
        seconds = time.monotonic() - started
        metrics.git_network("fetch", seconds)
        log.info("git fetch done url=%s branch=%s head=%s seconds=%.2f", self.url, self.branch, head, seconds)
        return head

    def head(self) -> str | None:
        """The commit the branch points to in the clone; None when there is no clone or branch."""
        if not self._present():
            return None
        done = self._local("rev-parse", "--verify", "--quiet", f"refs/heads/{self.branch}^{{commit}}")
        return done.stdout.decode("ascii").strip() if done.returncode == 0 else None

    def commit_exists(self, sha: str) -> bool:
        """True when ``sha`` (4 to 64 hex digits) names a commit of the clone."""
        if not _HEX_SHA.fullmatch(sha) or not self._present():
            return False
        return self._local("cat-file", "-e", f"{sha}^{{commit}}").returncode == 0

    def tree(self, commit: str) -> GitTree:
        """The tree of ``commit`` in this clone (see :class:`GitTree`)."""
        return GitTree(self.path, commit)

    def _present(self) -> bool:
        if not self.path.exists():
            return False
        if self.path.is_dir() and not any(self.path.iterdir()):
            return False  # os.replace may take an empty directory's place
        if (self.path / "HEAD").is_file() and (self.path / "objects").is_dir() and (self.path / "refs").is_dir():
            return True
        raise RepositoryError(f"{self.path} exists and is not a git clone; remove it, or give the repository "
                              "another data directory")

    def _head_or_fail(self) -> str:
        head = self.head()
        if head is None:
            raise StoreError(f"git fetched {self.url} but the clone at {self.path} has no branch {self.branch!r}")
        return head

    def _clear_stale_locks(self) -> None:
        """Remove the ``*.lock`` files a git killed by SIGKILL (a worker's hard time limit) left:
        every later fetch would fail on them. One older than ``timeout_s`` belongs to no live git
        of ours, and no other git writes this clone (see the class)."""
        cutoff = time.time() - self.timeout_s
        candidates = [self.path / name for name in ("packed-refs.lock", "HEAD.lock", "config.lock", "shallow.lock")]
        for lock in [*candidates, *(self.path / "refs").rglob("*.lock")]:
            try:
                if lock.stat().st_mtime < cutoff:
                    lock.unlink()
                    log.warning("removed a stale git lock file path=%s", lock)
            except FileNotFoundError:
                continue

    def _local(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        try:
            return _run(["git", "-C", str(self.path), *args], env=_git_env(None, None), timeout_s=GIT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise StoreError(f"git {args[0]} in {self.path} did not answer in {GIT_TIMEOUT_SECONDS} s") from None

    def default_branch(self) -> str:
        """The branch the remote's ``HEAD`` names (``git ls-remote --symref``): what a clone
        without ``--branch`` would check out. Errors as :meth:`ensure`; a remote without a
        ``HEAD`` (an empty repository) is a :class:`RepositoryError`."""
        out = self._retrying("ls-remote", lambda: self._git("ls-remote", "--symref", "--", self.url, "HEAD",
                                                            what="ls-remote"))
        for line in out.decode("utf-8", "replace").splitlines():
            ref, _, name = line.partition("\t")
            if name == "HEAD" and ref.startswith("ref: refs/heads/"):
                return _checked_branch(ref.removeprefix("ref: refs/heads/"))
        raise RepositoryError(f"{self.url} names no default branch (an empty repository?); pass --branch")

    def _git(self, *args: str, what: str) -> bytes:
        """Run a git command that talks to the remote; its output. Maps a failure to our errors."""
        try:
            done = _run(["git", *args], env=_git_env(self.credentials, self.url), timeout_s=self.timeout_s)
        except subprocess.TimeoutExpired:
            raise StoreError(f"git {what} of {self.url} timed out after {self.timeout_s:g} s and was killed") from None
        if done.returncode == 0:
            return done.stdout
        stderr = done.stderr.decode("utf-8", "replace")
        detail = _stderr_detail(done.stderr, self.credentials)
        if _ACCESS.search(stderr):
            raise RepositoryError(f"access to {self.url} was refused; check the repository's token or SSH key "
                                  f"(git {what}: {detail})")
        if _NO_BRANCH.search(stderr):
            raise RepositoryError(f"branch {self.branch!r} does not exist in {self.url} (git {what}: {detail})")
        if _NO_REPOSITORY.search(stderr):
            raise RepositoryError(f"repository not found at {self.url}; check its URL (git {what}: {detail})")
        raise StoreError(f"git {what} of {self.url} failed: {detail}")

    def _retrying(self, what: str, work: Callable[[], T]) -> T:
        """``work()``, tried :data:`FETCH_ATTEMPTS` times while it raises StoreError, with
        exponential backoff; the last StoreError says how many attempts were made."""
        retrying = Retrying(stop=stop_after_attempt(FETCH_ATTEMPTS), reraise=True,
                            wait=wait_exponential(multiplier=self._backoff_s, max=60 * self._backoff_s),
                            retry=retry_if_exception_type(StoreError), before_sleep=self._log_retry(what))
        try:
            return retrying(work)
        except StoreError as exc:
            raise StoreError(f"{exc} (after {FETCH_ATTEMPTS} attempts)") from None

    def _log_retry(self, what: str) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            log.warning("git %s failed, retrying url=%s attempt=%d error=%s", what, self.url, state.attempt_number,
                        redact(str(state.outcome.exception()), self.credentials))
        return before_sleep


def checked_source(url: str, branch: str | None) -> tuple[str, str | None]:
    """``url`` and ``branch`` as the state keeps a repository added by URL: the URL checked (a
    scheme of :data:`SCHEMES`) and without credentials, the branch (None: not chosen) a valid
    branch name.

    Raises :class:`RepositoryError` for a URL that holds credentials (they would be stored, and
    shown in task arguments: give a token as ``CODEINDEX_GIT_TOKEN_FILE`` or an SSH key as
    ``CODEINDEX_GIT_SSH_KEY`` instead), an unsupported URL, an invalid branch name. The
    message never holds the secret.
    """
    clean, credentials = _clean_url(url)
    if credentials is not None:
        raise RepositoryError(f"the URL {redact(url)!r} holds credentials; give the token in a file "
                              "(CODEINDEX_GIT_TOKEN_FILE) instead, so that it is never stored or shown")
    return clean, None if branch is None else _checked_branch(branch)


def repo_name_of(url: str) -> str:
    """The repository id a URL suggests: its last path segment without ``.git``
    (``https://github.com/pallets/flask.git`` -> ``flask``); ``repo`` when it has none."""
    tail = urlsplit(url).path.rstrip("/").rpartition("/")[2]
    return tail[:-4] if tail.endswith(".git") and len(tail) > 4 else (tail or "repo")


def _clean_url(url: str) -> tuple[str, GitCredentials | None]:
    """``url`` without its credentials, and the credentials it carried (http(s) only).

    Raises :class:`RepositoryError` for a scheme outside :data:`SCHEMES` (scp-like
    ``git@host:path`` included: write it ``ssh://git@host/path``), control characters, a
    password in an ``ssh``/``file`` URL, or an http(s) user name without a password (most
    likely a token: give it as a token file instead).
    """
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise RepositoryError("the repository URL holds control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    shown = redact(url)
    if scheme not in SCHEMES:
        raise RepositoryError(f"unsupported repository URL {shown!r}: use file://, https://, http:// or ssh://")
    if "@" not in parts.netloc:
        return urlunsplit(parts._replace(scheme=scheme)), None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if scheme in ("ssh", "file"):
        if colon:
            raise RepositoryError(f"the URL {shown!r} holds a password; give an SSH key instead")
        return urlunsplit(parts._replace(scheme=scheme)), None
    if not colon:
        raise RepositoryError(f"the URL {shown!r} holds a user name (a token?); give the token as a token file")
    credentials = GitCredentials(token=unquote(password), ssh_key_path=None, username=unquote(user) or "x-access-token")
    return urlunsplit(parts._replace(scheme=scheme, netloc=host)), credentials


def _checked_branch(branch: str) -> str:
    """``branch`` when it is a valid branch name by git-check-ref-format(1)'s rules (and does not
    start with ``-``, so it cannot be read as an option); else :class:`RepositoryError`."""
    bad = (not branch or branch.startswith(("-", "/")) or branch.endswith(("/", ".", ".lock")) or ".." in branch
           or "@{" in branch or "//" in branch or branch == "@" or "/." in branch or branch.startswith(".")
           or any(ord(ch) < 33 or ord(ch) == 127 or ch in "~^:?*[\\" for ch in branch))
    if bad:
        raise RepositoryError(f"{branch!r} is not a valid git branch name (git-check-ref-format(1))")
    return branch


def repo_dir_name(repo_id: str) -> str:
    """A directory name for ``repo_id``: the id itself when it is lowercase letters, digits and
    ``._-`` (at most 64, not starting with a dot or dash); otherwise its safe characters and
    ``-<16 hex digits of its SHA-256>``, so distinct ids never share a directory, not even on a
    file system that ignores case, and none is hidden or a partial clone's name."""
    if re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", repo_id):
        return repo_id
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", repo_id).strip("._-")[:48] or "repo"
    return f"{readable}-{hashlib.sha256(repo_id.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"


# --- a tree at one commit ------------------------------------------------------------------

class EntryKind(StrEnum):
    """What a path of a tree is, by its git mode."""

    FILE = "file"  # 100644, 100755
    SYMLINK = "symlink"  # 120000: the blob is the link's target
    SUBMODULE = "submodule"  # 160000: a commit of another repository, no content here


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One path of a tree: ``mode`` as git writes it (``100644``), ``oid`` the blob's (or for a
    submodule the commit's) id, ``size`` in bytes (a symlink's: its target's length; 0 for a
    submodule)."""

    path: str
    mode: str
    kind: EntryKind
    oid: str
    size: int


class GitTree:
    """The files of ``commit`` in the repository at ``repo_dir`` (bare or not), read from git
    objects only, never from a work tree: what the planner and the batch reader need of a tree.

    ``commit`` may be any name of a commit; it is resolved once, so every read is of the same
    commit even when a branch moves meanwhile. Blobs are read through one ``git cat-file --batch``
    process, started on the first read, started again if it dies, stopped by :meth:`close` (or
    leaving a ``with`` block). Paths are POSIX and relative to the tree's root, as git writes
    them. Symlinks are followed inside the tree as the kernel would on a checkout: relative to the
    link's directory, at most :data:`MAX_SYMLINK_HOPS` hops, never out of the tree. Not
    thread-safe: one tree per thread. Raises :class:`RepositoryError` when the commit is unknown.
    """

    def __init__(self, repo_dir: Path, commit: str, *, timeout_s: float = GIT_TIMEOUT_SECONDS) -> None:
        self.repo_dir = Path(repo_dir)
        self._timeout_s = timeout_s
        if not self.repo_dir.is_dir():
            raise RepositoryError(f"{self.repo_dir} is not a directory; clone the repository first")
        self.commit = self._resolve_commit(commit)
        self._entries: dict[str, TreeEntry] | None = None
        self._dirs: set[str] = {""}
        self._targets: dict[str, str] = {}
        self._reader = _BlobReader(self.repo_dir, timeout_s)

    def __enter__(self) -> GitTree:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GitTree(repo_dir={str(self.repo_dir)!r}, commit={self.commit!r})"

    def close(self) -> None:
        """Stop the ``git cat-file`` process; a later read starts a new one."""
        self._reader.close()

    def entries(self) -> Iterator[TreeEntry]:
        """Every path of the tree (``git ls-tree -r``): files, symlinks and submodules, sorted."""
        listing = self._listing()
        return (listing[path] for path in sorted(listing))

    def files(self) -> Iterator[str]:
        """The paths a full scan considers, sorted: every file and symlink, except symlinks that
        lead to a directory of the tree (a scan of a checkout does not follow those either,
        ``indexing.scanner.walk``); symlinks that lead outside, nowhere or round in a loop are
        included, and reading them says why. Submodules have no content here: see :meth:`entries`.
        No filter is applied."""
        for entry in self.entries():
            if entry.kind is EntryKind.SUBMODULE:
                continue
            if entry.kind is EntryKind.SYMLINK:
                try:
                    if self._resolve(entry.path) in self._dirs:
                        continue
                except FileIssue:
                    pass
            yield entry.path

    def read(self, rel: str, max_size: int) -> bytes:
        """The content of the blob at ``rel`` (a symlink followed), refusing one above
        ``max_size`` bytes before reading it.

        Raises :class:`FileIssue` as ``indexing.scanner.read_file`` does: ``skipped`` for an
        oversized blob; ``error`` for ``file not found`` (also a dangling symlink), ``not a
        regular file`` (a directory, a submodule), ``symlink pointing outside the repository
        (...)``, ``unreadable: Too many levels of symbolic links``. :class:`StoreError` when
        ``git cat-file`` fails twice in a row.
        """
        entry = self._regular(rel)
        if entry.size > max_size:
            raise FileIssue(f"oversized: {entry.size} bytes > limit {max_size}", status="skipped")
        return self._reader.blob(entry.oid)

    def size(self, rel: str) -> int:
        """The size in bytes of the blob at ``rel``, a symlink followed; :class:`FileIssue` as :meth:`read`."""
        return self._regular(rel).size

    def exists(self, rel: str) -> bool:
        """True when ``rel`` names something of the tree, as ``os.path.lexists`` on a checkout
        would: a directory, a file, a submodule, a symlink (dangling too); symlinks above it followed."""
        try:
            parent, _, name = self.lexical(rel).rpartition("/")
            where = self._resolve(parent) if parent else ""
        except FileIssue:
            return False
        here = f"{where}/{name}" if where else name
        return here in self._listing() or here in self._dirs

    def is_linked(self, rel: str) -> bool:
        """True when ``rel`` leads through a symlink (itself or a directory above it), as
        ``indexing.paths.is_linked`` says of a checkout: its content changes with the link's
        target, without the path being named in a diff."""
        try:
            parts = self.lexical(rel).split("/")
        except FileIssue:
            return False
        listing = self._listing()
        for depth in range(1, len(parts) + 1):
            entry = listing.get("/".join(parts[:depth]))
            if entry is not None and entry.kind is EntryKind.SYMLINK:
                return True
        return False

    def has_commit(self, sha: str) -> bool:
        """True when ``sha`` (any name of a commit) is a commit of the repository."""
        try:
            self._resolve_commit(sha)
        except (RepositoryError, StoreError):
            return False
        return True

    def changes_since(self, old_commit: str) -> list[Change]:
        """The changes from ``old_commit`` to this tree's commit: ``git diff-tree -r -z -M
        --name-status`` (the plumbing form of ``git diff --name-status -z -M``, which reads no
        user diff settings), parsed by :func:`indexing.changes.parse_nul` (renames as delete +
        add). Raises :class:`RepositoryError` when ``old_commit`` is not in the repository
        (history rewritten since: sync everything instead)."""
        old = self._resolve_commit(old_commit)
        out = self._git("diff-tree", "-r", "-z", "-M", "--name-status", "--no-commit-id", old, self.commit)
        return list(parse_nul(out.decode("utf-8", "surrogateescape"))) if out else []

    def gitignore_rules(self, rel_dir: str) -> list[str] | None:
        """The lines of ``<rel_dir>/.gitignore`` at this commit (``rel_dir`` ``""`` for the root),
        read as ``indexing.scanner.FileFilter`` reads them from a disk (a symlink followed inside
        the tree, at most ``GITIGNORE_MAX_BYTES``, UTF-8 with replacement); None when it has none
        or it cannot be read."""
        rel_dir = rel_dir.strip("/")
        try:
            data = self.read(f"{rel_dir}/.gitignore" if rel_dir else ".gitignore", GITIGNORE_MAX_BYTES)
        except FileIssue:
            return None
        return data.decode("utf-8", errors="replace").splitlines()

    # The listing and the path resolution -------------------------------------------------

    def _listing(self) -> dict[str, TreeEntry]:
        if self._entries is None:
            entries: dict[str, TreeEntry] = {}
            for record in self._git("ls-tree", "-r", "-z", "-l", self.commit).split(b"\0"):
                if not record:
                    continue
                meta, _, raw_path = record.partition(b"\t")
                mode, _, oid, size = meta.decode("ascii").split()
                kind = {"120000": EntryKind.SYMLINK, "160000": EntryKind.SUBMODULE}.get(mode, EntryKind.FILE)
                path = raw_path.decode("utf-8", "surrogateescape")
                entries[path] = TreeEntry(path, mode, kind, oid, 0 if size == "-" else int(size))
                parent = path.rpartition("/")[0]
                while parent not in self._dirs:
                    self._dirs.add(parent)
                    parent = parent.rpartition("/")[0]
            self._entries = entries
        return self._entries

    def _regular(self, rel: str) -> TreeEntry:
        """The file entry ``rel`` leads to, symlinks followed; FileIssue when there is none."""
        resolved = self._resolve(rel)
        entry = self._listing().get(resolved)
        if entry is None:
            raise FileIssue("not a regular file" if resolved in self._dirs else "file not found")
        if entry.kind is not EntryKind.FILE:
            raise FileIssue("not a regular file")
        return entry

    @staticmethod
    def lexical(rel: str) -> str:
        """``rel`` normalised lexically, as :func:`indexing.paths.relative_path` does; FileIssue
        for an empty path, a NUL, a path that climbs out of the tree or names its root."""
        if not rel or "\0" in rel:
            raise FileIssue("empty or invalid path")
        norm = posixpath.normpath(rel)
        if norm.startswith("/") or norm == ".." or norm.startswith("../"):
            raise FileIssue("outside the repository root")
        if norm == ".":
            raise FileIssue("names the repository root, not a file")
        return norm

    def _resolve(self, rel: str) -> str:
        """Where ``rel`` leads in the tree, every symlink on the way replaced by its target
        (relative to the link's directory), as the kernel resolves a path of a checkout.

        Raises :class:`FileIssue`: ``symlink pointing outside the repository (link -> target)``
        for a target that is absolute or climbs above the root; ``unreadable: Too many levels of
        symbolic links`` after :data:`MAX_SYMLINK_HOPS` links (a loop); ``file not found`` when a
        file is used as a directory.
        """
        listing = self._listing()
        pending = list(reversed(self.lexical(rel).split("/")))
        resolved: list[str] = []
        hops, link = 0, ""
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not resolved:
                    raise FileIssue(f"symlink pointing outside the repository ({link})")
                resolved.pop()
                continue
            here = "/".join([*resolved, part])
            entry = listing.get(here)
            if entry is not None and entry.kind is EntryKind.SYMLINK:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise FileIssue("unreadable: Too many levels of symbolic links")
                target = self._target(entry)
                link = f"{here} -> {target}"
                if target.startswith("/"):
                    raise FileIssue(f"symlink pointing outside the repository ({link})")
                pending.extend(reversed(target.split("/")))
                continue
            if entry is not None and pending:  # a file or submodule used as a directory
                raise FileIssue("file not found")
            resolved.append(part)
        return "/".join(resolved)

    def _target(self, entry: TreeEntry) -> str:
        if entry.oid not in self._targets:
            self._targets[entry.oid] = self._reader.blob(entry.oid).decode("utf-8", "surrogateescape")
        return self._targets[entry.oid]

    def _resolve_commit(self, commit: str) -> str:
        if not commit or commit.startswith("-"):
            raise RepositoryError(f"{commit!r} is not a commit name")
        done = self._run_local("rev-parse", "--verify", "--quiet", "--end-of-options", f"{commit}^{{commit}}")
        if done.returncode != 0:
            raise RepositoryError(f"commit {commit!r} is not in the repository at {self.repo_dir} (history "
                                  "rewritten, or not fetched yet); sync the whole repository instead")
        return done.stdout.decode("ascii").strip()

    def _git(self, *args: str) -> bytes:
        done = self._run_local(*args)
        if done.returncode != 0:
            raise StoreError(f"git {args[0]} failed in {self.repo_dir}: {_stderr_detail(done.stderr, None)}")
        return done.stdout

    def _run_local(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        try:
            return _run(["git", "-C", str(self.repo_dir), *args], env=_git_env(None, None), timeout_s=self._timeout_s)
        except subprocess.TimeoutExpired:
            raise StoreError(f"git {args[0]} in {self.repo_dir} did not answer in {self._timeout_s:g} s") from None


class _ReaderGone(Exception):
    """The ``cat-file`` process died, hung or answered nonsense; the request may be tried again."""


class _BlobReader:
    """One ``git cat-file --batch`` process (git-cat-file(1), "BATCH OUTPUT"): a blob id per
    input line; per answer ``<oid> <type> <size>LF<content>LF``, or ``<oid> missing LF``.

    Its output is read from the pipe's descriptor with a deadline of ``timeout_s`` per answer
    (``poll``, which unlike ``select`` takes descriptors above 1023), so a hung git cannot
    block a worker; a process that died or hung is replaced once per request.
    """

    def __init__(self, repo_dir: Path, timeout_s: float) -> None:
        self._repo_dir, self._timeout_s = repo_dir, timeout_s
        self._proc: subprocess.Popen | None = None
        self._poll: select.poll | None = None
        self._buffer = bytearray()

    def blob(self, oid: str) -> bytes:
        """The content of blob ``oid``. Raises :class:`FileIssue` (transient) for an object
        missing from the repository, :class:`StoreError` when a fresh process fails too."""
        try:
            return self._ask(oid)
        except _ReaderGone:
            self._end(grace_s=0)  # dead or hung: not worth waiting for
        try:
            return self._ask(oid)
        except _ReaderGone as gone:
            self._end(grace_s=0)
            raise StoreError(f"git cat-file in {self._repo_dir} failed twice: {gone}") from None

    def close(self) -> None:
        """End the process: EOF on its input, then a kill if it does not exit within 2 s."""
        self._end(grace_s=2.0)

    def _end(self, grace_s: float) -> None:
        proc, self._proc, self._poll = self._proc, None, None
        self._buffer.clear()
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass  # it died already
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        proc.stdout.close()

    def _ask(self, oid: str) -> bytes:
        proc = self._start()
        try:
            proc.stdin.write(oid.encode("ascii") + b"\n")
            proc.stdin.flush()
        except OSError as exc:
            raise _ReaderGone(f"its input is closed ({exc.strerror or exc})") from None
        deadline = time.monotonic() + self._timeout_s
        header = self._line(deadline).split(b" ")
        if len(header) == 2 and header[1] == b"missing":
            raise FileIssue(f"unreadable: object {oid} is missing from the repository", transient=True)
        if len(header) != 3 or header[0] != oid.encode("ascii") or not header[2].isdigit():
            raise _ReaderGone(f"unexpected answer {b' '.join(header)[:100]!r}")
        if header[1] != b"blob":
            raise FileIssue("not a regular file")
        return self._exactly(int(header[2]) + 1, deadline)[:-1]  # the content, then LF

    def _start(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._end(grace_s=0)
        self._proc = _popen(["git", "-C", str(self._repo_dir), "cat-file", "--batch"], env=_git_env(None, None),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
        self._poll = select.poll()
        self._poll.register(self._proc.stdout.fileno(), select.POLLIN)
        return self._proc

    def _line(self, deadline: float) -> bytes:
        start = 0
        while (end := self._buffer.find(b"\n", start)) < 0:
            start = len(self._buffer)
            self._fill(deadline, 65536)
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        return line

    def _exactly(self, count: int, deadline: float) -> bytes:
        while len(self._buffer) < count:
            self._fill(deadline, max(65536, count - len(self._buffer)))
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def _fill(self, deadline: float, want: int) -> None:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0 or not self._poll.poll(remaining_ms):
            raise _ReaderGone(f"no answer in {self._timeout_s:g} s")
        chunk = os.read(self._proc.stdout.fileno(), want)
        if not chunk:
            raise _ReaderGone("it exited")
        self._buffer += chunk
