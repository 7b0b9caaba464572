"""Cold storage: an owner's clone backed up as git bundles in object storage, and restored.

Seed 002's "Cold Storage Backup": a bundle of the bare clone (``git bundle create --all``,
or an incremental one, ``--all ^<the last bundled head>``) goes under
``bundles/<repo dir>/<created>-<head12>.bundle`` with a record beside it (``.bundle.json``:
repo, url, branch, head, refs, size, SHA-256, created, the base of an incremental bundle).
A bundle is uploaded under a temporary key, copied into place only after its checksum was
read back, and the record is written last: a bundle without a record is not a backup.

``git bundle verify`` checks a bundle's header and prerequisites, not its pack (a bundle with
overwritten bytes verifies), so a restore checks the recorded SHA-256, then makes a trial
clone in a temporary directory (``index-pack`` hashes every object) and checks the branch's
head before it puts anything in place; a bundle that fails either is skipped for the one
before it. This module runs git and the object store only; the tasks (tasks/backup.py) take
the repository lock around it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path

from indexing import metrics
from indexing.errors import CodeindexError, ObjectNotFoundError, StoreError, UsageError
from indexing.git_source import repo_dir_name
from indexing.objects import ObjectStore, sha256_file

log = logging.getLogger("codeindex.bundles")

PREFIX = "bundles"
RECORD_SUFFIX = ".json"
#: Seconds one git process of a backup or restore may run before it is stopped.
GIT_TIMEOUT_SECONDS = 1800.0


class BundleError(CodeindexError):
    """A bundle failed its checks (checksum, trial clone, head): the restore tries the one before."""


class BackupOutcome(StrEnum):
    """What one backup did."""

    CREATED = "created"
    UNCHANGED = "unchanged"  # the clone's head is the last bundle's: nothing new to keep
    EMPTY = "empty"  # the repository has no commit: reported, nothing uploaded (git cannot bundle it)
    NO_CLONE = "no-clone"  # this worker holds no clone of it (never synced here)


@dataclass(frozen=True, slots=True)
class BundleRecord:
    """One bundle in object storage. ``created`` is ISO 8601 UTC; ``size`` in bytes; ``base``
    the head of the bundle an incremental one builds on (None: a full bundle); ``refs``
    ref name -> commit as bundled; ``shard_id`` the worker that made it."""

    repo_id: str
    key: str
    url: str
    branch: str
    head: str
    refs: dict[str, str]
    size: int
    sha256: str
    created: str
    verified: bool
    base: str | None = None
    shard_id: str = ""

    @property
    def record_key(self) -> str:
        """Where the record lies (beside the bundle)."""
        return self.key + RECORD_SUFFIX

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.created)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class BackupResult:
    """One backup's outcome, its bundle when one was made, and a sentence for logs and the CLI."""

    repo_id: str
    outcome: BackupOutcome
    record: BundleRecord | None
    message: str
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"repo_id": self.repo_id, "outcome": self.outcome.value, "message": self.message,
                "seconds": round(self.seconds, 3), "bundle": self.record.as_dict() if self.record else None}


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """Which bundle a restore used (``record``, None when none passed and the caller clones),
    the bundles it refused first with the reason, and how long it took (seconds)."""

    repo_id: str
    record: BundleRecord | None
    refused: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    chain: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        """``bundle`` or ``clone`` (no bundle passed): what the caller's clone comes from."""
        return "bundle" if self.record else "clone"

    def as_dict(self) -> dict:
        return {"repo_id": self.repo_id, "source": self.source, "bundle": self.record.key if self.record else None,
                "head": self.record.head if self.record else None, "chain": self.chain,
                "refused": [{"bundle": k, "reason": r} for k, r in self.refused], "seconds": round(self.seconds, 3)}


def bundle_dir(repo_id: str) -> str:
    """The key prefix of ``repo_id``'s bundles (its clone directory's safe name)."""
    return f"{PREFIX}/{repo_dir_name(repo_id)}/"


def bundle_key(repo_id: str, created: datetime, head: str) -> str:
    """``bundles/<repo dir>/<created, UTC, sortable>-<head12>.bundle``: keys sort by time."""
    stamp = created.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{bundle_dir(repo_id)}{stamp}-{head[:12]}.bundle"


