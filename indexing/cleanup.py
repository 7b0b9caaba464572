"""The domain of cleanup: what one rule's pass removed, and the parts of the rules that need no
runtime (which embedding-cache entries no index references, retention cutoffs, a cache's
eviction and a store's compaction as results). ``workers/cleanup.py`` runs the rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from indexing.content import Eviction
from indexing.embed_cache import EmbeddingCache
from indexing.store import Compaction


@dataclass(slots=True)
class CleanupResult:
    """One pass of one rule: what it removed (or, with ``dry_run``, would remove), by name, and
    the bytes that gave back. ``more``: the pass stopped at its limit, the next one goes on;
    ``note``: what else a reader wants to know (a compaction's versions and sizes); ``error``:
    why the rule failed (the other rules ran)."""

    rule: str
    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    dry_run: bool = False
    more: bool = False
    note: str = ""
    error: str | None = None

    def as_dict(self) -> dict:
        """The result as JSON-ready data (a task's return value, ``cleanup --json``)."""
        return asdict(self)


def cutoff(days: float, now: datetime | None = None) -> str:
    """The ISO-8601 moment ``days`` before ``now`` (UTC), as the state stores write times."""
    moment = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    return moment.isoformat(timespec="milliseconds")


def referenced_keys(rows: Iterable[dict]) -> set[tuple[str, str]]:
    """The embedding-cache keys the exported objects ``rows`` use: ``(embedding_model,
    content_sha256)`` and, for an object with a name vector, ``(embedding_model, names_sha256)``.
    The cache is keyed by (model id, SHA-256 of the embedded text's UTF-8): an object's
    ``content_sha256`` is that hash of its chunk, ``names_sha256`` of its names text
    (``indexing.sync.index_batch``)."""
    keys: set[tuple[str, str]] = set()
    for row in rows:
        keys.add((row["embedding_model"], row["content_sha256"]))
        if row.get("names_sha256"):
            keys.add((row["embedding_model"], row["names_sha256"]))
    return keys


def collect_embeddings(cache: EmbeddingCache, referenced: set[tuple[str, str]], *, dry_run: bool,
                       limit: int) -> CleanupResult:
    """Delete at most ``limit`` cache entries whose key is not in ``referenced`` (``model/hash``
    in the result); ``dry_run``: name them only. Raises StoreError."""
    doomed: dict[str, list[str]] = {}
    found, more = 0, False
    for model, text_hash in cache.keys():
        if (model, text_hash) in referenced:
            continue
        if found >= limit:
            more = True
            break
        doomed.setdefault(model, []).append(text_hash)
        found += 1
    if not dry_run:
        for model, hashes in doomed.items():
            cache.delete_many(model, hashes)
    return CleanupResult("embeddings", [f"{m}/{h}" for m, hashes in doomed.items() for h in hashes],
                         dry_run=dry_run, more=more)


def eviction_result(rule: str, eviction: Eviction, *, dry_run: bool, limit: int) -> CleanupResult:
    """A cache's :class:`~indexing.content.Eviction` as the result of ``rule``."""
    return CleanupResult(rule, eviction.removed, eviction.bytes_freed, dry_run=dry_run,
                         more=len(eviction.removed) >= limit and eviction.size_bytes > eviction.max_bytes,
                         note=f"{eviction.size_bytes} of {eviction.max_bytes} bytes")


def compaction_result(compactions: Iterable[Compaction], *, dry_run: bool, more: bool) -> CleanupResult:
    """Collections' compactions as the result of the ``compaction`` rule: each removed table
    version as ``collection@vN``, each collection's versions and bytes in the note."""
    result = CleanupResult("compaction", dry_run=dry_run, more=more)
    notes = []
    for c in compactions:
        result.removed += [f"{c.collection}@v{v}" for v in c.removed_versions]
        result.bytes_freed += c.bytes_freed
        sizes = "" if c.bytes_before is None else f", {c.bytes_before} -> {c.bytes_after} bytes"
        notes.append(f"{c.collection}: {c.versions_before} -> {c.versions_after} versions{sizes}")
    result.note = "; ".join(notes)
    return result
