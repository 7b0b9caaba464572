"""How a file's content travels from the repository's owner to the worker that embeds it: the
content strategies of event schema v2 (seed 004, "Content strategies"; docs/events.md).

- :class:`ContentEncoder`, the owner's side, says for every file of a batch how its content
  reaches the reader: ``inline`` in the message (at most 100 KB a file, 5 MB a message),
  ``object_storage`` (uploaded once under ``projects/{repo}/{sha256}.{ext}``, a presigned URL
  valid 24 h in the message), or ``git_reference`` (git URL, branch, commit and path: the reader
  reads the blob from its own clone). ``auto`` picks in that order what the file and the
  settings allow, and falls back as the seed says: object storage failing, inline when small
  enough, else a git reference; no git URL (a repository added by path), inline when small
  enough, else the path itself (a shared-disk fleet).
- :class:`ContentReader`, the reader's side, resolves a batch's files to bytes: from the
  message, through a local LRU download cache (:class:`DownloadCache`, content-addressed by
  SHA-256), from a local LRU clone cache (:class:`CloneCache`), or from the work tree (schema
  v1 and ``path``). Content whose SHA-256 differs from the message's checksum is refused as
  that file's error: nothing is indexed from unverified content.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

from filelock import FileLock, Timeout
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from indexing import metrics
from indexing.errors import FileIssue, ObjectNotFoundError, RepositoryError, StoreError
from indexing.git_source import GitCredentials, GitMirror, GitTree, redact, repo_dir_name
from indexing.ids import sha256_hex
from indexing.messages import BatchJob, ContentStrategy, FileContent, PlannedFile
from indexing.objects import ObjectStore
from indexing.paths import is_linked, tree_size
from indexing.scanner import read_file
from indexing.tree import SourceTree

log = logging.getLogger("codeindex.content")

T = TypeVar("T")

#: What ``CODEINDEX_CONTENT_STRATEGY`` may say: one strategy tried first, then auto's order.
STRATEGY_SETTINGS = ("auto", "inline", "object_storage", "git_reference", "path")
#: The order ``auto`` tries the strategies in (seed 004).
AUTO_ORDER = (ContentStrategy.INLINE, ContentStrategy.OBJECT_STORAGE, ContentStrategy.GIT_REFERENCE)
#: Download attempts of one object (seed 004: "3 retries with backoff").
DOWNLOAD_ATTEMPTS = 3
_EXTENSION = re.compile(r"[a-z0-9]{1,16}")

Guard = Callable[[Callable[[], T]], T]


def _unguarded(call: Callable[[], T]) -> T:
    return call()


@dataclass(frozen=True, slots=True)
class ContentPolicy:
    """The owner's rules: ``strategy`` one of :data:`STRATEGY_SETTINGS` (``path``: schema v1
    batches, no encoder); sizes in bytes; ``presign_expiry`` in seconds (seed 004: 24 h)."""

    strategy: str = "auto"
    inline_max_file_bytes: int = 100 * 1024
    inline_max_batch_bytes: int = 5 * 1024 * 1024
    presign_expiry: int = 86_400

    def order(self) -> list[ContentStrategy]:
        """The strategies to try for a file, the preferred one first."""
        if self.strategy in ("auto", "path"):
            return list(AUTO_ORDER)
        first = ContentStrategy(self.strategy)
        return [first, *(s for s in AUTO_ORDER if s is not first)]


def object_key(repo_id: str, checksum: str, rel: str) -> str:
    """The object-storage key of content ``checksum`` of file ``rel`` of ``repo_id``:
    ``projects/{repo}/{sha256}.{ext}`` (seed 004), the repository as a safe directory name
    (``indexing.git_source.repo_dir_name``), the extension lowercased or ``bin``. Content
    addressed: the same bytes in two files, or two commits, are one object."""
    suffix = PurePosixPath(rel).suffix.lstrip(".").lower()
    ext = suffix if _EXTENSION.fullmatch(suffix) else "bin"
    return f"projects/{repo_dir_name(repo_id)}/{checksum}.{ext}"


class ContentEncoder:
    """The owner's side: :meth:`encode` makes the ``contents`` of a schema-v2 batch.

    ``objects``: the object store (None: object storage not configured); ``guard`` runs each of
    its calls (the fleet's ``object_storage`` circuit breaker); ``git_url``/``branch``: the
    repository's, for git references (None for a repository added by path). Not thread-safe:
    one encoder per sync.
    """

    def __init__(self, policy: ContentPolicy, objects: ObjectStore | None, *, repo_id: str,
                 git_url: str | None = None, branch: str | None = None, guard: Guard = _unguarded) -> None:
        self.policy, self.objects, self.repo_id = policy, objects, repo_id
        self.git_url, self.branch, self._guard = git_url, branch, guard
        self._objects_failed: str | None = None
        self.counts: dict[str, int] = {}

    def encode(self, tree: SourceTree, files: Sequence[PlannedFile], max_size: int) -> dict[str, FileContent]:
        """The content of each of ``files`` (one batch) as the reader will find it, by path.

        Reads each file from ``tree`` (the commit the plan was made at) once. A file that cannot
        be read any more (changed since the plan) gets its problem instead, which the reader
        reports as that file's. Raises :class:`StoreError` when no strategy can carry a file:
        object storage failed and the file is too large to go inline and the repository has no
        git URL (the plan task retries).
        """
        contents: dict[str, FileContent] = {}
        inline_bytes = 0
        for planned in files:
            try:
                data = tree.read(planned.path, max_size)
            except FileIssue as issue:
                contents[planned.path] = FileContent(strategy=ContentStrategy.INLINE, checksum="", size=0,
                                                     problem=issue.reason, skipped=issue.status == "skipped")
                continue
            checksum = sha256_hex(data)
            linked = tree.is_linked(planned.path)
            content = None
            for strategy in self.policy.order():
                if strategy is ContentStrategy.INLINE:
                    if len(data) <= self.policy.inline_max_file_bytes and \
                            inline_bytes + len(data) <= self.policy.inline_max_batch_bytes:
                        content = _inline(data, checksum, linked)
                        inline_bytes += len(data)
                elif strategy is ContentStrategy.OBJECT_STORAGE:
                    content = self._upload(planned.path, data, checksum, linked)
                elif strategy is ContentStrategy.GIT_REFERENCE and self.git_url and tree.commit:
                    content = FileContent(strategy=strategy, checksum=checksum, size=len(data), git_url=self.git_url,
                                          branch=self.branch, commit=tree.commit, path=planned.path, linked=linked)
                if content is not None:
                    break
            if content is None:
                content = self._last_resort(planned.path, data, checksum, linked)
            self.counts[content.strategy.value] = self.counts.get(content.strategy.value, 0) + 1
            contents[planned.path] = content
        return contents

    def _upload(self, rel: str, data: bytes, checksum: str, linked: bool) -> FileContent | None:
        """Put the content in object storage (once: an object of that checksum is not uploaded
        again) and return its reference; None when object storage is not configured or failed
        in this sync already (the next strategy is tried, seed 004's fallback)."""
        if self.objects is None or self._objects_failed:
            return None
        key = object_key(self.repo_id, checksum, rel)
        store = self.objects
        try:
            info = self._guard(lambda: store.head(key))
            if info is None or info.sha256 != checksum or info.size != len(data):
                self._guard(lambda: store.put(key, data, metadata={"repo": _ascii(self.repo_id)}))
            url = self._guard(lambda: store.presigned_url(key, self.policy.presign_expiry))
        except StoreError as exc:  # DependencyUnavailableError (an open breaker) included
            self._objects_failed = str(exc)
            log.warning("object storage failed for repository %s (%s): falling back to other content strategies "
                        "for the rest of this sync", self.repo_id, exc)
            return None
        return FileContent(strategy=ContentStrategy.OBJECT_STORAGE, checksum=checksum, size=len(data),
                           object_key=key, url=url, linked=linked)

    def _last_resort(self, rel: str, data: bytes, checksum: str, linked: bool) -> FileContent:
        """No strategy of the order could carry the file: inline when the file alone is small
        enough (a batch's inline budget is a target, not a hard limit); the work-tree path for a
        repository added by path (a reader that shares the disk reads it, as schema v1 does);
        else StoreError."""
        if len(data) <= self.policy.inline_max_file_bytes:
            return _inline(data, checksum, linked)
        if not self.git_url:
            return FileContent(strategy=ContentStrategy.PATH, checksum=checksum, size=len(data), path=rel,
                               linked=linked)
        why = self._objects_failed or "object storage is not configured"
        raise StoreError(f"no content strategy can carry {rel} ({len(data)} bytes) of repository {self.repo_id}: "
                         f"{why}, and it is larger than the inline limit")


def _ascii(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii")[:200]


def _inline(data: bytes, checksum: str, linked: bool) -> FileContent:
    """Inline content: UTF-8 text as it is, anything else (Latin-1, bytes) in base64."""
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(data).decode("ascii"), "base64"
    return FileContent(strategy=ContentStrategy.INLINE, checksum=checksum, size=len(data), content=text,
                       content_encoding=encoding, linked=linked)


# --- the reader's side -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Eviction:
    """What an eviction of a cache removed (or, for a dry run, would remove), least recently
    used first: the entries' names, their bytes, and the cache's size after it against its limit."""

    removed: list[str]
    bytes_freed: int
    size_bytes: int
    max_bytes: int


def lru_victims(entries: Sequence[tuple[float, int, T]], max_bytes: int, target: int,
                limit: int | None = None) -> list[tuple[float, int, T]]:
    """The entries (last use, size, item) to remove, least recently used first, when their total
    exceeds ``max_bytes``: enough to bring it down to ``target``, at most ``limit`` of them.
    Nothing when the total is within ``max_bytes``."""
    ordered = sorted(entries, key=lambda e: (e[0], e[1]))
    total = sum(size for _, size, _ in ordered)
    if total <= max_bytes:
        return []
    victims = []
    for entry in ordered:
        if total <= target or (limit is not None and len(victims) >= limit):
            break
        victims.append(entry)
        total -= entry[1]
    return victims



class DownloadCache:
    """Downloaded objects on the reader's disk, by SHA-256 (``<root>/<sha[:2]>/<sha>``), at most
    ``max_bytes`` in all: the least recently used are removed first (seed 004: 10 GB).

    Entries are written to a temporary file and renamed into place, so a reader never sees part
    of one; an entry that no longer has its checksum is dropped. Shared by the processes of one
    worker (a prefork pool): each keeps an estimate of the total, made exact by a scan whenever
    it passes the limit. ``hits``/``misses`` count this process's lookups.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = Path(root), max_bytes
        self.hits = self.misses = 0
        self._total: int | None = None
        self._lock = threading.Lock()

    def _path(self, checksum: str) -> Path:
        return self.root / checksum[:2] / checksum

    def get(self, checksum: str) -> bytes | None:
        """The cached content of ``checksum`` (marked as just used), or None."""
        path = self._path(checksum)
        try:
            data = path.read_bytes()
        except OSError:
            return self._missed()
        if sha256_hex(data) != checksum:
            path.unlink(missing_ok=True)
            return self._missed()
        try:
            os.utime(path)
        except OSError:
            pass
        self.hits += 1
        metrics.cache_lookups("download", 1, 0)
        return data

    def _missed(self) -> None:
        self.misses += 1
        metrics.cache_lookups("download", 0, 1)
        return None

    def put(self, checksum: str, data: bytes) -> None:
        """Keep ``data`` (whose SHA-256 is ``checksum``), then evict down to the limit. A cache
        that cannot be written is passed over (the content was read; only reuse is lost)."""
        if self.max_bytes <= 0 or len(data) > self.max_bytes:
            return
        path = self._path(checksum)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(f".{checksum}.{os.getpid()}.{threading.get_ident()}.tmp")
            temp.write_bytes(data)
            os.replace(temp, path)
        except OSError as exc:
            log.warning("download cache %s not written: %s", self.root, exc)
            return
        with self._lock:
            if self._total is None:
                self._total = self._scan_total()
            else:
                self._total += len(data)
            over = self._total > self.max_bytes
            if not over:
                metrics.cache_size("download", self._total)
        if over:
            self.evict()

    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for sub in self.root.iterdir() if self.root.is_dir() else ():
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat()
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return out

    def _scan_total(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def evict(self, *, dry_run: bool = False, limit: int | None = None) -> Eviction:
        """When the cache holds more than its limit, remove the least recently used entries until
        it holds at most 90 % of it (so that the next puts do not evict again at once), at most
        ``limit`` of them; ``dry_run``: only say which. A cache within its limit loses nothing."""
        with self._lock:
            entries = self._entries()
            victims = lru_victims(entries, self.max_bytes, int(self.max_bytes * 0.9), limit)
            if not dry_run:
                for _, _, path in victims:
                    path.unlink(missing_ok=True)
            freed = sum(size for _, size, _ in victims)
            total = sum(size for _, size, _ in entries) - freed
            if not dry_run:
                self._total = total
                metrics.cache_size("download", total)
            metrics.cache_limit("download", self.max_bytes)
        return Eviction([p.relative_to(self.root).as_posix() for _, _, p in victims], freed, total, self.max_bytes)

    @property
    def hit_rate(self) -> float:
        """Hits over lookups of this process (0 before any lookup)."""
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0


class CloneCache:
    """The reader's own clones of repositories named by git references, under ``root`` (one bare
    clone per URL, ``<sha256(url)[:16]>.git``), at most ``max_bytes`` in all: the least recently
    used clone is removed first (seed 004: 50 GB, clone timeout 5 min).

    A clone is made or fetched under a file lock of its own (the processes of one worker share the
    cache); a clone in use by another process is never evicted. Each process keeps the trees of
    its last few commits open (one ``git cat-file`` process each).
    """

    OPEN_TREES = 4

    def __init__(self, root: Path, max_bytes: int, *, credentials: GitCredentials | None = None,
                 timeout_s: float = 300.0, lock_timeout_s: float = 600.0) -> None:
        self.root, self.max_bytes = Path(root), max_bytes
        self.credentials, self.timeout_s, self.lock_timeout_s = credentials, timeout_s, lock_timeout_s
        self._trees: OrderedDict[tuple[str, str], GitTree] = OrderedDict()
        self._lock = threading.Lock()

    def _dir(self, url: str) -> Path:
        return self.root / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.git"

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock", timeout=self.lock_timeout_s)
        try:
            with lock:
                yield
        except Timeout:
            raise StoreError(f"the clone cache entry {path} stayed locked for {self.lock_timeout_s:g} s") from None

    def read(self, url: str, branch: str | None, commit: str, rel: str, max_size: int) -> bytes:
        """The content of ``rel`` at ``commit`` of the repository at ``url``, cloned or fetched
        (branch ``branch``) when the commit is not in the cache yet.

        Raises :class:`FileIssue` for a path the commit does not hold, and for a commit the
        branch no longer has (history rewritten); :class:`StoreError` when git fails (network,
        timeout) after its retries.
        """
        with self._lock:
            tree = self._trees.get((url, commit))
            if tree is not None:
                self._trees.move_to_end((url, commit))
        if tree is None:
            tree = self._open(url, branch, commit)
        else:
            metrics.cache_lookups("clone", 1, 0)
        return tree.read(rel, max_size)

    def _open(self, url: str, branch: str | None, commit: str) -> GitTree:
        path = self._dir(url)
        with self._locked(path):
            mirror = GitMirror(path, url, branch=branch or "main", credentials=self.credentials,
                               timeout_s=self.timeout_s)
            cloned = mirror.ensure()
            present = mirror.commit_exists(commit)
            # a hit: the commit was in the cache's clone already; a miss: cloned or fetched for it
            hit = present and not cloned
            metrics.cache_lookups("clone", int(hit), int(not hit))
            if not present:
                mirror.fetch()
                if not mirror.commit_exists(commit):
                    raise FileIssue(f"commit {commit[:12]} is not on branch {branch} of {redact(url)} any more")
            try:
                os.utime(path)
            except OSError:
                pass
            try:
                tree = GitTree(path, commit)
            except RepositoryError as exc:
                raise FileIssue(str(exc)) from None
        if cloned:
            self.evict(keep=path)
        with self._lock:
            self._trees[(url, commit)] = tree
            while len(self._trees) > self.OPEN_TREES:
                _, old = self._trees.popitem(last=False)
                old.close()
        return tree

    def evict(self, *, keep: Path | None = None, dry_run: bool = False, limit: int | None = None) -> Eviction:
        """Remove least recently used clones until the cache is within its limit, at most
        ``limit`` of them, never ``keep`` (the clone just made) nor one another process holds
        (its lock is taken without waiting); ``dry_run``: only say which."""
        clones = []
        for entry in self.root.glob("*.git") if self.root.is_dir() else ():
            try:
                clones.append((entry.stat().st_mtime, tree_size(entry), entry))
            except OSError:
                continue  # removed by another process meanwhile
        total = sum(size for _, size, _ in clones)
        candidates = [c for c in clones if c[2] != keep]
        pinned = total - sum(size for _, size, _ in candidates)
        removed: list[tuple[float, int, Path]] = []
        for victim in lru_victims(candidates, self.max_bytes - pinned, self.max_bytes - pinned, limit):
            if dry_run:
                removed.append(victim)
                continue
            try:
                with FileLock(str(victim[2]) + ".lock", timeout=0):
                    shutil.rmtree(victim[2], ignore_errors=True)
                removed.append(victim)
            except Timeout:
                continue
        freed = sum(size for _, size, _ in removed)
        if not dry_run:
            metrics.cache_size("clone", total - freed)
            self._forget_missing()
        metrics.cache_limit("clone", self.max_bytes)
        return Eviction([p.name for _, _, p in removed], freed, total - freed, self.max_bytes)

    def _forget_missing(self) -> None:
        with self._lock:
            for key in [k for k, t in self._trees.items() if not Path(t.repo_dir).exists()]:
                self._trees.pop(key).close()

    def close(self) -> None:
        """Stop the open trees' ``git cat-file`` processes."""
        with self._lock:
            trees, self._trees = list(self._trees.values()), OrderedDict()
        for tree in trees:
            tree.close()


class _Retry(Exception):
    """A download that may succeed when tried again (a connection error, a 5xx)."""


def download(url: str, timeout_s: float, *, attempts: int = DOWNLOAD_ATTEMPTS, backoff_s: float = 0.5) -> bytes:
    """GET ``url`` (a presigned object URL, or ``file://`` for the local object store) whole,
    each attempt within ``timeout_s`` seconds, up to ``attempts`` times with exponential
    backoff (seed 004: 60 s, 3 retries).

    Raises :class:`ObjectNotFoundError` for a 404; :class:`StoreError` for other refusals (an
    expired URL: 403) at once, and for connection errors and 5xx answers after the last
    attempt. Messages never hold the URL's query (its signature).
    """
    shown = url.split("?", 1)[0]

    def attempt() -> bytes:
        try:
            with metrics.transfer("download", "presigned_url"), \
                    urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http(s) or file, ours
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise ObjectNotFoundError(f"object {shown} does not exist (HTTP 404)") from None
            if exc.code >= 500 or exc.code == 429:
                raise _Retry(f"HTTP {exc.code} from {shown}") from None
            raise StoreError(f"object {shown} refused: HTTP {exc.code} {exc.reason}") from None
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {shown} does not exist") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise _Retry(f"cannot download {shown}: {reason}") from None

    try:
        for attempt_state in Retrying(stop=stop_after_attempt(attempts), reraise=True,
                                      wait=wait_exponential(multiplier=backoff_s, max=10),
                                      retry=retry_if_exception_type(_Retry)):
            with attempt_state:
                return attempt()
    except _Retry as exc:
        raise StoreError(f"{exc} (after {attempts} attempts)") from None
    raise AssertionError("unreachable")  # pragma: no cover


class ContentReader:
    """The reader's side: :meth:`read` gives the bytes of a batch's file, checked against the
    message's checksum.

    ``objects``: this worker's client of the object store (used when a presigned URL is refused,
    an expired one); ``downloads``/``clones``: the local caches (None: no cache, no git
    references); ``guard`` runs each object-storage download (the fleet's ``object_storage``
    circuit breaker); ``timeout_s``: one download's limit.
    """

    def __init__(self, *, objects: ObjectStore | None = None, downloads: DownloadCache | None = None,
                 clones: CloneCache | None = None, guard: Guard = _unguarded, timeout_s: float = 60.0,
                 backoff_s: float = 0.5) -> None:
        self.objects, self.downloads, self.clones = objects, downloads, clones
        self._guard, self.timeout_s, self._backoff_s = guard, timeout_s, backoff_s

    def read(self, job: BatchJob, planned: PlannedFile, max_size: int) -> tuple[bytes, bool]:
        """The content of ``planned`` in ``job`` and whether its path leads through a symlink.

        Schema v1 (and a ``path`` content) reads the work tree at ``job.root`` through the
        containment check. Raises :class:`FileIssue` for a file that cannot be indexed
        (missing, oversized, a checksum mismatch: ``content of X does not match its checksum``);
        :class:`StoreError` when object storage or git cannot be reached (the task retries the
        batch), :class:`DependencyUnavailableError` while the breaker is open.
        """
        began = time.perf_counter()
        data, linked = self._read(job, planned, max_size)
        strategy = ContentStrategy.PATH.value if job.schema_version == 1 else job.contents[planned.path].strategy.value
        metrics.ingested(strategy, len(data), time.perf_counter() - began)
        return data, linked

    def _read(self, job: BatchJob, planned: PlannedFile, max_size: int) -> tuple[bytes, bool]:
        if job.schema_version == 1:
            root = Path(job.root)
            return read_file(root, planned.path, max_size), is_linked(root, planned.path)
        content = job.contents.get(planned.path)
        if content is None:
            raise FileIssue("the batch message carries no content for this file")
        if content.problem:
            raise FileIssue(content.problem, status="skipped" if content.skipped else "error")
        if content.size > max_size:
            raise FileIssue(f"oversized: {content.size} bytes > limit {max_size}", status="skipped")
        if content.strategy is ContentStrategy.PATH:
            root = Path(job.root)
            if not job.root:
                raise FileIssue("the message names a work-tree path, and this repository has no work tree here")
            return read_file(root, content.path or planned.path, max_size), is_linked(root, content.path or planned.path)
        if content.strategy is ContentStrategy.INLINE:
            data = (content.content or "").encode("utf-8") if content.content_encoding == "utf-8" \
                else base64.b64decode(content.content or "", validate=True)
        elif content.strategy is ContentStrategy.OBJECT_STORAGE:
            data = self._object(content)
        else:
            data = self._git(content, max_size)
        _verify(planned.path, data, content)
        return data, content.linked

    def close(self) -> None:
        """Stop the clone cache's ``git cat-file`` processes."""
        if self.clones is not None:
            self.clones.close()

    def _object(self, content: FileContent) -> bytes:
        if self.downloads is not None:
            cached = self.downloads.get(content.checksum)
            if cached is not None:
                return cached
        try:
            data = self._guard(lambda: self._download(content))
        except ObjectNotFoundError as exc:  # removed since (cleanup): the owner's next sync uploads it again
            raise FileIssue(str(exc)) from None
        if sha256_hex(data) != content.checksum:
            self._drop_corrupt(content)
        elif self.downloads is not None:
            self.downloads.put(content.checksum, data)
        return data

    def _drop_corrupt(self, content: FileContent) -> None:
        """An object whose bytes are not its key's checksum is garbage under a content address:
        remove it (best effort), so the owner's next sync uploads the right bytes again."""
        log.warning("object %s does not match its checksum: refused, and removed", content.object_key)
        if self.objects is not None and content.object_key:
            try:
                self._guard(lambda: self.objects.delete(content.object_key))
            except StoreError as exc:
                log.warning("corrupt object %s not removed: %s", content.object_key, exc)

    def _download(self, content: FileContent) -> bytes:
        try:
            if not content.url:
                raise StoreError("no presigned URL in the message")
            return download(content.url, self.timeout_s, backoff_s=self._backoff_s)
        except ObjectNotFoundError:
            raise
        except StoreError as exc:
            if self.objects is None or not content.object_key or "HTTP 4" not in str(exc):
                raise
            # A refused URL (expired, a batch redelivered after a day): this worker's own credentials.
            return self.objects.get(content.object_key)

    def _git(self, content: FileContent, max_size: int) -> bytes:
        if self.clones is None:
            raise FileIssue("this worker has no clone cache for git references")
        if not (content.git_url and content.commit and content.path):
            raise FileIssue("the git reference lacks its URL, commit or path")
        return self.clones.read(content.git_url, content.branch, content.commit, content.path, max_size)


def _verify(rel: str, data: bytes, content: FileContent) -> None:
    """Refuse content whose SHA-256 is not the message's checksum (FileIssue, not transient:
    the owner's next sync sends it again)."""
    actual = sha256_hex(data)
    if actual != content.checksum:
        where = {ContentStrategy.OBJECT_STORAGE: f"object {content.object_key}",
                 ContentStrategy.GIT_REFERENCE: f"git blob {content.commit and content.commit[:12]}:{content.path}"}
        raise FileIssue(f"content of {where.get(content.strategy, 'the message')} does not match its checksum "
                        f"(sha256 {actual[:16]}..., expected {content.checksum[:16]}...): not indexed")