def _git(*args: str, cwd: Path | None = None, timeout_s: float = GIT_TIMEOUT_SECONDS) -> subprocess.CompletedProcess:
    """Run git; StoreError when it cannot start or outlives ``timeout_s``. The caller reads
    ``returncode`` (a failing check is an answer here, not an error)."""
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=timeout_s,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise StoreError(f"git {args[0]} ran past {timeout_s:.0f} s and was stopped") from None
    except OSError as exc:
        raise StoreError(f"cannot run git: {exc.strerror or exc}") from None


def _detail(proc: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in proc.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return "; ".join(lines[-3:])[:500] or f"exit {proc.returncode}"


def branch_head(clone: Path, branch: str) -> str | None:
    """The commit ``refs/heads/<branch>`` names in the bare clone, or None (no such branch, no commit)."""
    proc = _git("-C", str(clone), "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}",
                timeout_s=60)
    return proc.stdout.decode("ascii").strip() if proc.returncode == 0 else None


def _refs(clone: Path) -> dict[str, str]:
    proc = _git("-C", str(clone), "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags",
                timeout_s=60)
    refs = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        sha, _, name = line.partition(" ")
        refs[name] = sha
    return refs


def list_bundles(store: ObjectStore, repo_id: str) -> list[BundleRecord]:
    """Every complete bundle of ``repo_id`` (those with a record), oldest first. Raises StoreError."""
    records = []
    for info in store.list(bundle_dir(repo_id)):
        if not info.key.endswith(".bundle" + RECORD_SUFFIX) or "/partial/" in info.key:
            continue
        try:
            records.append(BundleRecord(**json.loads(store.get(info.key))))
        except ObjectNotFoundError:
            continue  # deleted by retention since the listing
        except (ValueError, TypeError) as exc:
            log.warning("skipping an unreadable bundle record key=%s: %s", info.key, exc)
    return sorted(records, key=lambda r: (r.created, r.key))


def create_bundle(clone: Path, *, repo_id: str, url: str, branch: str, store: ObjectStore, work_dir: Path,
                  shard_id: str = "", incremental: bool = False, now: datetime | None = None) -> BackupResult:
    """Back up the bare clone at ``clone`` to ``store``.

    ``incremental``: when a full bundle exists and the clone still has the last bundled head,
    bundle only what came after it (``--all ^<head>``); otherwise a full bundle. A clone whose
    head is the last bundle's is ``unchanged``, one without a commit ``empty`` (git cannot
    bundle it), neither uploads anything. ``work_dir`` holds the temporary file. Raises
    StoreError (git, the store), BundleError when the bundle made cannot be read back.
    """
    started = time.monotonic()
    if not (clone / "HEAD").is_file():
        return BackupResult(repo_id, BackupOutcome.NO_CLONE, None, f"no clone of {repo_id} at {clone}")
    head = branch_head(clone, branch)
    if head is None:
        return BackupResult(repo_id, BackupOutcome.EMPTY, None,
                            f"{repo_id} has no commit on {branch}: nothing to back up (git cannot bundle it)")
    existing = list_bundles(store, repo_id)
    if existing and existing[-1].head == head:
        return BackupResult(repo_id, BackupOutcome.UNCHANGED, existing[-1],
                            f"{repo_id} is unchanged since its last bundle ({existing[-1].key})")
    base = existing[-1] if incremental and existing and _has_commit(clone, existing[-1].head) else None
    created = now or datetime.now(timezone.utc)
    key = bundle_key(repo_id, created, head)
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=work_dir) as tmp:
        path = Path(tmp) / "repo.bundle"
        spec = ["--all", f"^{base.head}"] if base else ["--all"]
        proc = _git("-C", str(clone), "bundle", "create", str(path), *spec)
        if proc.returncode != 0:
            metrics.cold_storage("backup", "failure")
            raise StoreError(f"git bundle create failed for {repo_id}: {_detail(proc)}")
        digest, size = sha256_file(path), path.stat().st_size
        verified = base is None and _trial_clone([path], Path(tmp) / "trial", branch, head) is None
        if base is None and not verified:
            metrics.cold_storage("backup", "failure")
            raise BundleError(f"the bundle made of {repo_id} does not clone back; nothing was uploaded")
        record = BundleRecord(repo_id=repo_id, key=key, url=url, branch=branch, head=head, refs=_refs(clone),
                              size=size, sha256=digest, created=created.isoformat(timespec="microseconds"),
                              verified=verified, base=base.head if base else None, shard_id=shard_id)
        _upload(store, path, record)
    seconds = time.monotonic() - started
    metrics.cold_storage("backup", "success", repo_id=repo_id, size=size, seconds=seconds)
    kind = f"incremental on {base.head[:12]}" if base else "full"
    log.info("backup done repo=%s key=%s head=%s size=%d kind=%s seconds=%.2f", repo_id, key, head, size, kind, seconds)
    return BackupResult(repo_id, BackupOutcome.CREATED, record, f"{repo_id}: {kind} bundle {key} "
                        f"({size} bytes, sha256 {digest})", seconds)


