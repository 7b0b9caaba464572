"""Where index artifacts are kept: any :class:`~indexing.objects.ObjectStore` (a directory, the
embedded default; S3 through boto3), under ``artifacts/``, and their retention (seed 000:
pull-request artifacts 7 days, main 30 days, promoted longer).

Each artifact is two objects: its archive ``artifacts/<id>.tar.zst`` (or ``.tar.gz``) and its
record ``artifacts/<id>.json`` (the metadata plus size, SHA-256 and promotion), written after
the archive, so an artifact is listed only once it is complete. Ids sort by time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from indexing.artifacts import ArtifactMeta, chain_of
from indexing.errors import ArtifactError, ObjectNotFoundError, UsageError
from indexing.objects import ObjectStore

PREFIX = "artifacts/"
_EXTENSIONS = {"zstd": ".tar.zst", "tar.gz": ".tar.gz"}


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    """What ``artifact list`` shows of one artifact: its metadata's names, the archive's key,
    size (bytes) and SHA-256, and its promotion (``promoted_at`` ISO 8601 or None)."""

    id: str
    kind: str
    base: str | None
    repo: str
    branch: str
    commit: str
    embedding_model: str
    model_dimension: int
    created_at: str
    index_stats: dict[str, int]
    key: str
    size: int
    sha256: str
    compression: str
    promoted_at: str | None = None

    @property
    def promoted(self) -> bool:
        return self.promoted_at is not None

    @classmethod
    def of(cls, meta: ArtifactMeta, *, key: str, size: int, sha256: str, compression: str) -> ArtifactRecord:
        """The record of an archive of ``meta`` stored under ``key``."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in asdict(meta).items() if k in names}, key=key, size=size, sha256=sha256,
                   compression=compression)

    def as_dict(self) -> dict:
        return {**asdict(self), "promoted": self.promoted}


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Days an artifact is kept from its creation (a promoted one from its promotion):
    ``main_branches`` -> ``main_days``, any other branch (a pull request's) -> ``pr_days``."""

    pr_days: float
    main_days: float
    promoted_days: float
    main_branches: Sequence[str]

    def expires(self, record: ArtifactRecord) -> datetime:
        """When ``record`` becomes due for removal (UTC)."""
        if record.promoted_at:
            return _when(record.promoted_at) + timedelta(days=self.promoted_days)
        days = self.main_days if record.branch in self.main_branches else self.pr_days
        return _when(record.created_at) + timedelta(days=days)


def _when(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class ArtifactStore:
    """Artifacts in ``objects`` under ``artifacts/``. Every method raises StoreError when the
    object store fails; ArtifactError for an id that names no artifact."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def describe(self) -> str:
        """Where the artifacts are, for messages (never a credential)."""
        return self.objects.describe().rstrip("/") + "/" + PREFIX

    def uri(self, record: ArtifactRecord) -> str:
        """Where ``record``'s archive is, as a URI: ``s3://bucket/prefix/artifacts/<id>.tar.zst``
        or ``file:///...`` for a directory."""
        bucket = getattr(self.objects, "bucket", None)
        if bucket:
            return f"s3://{bucket}/" + "/".join(p for p in (getattr(self.objects, "prefix", ""), record.key) if p)
        return (Path(getattr(self.objects, "root", ".")) / record.key).as_uri()

    def put(self, meta: ArtifactMeta, archive: Path, sha256: str, compression: str) -> ArtifactRecord:
        """Upload ``archive`` (its hex ``sha256``), then its record; return the record."""
        key = PREFIX + meta.id + _EXTENSIONS[compression]
        self.objects.put_file(key, archive)
        record = ArtifactRecord.of(meta, key=key, size=archive.stat().st_size, sha256=sha256, compression=compression)
        self._write(record)
        return record

    def _write(self, record: ArtifactRecord) -> None:
        self.objects.put(PREFIX + record.id + ".json", json.dumps(asdict(record), sort_keys=True).encode(),
                         content_type="application/json")

    def list(self, repo: str | None = None, branch: str | None = None) -> list[ArtifactRecord]:
        """Every artifact (of ``repo``, of ``branch``), oldest first."""
        out = []
        for info in self.objects.list(PREFIX):
            if not info.key.endswith(".json"):
                continue
            try:
                record = self._read(info.key)
            except ObjectNotFoundError:
                continue  # removed since the listing
            if (repo is None or record.repo == repo) and (branch is None or record.branch == branch):
                out.append(record)
        return sorted(out, key=lambda r: r.id)

    def _read(self, key: str) -> ArtifactRecord:
        try:
            doc = json.loads(self.objects.get(key))
            return ArtifactRecord(**doc)
        except (ValueError, TypeError) as exc:
            raise ArtifactError(f"the artifact record {key} is malformed ({exc})") from None

    def get(self, artifact_id: str) -> ArtifactRecord:
        """The record of ``artifact_id``; ArtifactError when there is none."""
        if "/" in artifact_id or not artifact_id:
            raise UsageError(f"{artifact_id!r} is not an artifact id")
        try:
            return self._read(PREFIX + artifact_id + ".json")
        except ObjectNotFoundError:
            raise ArtifactError(f"no artifact {artifact_id} in {self.describe()}") from None

    def latest(self, repo: str, branches: Sequence[str]) -> ArtifactRecord | None:
        """The newest artifact of ``repo`` on the first of ``branches`` that has one."""
        records = self.list(repo)
        for branch in branches:
            mine = [r for r in records if r.branch == branch]
            if mine:
                return mine[-1]
        return None

    def chain(self, record: ArtifactRecord) -> list[ArtifactRecord]:
        """The records from the full artifact to ``record`` (``record`` itself when full)."""
        records = {r.id: r for r in self.list(record.repo)}
        records[record.id] = record
        return [records[i] for i in chain_of(record.id, {i: r.base for i, r in records.items()})]

    def download(self, record: ArtifactRecord, path: Path) -> None:
        """Write ``record``'s archive to ``path`` (replaced only when complete)."""
        try:
            self.objects.get_file(record.key, path)
        except ObjectNotFoundError:
            raise ArtifactError(f"artifact {record.id}: its archive {record.key} is missing") from None

    def promote(self, artifact_id: str, now: datetime | None = None) -> ArtifactRecord:
        """Mark ``artifact_id`` promoted (kept ``promoted_days`` from now); a promoted one keeps
        its first promotion time. Returns the record."""
        record = self.get(artifact_id)
        if record.promoted_at is None:
            record = replace(record, promoted_at=(now or datetime.now(timezone.utc)).isoformat(timespec="seconds"))
            self._write(record)
        return record

    def delete(self, record: ArtifactRecord) -> None:
        """Remove ``record`` (first, so it is no longer listed) and its archive."""
        self.objects.delete(PREFIX + record.id + ".json")
        self.objects.delete(record.key)

    def expired(self, policy: RetentionPolicy, now: datetime, limit: int) -> list[ArtifactRecord]:
        """Up to ``limit`` artifacts past their retention, oldest first, never the base of an
        artifact that is kept (a delta needs its whole chain)."""
        records = self.list()
        due = {r.id for r in records if policy.expires(r) <= now}
        by_id = {r.id: r for r in records}
        for kept in [r for r in records if r.id not in due]:
            base = kept.base
            while base is not None and base in by_id:
                due.discard(base)
                base = by_id[base].base
        return [r for r in records if r.id in due][:limit]

    def prune(self, policy: RetentionPolicy, now: datetime, limit: int, dry_run: bool = False) -> list[str]:
        """Remove the artifacts :meth:`expired` returns (none with ``dry_run``); their ids."""
        removed = []
        for record in self.expired(policy, now, limit):
            if not dry_run:
                self.delete(record)
            removed.append(record.id)
        return removed
