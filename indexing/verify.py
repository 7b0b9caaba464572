"""Does the vector store hold what the state records? ``codeindex verify`` compares them, object
by object, and says what ``--repair`` must index again.

State and store can drift (data files lost or deleted, a store restored from another backup;
LangChain's users know the problem as langchain#39937): the state then calls files unchanged
that search cannot find. The check reads every object of each repository (its id, path, chunk
index and content), so it also proves that every data file of the store can be read.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from indexing.errors import DependencyUnavailableError, StoreError
from indexing.ids import object_id, sha256_hex
from indexing.messages import SyncRequest
from indexing.state import RepoStats, StateStore
from indexing.store import VectorStore


@dataclass(slots=True)
class RepoCheck:
    """One repository: what the state expects and what the store holds. Each problem maps a
    path to chunk indexes: ``missing`` (recorded, not stored), ``extra`` (stored, not recorded;
    the path may be unknown to the state), ``corrupt`` (stored content that does not match its
    hash, or an id that does not match its path and index), ``unnamed`` (an intact object whose
    name vector was never computed: written before name vectors existed, it ranks by its vector
    alone until its file is indexed again, which ``--repair`` does)."""

    repo_id: str
    files: int = 0
    expected: int = 0
    stored: int = 0
    missing: dict[str, list[int]] = field(default_factory=dict)
    extra: dict[str, list[int]] = field(default_factory=dict)
    corrupt: dict[str, list[int]] = field(default_factory=dict)
    unnamed: dict[str, list[int]] = field(default_factory=dict)
    orphan_ids: list[str] = field(default_factory=list)  # extra objects of paths the state does not know
    known_paths: set[str] = field(default_factory=set, repr=False)

    @property
    def ok(self) -> bool:
        """True when the store holds exactly the recorded objects, each intact and with its name vector."""
        return not (self.missing or self.extra or self.corrupt or self.unnamed)

    def paths_to_index(self) -> list[str]:
        """The recorded paths whose objects are missing, extra, corrupt or unnamed: index them again."""
        return sorted(p for p in {*self.missing, *self.extra, *self.corrupt, *self.unnamed} if p in self.known_paths)


@dataclass(slots=True)
class VerifyReport:
    """The check of one collection: ``readable`` is False when the store could not be read at
    all (``error`` says why), and then every repository of the collection is indexed again."""

    collection: str
    readable: bool = True
    error: str = ""
    repos: list[RepoCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the store can be read and every repository is exact."""
        return self.readable and all(r.ok for r in self.repos)


def verify_index(state: StateStore, store: VectorStore, collection: str, repo_ids: Iterable[str]) -> VerifyReport:
    """Compare the store's objects of each of ``repo_ids`` with the state's file records.

    Returns a :class:`VerifyReport`; a store that cannot be read is reported, not raised.
    Raises :class:`DependencyUnavailableError` when the store's circuit breaker is open (try
    again later) and StoreError when the state cannot be read.
    """
    report = VerifyReport(collection)
    for repo_id in repo_ids:
        check = RepoCheck(repo_id)
        expected: dict[str, tuple[str, int]] = {}
        for state_file in state.all_file_states(repo_id):
            check.files += 1
            check.known_paths.add(state_file.path)
            for index in range(state_file.chunk_count):
                expected[object_id(collection, repo_id, state_file.path, index)] = (state_file.path, index)
        check.expected = len(expected)
        seen: set[str] = set()
        try:
            for chunk in store.inventory(repo_id):
                check.stored += 1
                seen.add(chunk.id)
                if chunk.id not in expected:
                    check.extra.setdefault(chunk.path, []).append(chunk.chunk_index)
                    if chunk.path not in check.known_paths:
                        check.orphan_ids.append(chunk.id)
                elif (sha256_hex(chunk.content.encode("utf-8", "surrogatepass")) != chunk.content_sha256
                      or object_id(collection, repo_id, chunk.path, chunk.chunk_index) != chunk.id):
                    check.corrupt.setdefault(chunk.path, []).append(chunk.chunk_index)
                elif not chunk.named:
                    check.unnamed.setdefault(chunk.path, []).append(chunk.chunk_index)
        except DependencyUnavailableError:
            raise
        except StoreError as exc:
            report.readable, report.error = False, str(exc)
            return report
        for object_key, (path, index) in expected.items():
            if object_key not in seen:
                check.missing.setdefault(path, []).append(index)
        for problems in (check.missing, check.extra, check.corrupt, check.unnamed):
            for indexes in problems.values():
                indexes.sort()
        report.repos.append(check)
    return report


def repair_requests(report: VerifyReport, roots: Mapping[str, RepoStats]) -> list[SyncRequest]:
    """The syncs that make the index exact again: per repository with problems, a sync that
    indexes its problem files again (``reindex``: embedded and written even when unchanged,
    the store asked which chunks exist); when the store could not be read, a full ``reindex``
    of every repository of ``roots`` (repo id -> its record: a work tree's root, or a git URL
    and branch). Orphan objects are deleted by the caller first (:attr:`RepoCheck.orphan_ids`)."""
    def request(repo_id: str, source: str, paths: Sequence[str] = ()) -> SyncRequest:
        record = roots[repo_id]
        return SyncRequest(run_id=str(uuid.uuid4()), repo_id=repo_id, root=record.root, url=record.url,
                           branch=record.branch, collection=report.collection, source=source,
                           changes=[(p, "modified") for p in paths], force=True, reindex=True, trigger="repair")

    if not report.readable:
        return [request(repo_id, "all") for repo_id in sorted(roots)]
    return [request(r.repo_id, "paths", r.paths_to_index()) for r in report.repos
            if r.paths_to_index() and r.repo_id in roots]