def _has_commit(clone: Path, sha: str) -> bool:
    return _git("-C", str(clone), "cat-file", "-e", f"{sha}^{{commit}}", timeout_s=60).returncode == 0


def _upload(store: ObjectStore, path: Path, record: BundleRecord) -> None:
    """Temporary key, read-back check, copy into place, then the record: visible only complete."""
    partial = f"{bundle_dir(record.repo_id)}partial/{uuid.uuid4().hex}.bundle"
    store.put_file(partial, path)
    try:
        info = store.head(partial)
        if info is None or info.size != record.size or info.sha256 != record.sha256:
            raise StoreError(f"the uploaded bundle of {record.repo_id} does not match what was written "
                             f"({info.size if info else 'missing'} bytes, sha256 {info.sha256 if info else '-'})")
        store.copy(partial, record.key)
    finally:
        store.delete(partial)
    store.put(record.record_key, json.dumps(record.as_dict(), sort_keys=True).encode(),
              content_type="application/json")


def _trial_clone(bundles: list[Path], dest: Path, branch: str, head: str) -> str | None:
    """Clone the chain ``bundles`` (a full bundle, then incremental ones) into ``dest`` (bare);
    None when it worked and ``refs/heads/<branch>`` is ``head``, else the reason."""
    proc = _git("clone", "--bare", "--quiet", str(bundles[0]), str(dest))
    if proc.returncode != 0:
        return f"trial clone failed: {_detail(proc)}"
    for path in bundles[1:]:
        proc = _git("-C", str(dest), "fetch", "--quiet", "--no-tags", str(path), "+refs/heads/*:refs/heads/*")
        if proc.returncode != 0:
            return f"applying {path.name} failed: {_detail(proc)}"
    _git("-C", str(dest), "remote", "remove", "origin", timeout_s=60)  # it names the temporary bundle file
    got = branch_head(dest, branch)
    if got != head:
        return f"the trial clone's {branch} is {got or 'missing'}, the record says {head}"
    return None


def _chain(record: BundleRecord, records: list[BundleRecord]) -> list[BundleRecord]:
    """The bundles a restore of ``record`` applies, full first. BundleError when a base is gone."""
    by_head = {r.head: r for r in records}
    chain = [record]
    while chain[0].base is not None:
        base = by_head.get(chain[0].base)
        if base is None or base in chain:
            raise BundleError(f"the base {chain[0].base[:12]} of {chain[0].key} is not in object storage")
        chain.insert(0, base)
    return chain


def restore_bundle(store: ObjectStore, repo_id: str, dest: Path, work_dir: Path, *,
                   bundle: str | None = None, branch: str | None = None) -> RestoreResult:
    """Put a clone of ``repo_id`` restored from its newest bundle that passes (or from
    ``bundle``, a key, and the ones before it) at ``dest``, replacing what is there only once
    the trial clone passed. Each candidate's chain is downloaded, its SHA-256 compared with the
    record, cloned in ``work_dir`` and its head checked; a candidate that fails is recorded in
    ``refused`` and the previous one tried. No candidate passing: ``record`` None, ``dest``
    untouched (the caller clones from the code host). Raises StoreError for the store,
    UsageError for a ``bundle`` that is not one of ``repo_id``'s.
    """
    started = time.monotonic()
    records = list_bundles(store, repo_id)
    if bundle is not None:
        keys = [r.key for r in records]  # a key, a URI ending in one, or a bundle's file name
        matches = [k for k in keys if bundle in (k, k.rsplit("/", 1)[-1]) or bundle.endswith("/" + k)]
        if not matches:
            raise UsageError(f"no bundle {bundle!r} of {repo_id}; `codeindex backups --repo {repo_id}` lists them")
        records = records[:keys.index(matches[0]) + 1]
    refused: list[tuple[str, str]] = []
    work_dir.mkdir(parents=True, exist_ok=True)
    for record in reversed(records):
        try:
            chain = _chain(record, records)
            with tempfile.TemporaryDirectory(prefix="restore-", dir=work_dir) as tmp:
                trial = Path(tmp) / "clone.git"
                paths = [_download_checked(store, part, Path(tmp) / f"{i}.bundle") for i, part in enumerate(chain)]
                reason = _trial_clone(paths, trial, branch or record.branch, record.head)
                if reason is not None:
                    raise BundleError(reason)
                _replace(trial, dest)
        except BundleError as exc:
            refused.append((record.key, str(exc)))
            metrics.cold_storage("restore", "failure")
            log.warning("restore of %s: bundle %s refused: %s", repo_id, record.key, exc)
            continue
        seconds = time.monotonic() - started
        metrics.cold_storage("restore", "success", seconds=seconds)
        log.info("restore done repo=%s bundle=%s head=%s refused=%d seconds=%.2f", repo_id, record.key, record.head,
                 len(refused), seconds)
        return RestoreResult(repo_id, record, refused, seconds, [c.key for c in chain])
    return RestoreResult(repo_id, None, refused, time.monotonic() - started)


def _download_checked(store: ObjectStore, record: BundleRecord, path: Path) -> Path:
    try:
        store.get_file(record.key, path)
    except ObjectNotFoundError:
        raise BundleError(f"{record.key} is missing from object storage") from None
    digest = sha256_file(path)
    if digest != record.sha256:
        raise BundleError(f"checksum mismatch: {record.key} has sha256 {digest}, its record {record.sha256}")
    return path


def _replace(new: Path, dest: Path) -> None:
    """Move the clone ``new`` to ``dest``; an old clone there is moved aside first and removed
    after (``os.replace`` of directories is atomic only into an absent or empty target)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    aside = None
    if dest.exists():
        aside = dest.parent / f".{dest.name}.replaced-{uuid.uuid4().hex[:12]}"
        os.replace(dest, aside)
    staged = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:12]}"
    shutil.move(str(new), staged)  # the work directory may lie on another file system
    os.replace(staged, dest)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def record_restore(store: ObjectStore, result: RestoreResult, *, shard_id: str, reason: str,
                   now: datetime | None = None) -> str:
    """Keep what a restore did (``bundles/<repo dir>/restores/<when>.json``): the record that
    ``codeindex backups`` shows; returns its key."""
    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    key = f"{bundle_dir(result.repo_id)}restores/{when.strftime('%Y%m%dT%H%M%S.%fZ')}.json"
    doc = {**result.as_dict(), "shard_id": shard_id, "reason": reason, "at": when.isoformat(timespec="microseconds")}
    store.put(key, json.dumps(doc, sort_keys=True).encode(), content_type="application/json")
    return key


def list_restores(store: ObjectStore, repo_id: str) -> list[dict]:
    """The restores recorded for ``repo_id``, oldest first."""
    out = []
    for info in store.list(f"{bundle_dir(repo_id)}restores/"):
        try:
            out.append(json.loads(store.get(info.key)))
        except (ObjectNotFoundError, ValueError):
            continue
    return out


def expired(records: Iterable[BundleRecord], *, keep: int, keep_days: float, now: datetime | None = None) -> list[BundleRecord]:
    """The bundles retention removes: all but the newest ``keep`` and any younger than
    ``keep_days`` days, and never a base that a kept incremental bundle needs."""
    ordered = sorted(records, key=lambda r: (r.created, r.key))
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=keep_days)
    kept = {r.key for r in ordered[-keep:]} if keep > 0 else set()
    kept |= {r.key for r in ordered if r.created_at >= cutoff}
    for record in [r for r in ordered if r.key in kept]:
        try:
            kept |= {c.key for c in _chain(record, ordered)}
        except BundleError:
            continue
    return [r for r in ordered if r.key not in kept]


def delete_bundles(store: ObjectStore, records: Iterable[BundleRecord]) -> int:
    """Delete each bundle, its record first (so it stops being a backup before its bytes go)."""
    count = 0
    for record in records:
        store.delete(record.record_key)
        store.delete(record.key)
        count += 1
    return count
