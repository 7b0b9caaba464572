"""The sync itself, in three steps, each one function a task calls (DESIGN.md, "Sync, step by step"):

1. :func:`prepare_sync` locks the repository, grants a fencing token and plans
   (:func:`plan_sync`: read the change source, filter, compare hashes with the state, decide
   ADD / UPDATE / DELETE / UNCHANGED per path), then builds the batch and commit messages;
2. :func:`embed_batch` reads, chunks, embeds (through the cache) and upserts one batch
   (:func:`index_batch`);
3. :func:`finish_sync` deletes tails and deleted files, records file state and the run
   (:func:`commit_sync`).

Writes go in before deletes; deletes only for files named deleted, or with
``--delete-missing``; a sync deleting more than the configured share needs ``--force``.
What the steps talk to comes from the caller as a :class:`SyncEnvironment`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from indexing import metrics
from indexing.changes import Change, ChangeKind
from indexing.chunking import chunk_text
from indexing.content import ContentEncoder, ContentReader
from indexing.embed_cache import EmbeddingCache
from indexing.embedders import Embedder
from indexing.errors import (
    DamagedStoreError, DependencyUnavailableError, FileIssue, MassDeleteError, ModelMismatchError, RefusedError,
    RepositoryError, StoreError, UsageError,
)
from indexing.ids import object_id, sha256_hex
from indexing.languages import language_of
from indexing.messages import (
    Action, BatchJob, CommitJob, FileResult, PlannedFile, RunContext, SyncRequest, SyncSummary,
)
from indexing.names import Definitions
from indexing.paths import printable
from indexing.scanner import FileFilter, decode
from indexing.state import CollectionMeta, FileState, RepoRecord, RunRecord, RunStatus, StateStore, utcnow
from indexing.store import VectorObject, VectorStore
from indexing.tree import SourceTree, WorkTree

_log = logging.getLogger("codeindex.sync")


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """The settings the planner obeys: sizes in bytes, ``delete_threshold`` a share (0..1)."""

    max_file_size: int
    batch_files: int
    batch_bytes: int
    delete_threshold: float


@dataclass(slots=True)
class Plan:
    """The planner's output: every path's decision, whether the commit may advance, and the
    fingerprint of the filter settings it was made under (recorded at the commit)."""

    files: list[PlannedFile]
    commit: str
    advance_commit: bool
    note: str = ""
    filter_fingerprint: str = ""

    def to_index(self) -> list[PlannedFile]:
        """The files that need reading and embedding (ADD and UPDATE)."""
        return [f for f in self.files if f.action in (Action.ADD, Action.UPDATE)]

    def batches(self, max_files: int, max_bytes: int) -> list[list[PlannedFile]]:
        """Split :meth:`to_index` into batches of at most ``max_files`` files and about ``max_bytes`` bytes."""
        out: list[list[PlannedFile]] = []
        current: list[PlannedFile] = []
        size = 0
        for f in self.to_index():
            if current and (len(current) >= max_files or size + f.size > max_bytes):
                out.append(current)
                current, size = [], 0
            current.append(f)
            size += f.size
        if current:
            out.append(current)
        return out


class SyncEnvironment(Protocol):
    """What the sync's steps need from the process that runs them; ``workers.runtime.Runtime``
    is the implementation, tests may give their own."""

    @property
    def state(self) -> StateStore: ...

    def readonly_state(self) -> StateStore: ...

    @property
    def embedder(self) -> Embedder: ...

    @property
    def embedding_cache(self) -> EmbeddingCache: ...

    def vector_store(self, collection: str) -> VectorStore: ...

    def repo_lock(self, repo_id: str) -> AbstractContextManager: ...

    def open_tree(self, request: SyncRequest) -> AbstractContextManager[SourceTree]:
        """The files ``request`` syncs: its work tree, or (a repository added by URL) the owner's
        clone fetched and read at the branch head. Called under the repository's lock."""
        ...

    def file_filter(self, tree: SourceTree | Path) -> FileFilter: ...

    def content_encoder(self, request: SyncRequest) -> ContentEncoder | None:
        """How the batches of ``request`` carry file content (schema v2); None for schema v1
        batches, which name paths that the reader reads from the shared work tree."""
        ...

    @property
    def content_reader(self) -> ContentReader: ...

    @property
    def limits(self) -> PlanLimits: ...

    @property
    def shard_id(self) -> str: ...


@dataclass(slots=True)
class PreparedSync:
    """What :func:`prepare_sync` made of a request: the plan, the run it started, and the
    messages of the embedding chord (``batch_jobs``, then ``commit_job``). ``summary`` is set
    instead when nothing is left to embed: a dry run, or a plan that was committed at once.
    ``superseded`` says why nothing was done: the run was re-issued as another."""

    plan: Plan | None
    run: RunRecord | None = None
    commit_job: CommitJob | None = None
    batch_jobs: list[BatchJob] = field(default_factory=list)
    summary: SyncSummary | None = None
    superseded: str = ""


def process_owner() -> str:
    """This process as a run's owner: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(owner: str) -> bool:
    """True when ``owner`` (``host:pid``) is a process of this host that no longer exists."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def abandon_runs(state: StateStore, which: Callable[[RunRecord], bool], why: str) -> list[str]:
    """Mark the running runs that ``which`` selects as abandoned, with ``why``; their ids."""
    marked = []
    for run in state.running_runs():
        if which(run):
            run.status, run.finished_at, run.message = RunStatus.ABANDONED, utcnow(), why
            state.finish_run(run)
            marked.append(run.id)
    return marked


def abandon_dead_runs(state: StateStore) -> list[str]:
    """Mark abandoned the runs still marked running whose process on this host is gone (a sync
    killed or interrupted): nothing of theirs was committed, and the next sync redoes their
    work. The embedded mode calls it before each sync; a fleet re-issues the runs of dead shards."""
    return abandon_runs(state, lambda run: _gone(run.owner), "abandoned: its process ended before it finished")


def prepare_sync(request: SyncRequest, env: SyncEnvironment, task_id: str = "") -> PreparedSync:
    """Start the run of ``request`` and plan it under the repository's lock (``task_id``: the
    plan task's, kept with the run so that a run whose worker died can be re-issued).

    A dry run plans on a read-only state and returns its summary, writing nothing. Otherwise the
    run is recorded first (so a worker that dies while planning leaves a run to re-issue), a
    fencing token is granted under the lock, the plan is made, and the embedding batches and
    the commit job returned; a plan with nothing to embed is committed here and its summary
    returned. A run already re-issued (``workers.reissue``) is not done again: ``superseded``.
    Raises :class:`ModelMismatchError`, :class:`MassDeleteError`, :class:`RepositoryError`,
    :class:`DamagedStoreError`, LockTimeoutError and StoreError (from the lock and the stores).
    """
    with ExitStack() as stack:
        return _prepare(request, env, task_id, stack)


def _prepare(request: SyncRequest, env: SyncEnvironment, task_id: str, stack: ExitStack) -> PreparedSync:
    """:func:`prepare_sync`, with the tree kept open on ``stack`` until the batches are encoded."""
    started = utcnow()
    if request.dry_run:
        state = env.readonly_state()
        check_model(state, request.collection, env.embedder)
        if request.url:  # the fetch writes the owner's clone: under the lock, as every git write there
            with env.repo_lock(request.repo_id):
                tree = stack.enter_context(env.open_tree(request))
        else:
            tree = stack.enter_context(env.open_tree(request))
        plan = plan_sync(request, state, env.file_filter(tree), env.limits, tree)
        return PreparedSync(plan, summary=summarize_plan(request, plan, seconds_since(started)))
    state = env.state
    existing = state.get_run(request.run_id)
    if existing is not None and existing.status is RunStatus.REISSUED:
        return PreparedSync(None, superseded=existing.message)
    run = RunRecord(id=request.run_id, repo_id=request.repo_id, trigger=request.trigger, started_at=started,
                    shard_id=env.shard_id, owner=process_owner(), task_id=task_id,
                    # json.dumps escapes the surrogates a non-UTF-8 path carries; pydantic's JSON refuses them
                    request=json.dumps(request.model_dump(mode="json")))
    state.start_run(run)
    try:
        with env.repo_lock(request.repo_id):
            check_model(state, request.collection, env.embedder)
            tree = stack.enter_context(env.open_tree(request))
            previous = state.get_repo(request.repo_id)
            fence = state.grant_fence(request.repo_id, request.root, request.collection)
            plan = plan_sync(request, state, env.file_filter(tree), env.limits, tree)
            # A full scan, and a sync that writes (it opens the store anyway), first make sure the
            # store can be read and agrees with the state; a no-op incremental sync (a hook's) does
            # not open the store at all, so it does not pay for the check.
            scanned = request.source == "all" or bool(plan.note)
            if not request.reindex and (scanned or any(f.action in _WRITES for f in plan.files)):
                check_store(env.vector_store(request.collection), state, request.repo_id, previous)
    except (RefusedError, UsageError) as exc:  # answers, not failures: the run ends with them
        run.status, run.finished_at, run.message = RunStatus.REFUSED, utcnow(), str(exc)[:1000]
        state.finish_run(run)
        raise
    batches = plan.batches(env.limits.batch_files, env.limits.batch_bytes)
    run.files_total, run.message = sum(len(b) for b in batches), plan.note
    state.start_run(run)
    context = RunContext(run_id=request.run_id, repo_id=request.repo_id, root=request.root,
                         collection=request.collection, fence=fence, commit=plan.commit)
    job = CommitJob(**context.model_dump(), advance_commit=plan.advance_commit, trigger=request.trigger,
                    started_at=started, files_total=run.files_total, filter_fingerprint=plan.filter_fingerprint,
                    note=plan.note, files=plan.files,
                    commit_time=tree.commit_time() if metrics.enabled() and plan.advance_commit else None,
                    verify_store=request.reindex or (previous is not None and previous.fence > previous.committed_fence))
    if not batches:
        return PreparedSync(plan, run, job, summary=finish_sync(job, [], env))
    record_model(state, request.collection, env.embedder)
    encoder = env.content_encoder(request)
    if encoder is None:
        return PreparedSync(plan, run, job, [BatchJob(**context.model_dump(), files=files) for files in batches])
    jobs = [BatchJob(**context.model_dump(), files=files, schema_version=2,
                     contents=encoder.encode(tree, files, env.limits.max_file_size)) for files in batches]
    _log.info("run %s of %s: content strategies %s", request.run_id, request.repo_id,
              " ".join(f"{k}={v}" for k, v in sorted(encoder.counts.items())))
    return PreparedSync(plan, run, job, jobs)


_WRITES = (Action.ADD, Action.UPDATE, Action.DELETE)


def check_store(store: VectorStore, state: StateStore, repo_id: str, previous: RepoRecord | None) -> None:
    """Refuse to sync onto a store that cannot be read, or that holds another number of the
    repository's objects than the state records after a sync that committed: the sync would
    call files unchanged that search cannot find.

    Counting the repository's objects reads the data of every fragment of the table, so a
    missing data file shows here. Raises StoreError (retried: it may pass) for a store that
    cannot be read, :class:`DamagedStoreError` for a count that differs; both name
    ``codeindex verify --repair``.
    """
    try:
        stored = store.count(repo_id)
    except DependencyUnavailableError:
        raise
    except StoreError as exc:
        raise StoreError(f"the vector store cannot be read ({exc}); if syncs keep failing so, "
                         "`codeindex verify --repair` indexes again what it lost") from exc
    if previous is not None and previous.fence == previous.committed_fence:
        expected = state.indexed_chunks(repo_id)
        if stored != expected:
            raise DamagedStoreError(
                f"the vector store holds {stored} objects of repository {repo_id} where the state records "
                f"{expected}: run `codeindex verify` to see which, and `codeindex verify --repair` to mend them")


def embed_batch(job: BatchJob, env: SyncEnvironment) -> list[FileResult]:
    """Index one batch (:func:`index_batch`) and count its files as done in the run.

    Then the store settles what its writes deferred and a long sync cannot leave for the end
    (``VectorStore.settle(final=False)``), with none of the batch's objects alive.
    A batch of a sync older than the repository's last commit (a batch a dead worker held,
    redelivered after its run was re-issued and committed) writes nothing and returns no
    results: its upserts could only add chunks the newer sync did not keep, and its commit
    is refused anyway.
    """
    repo = env.state.get_repo(job.repo_id)
    if repo is not None and repo.committed_fence > job.fence:
        return []
    store = env.vector_store(job.collection)
    results = index_batch(job, store, env.embedding_cache, env.embedder, env.limits.max_file_size, env.content_reader)
    store.settle(final=False)  # once the batch's objects are gone (index_batch returned)
    env.state.advance_run(job.run_id, len(job.files))
    return results


def settle_writes(context: RunContext, env: SyncEnvironment) -> None:
    """Bring the store of ``context``'s collection up to date after its run's batches
    (:meth:`VectorStore.settle`: LanceDB folds the rows still outside its full-text index), before
    the commit builds its per-path records. :func:`commit_sync` settles again after its deletes;
    that finds nothing due. In a 10,000-path embedded sync the commit's ``PlannedFile`` and
    ``FileResult`` models hold 24 MB, and the fold's transient came on top of them
    (docs/performance.md, D). Raises StoreError, as ``settle``."""
    env.vector_store(context.collection).settle()


def finish_sync(job: CommitJob, results: list[FileResult], env: SyncEnvironment) -> SyncSummary:
    """Commit the batches' ``results`` under the repository's lock (:func:`commit_sync`) and
    record the finished run; the run's summary.
    Raises :class:`StaleFenceError` when a newer sync of the repository committed first."""
    state = env.state
    with env.repo_lock(job.repo_id):
        summary = commit_sync(job, results, state, env.vector_store(job.collection))
    if job.commit_time is not None and job.advance_commit and summary.errors == 0:
        metrics.freshness(job.repo_id, job.commit_time, time.time())
    summary.seconds = seconds_since(job.started_at)
    record = run_record(summary, job.trigger, job.started_at, job.files_total)
    record.shard_id = env.shard_id
    state.finish_run(record)
    return summary


def seconds_since(iso: str) -> float:
    """Seconds from the ISO-8601 time ``iso`` (as :func:`~indexing.state.utcnow` writes it) to now."""
    return round((datetime.fromisoformat(utcnow()) - datetime.fromisoformat(iso)).total_seconds(), 3)


def check_model(state: StateStore, collection: str, embedder: Embedder) -> None:
    """Refuse to mix embedding models in one collection.

    Raises :class:`ModelMismatchError` when ``collection`` was built with another model id
    or dimension than ``embedder``'s.
    """
    meta = state.collection_meta(collection)
    if meta and (meta.embedding_model != embedder.model_id or meta.dimension != embedder.dimension):
        raise ModelMismatchError(
            f"collection {collection!r} holds vectors of {meta.embedding_model} ({meta.dimension}-d); "
            f"this sync uses {embedder.model_id} ({embedder.dimension}-d). Use the same embedder "
            "(CODEINDEX_EMBEDDER), or another collection (--collection / CODEINDEX_COLLECTION)"
        )


def record_model(state: StateStore, collection: str, embedder: Embedder) -> None:
    """Store the collection's model the first time anything is written to it."""
    state.set_collection_meta(CollectionMeta(collection, embedder.model_id, embedder.dimension, embedder.distance))


def _changes_for(request: SyncRequest, tree: SourceTree, last: str | None,
                 file_filter: FileFilter) -> tuple[Iterable[Change], str, bool, str]:
    """The change source of ``request`` as changes, the commit synced, whether it may advance, a note."""
    commit = tree.commit
    if request.source == "paths":
        return (Change(p, ChangeKind(k)) for p, k in request.changes), commit, False, ""
    if request.source == "detect":
        if not commit:
            raise RepositoryError(f"{tree.describe()} has no git history; --detect-changes needs a git repository "
                                  "with a commit")
        if last and tree.has_commit(last):
            return tree.changes_since(last), commit, True, ""
        note = ("no indexed commit yet: scanning the whole repository" if not last
                else f"last indexed commit {last[:12]} is gone from history: scanning the whole repository, "
                     "and dropping what is no longer there")
        return _full_scan(tree, file_filter), commit, True, note
    return _full_scan(tree, file_filter), commit, True, ""


def _full_scan(tree: SourceTree, file_filter: FileFilter, under: str = "") -> Iterator[Change]:
    return (Change(rel, ChangeKind.LISTED) for rel in tree.walk(file_filter, under))


def filter_fingerprint(file_filter: FileFilter, limits: PlanLimits) -> str:
    """The fingerprint of every setting that decides which files are indexed: the filter's
    patterns and the size limit (the ``.gitignore`` files are followed by their own changes)."""
    return f"{file_filter.fingerprint}-{limits.max_file_size}"


def plan_sync(request: SyncRequest, state: StateStore, file_filter: FileFilter, limits: PlanLimits,
              tree: SourceTree | None = None) -> Plan:
    """Decide what to do with every path the request's change source names, and with every
    indexed path whose inclusion may have changed: the index holds exactly the files the
    current rules include.

    Besides the named paths, the plan evaluates again: on a full scan, every indexed path still
    on disk (and, with ``--delete-missing``, every indexed path); the subtree of every
    ``.gitignore`` the source names; the whole repository when the filter settings changed since
    the last sync (:func:`filter_fingerprint`); and every indexed path that leads through a
    symlink, whose target may have changed unnamed. A ``--detect-changes`` whose last indexed
    commit is gone from history scans the whole repository as ``--all --delete-missing`` would, and
    so does any full scan of a complete tree (``SourceTree.complete``: a commit of a clone).
    An indexed path that is now refused (ignored, excluded, binary, oversized, undecodable, a
    symlink leading outside or nowhere) is deleted, with the reason.

    Returns a :class:`Plan` in source order, the re-evaluated paths after the named ones.
    Paths outside the root and unreadable files become ERROR entries; ignored, binary,
    oversized and missing files SKIP entries; a problem with one path never stops the others.
    Nothing here writes anywhere. ``tree`` holds the files (default: the work tree at
    ``request.root``; for a repository added by URL, the owner's clone at the fetched head).
    Raises :class:`MassDeleteError` when deletes exceed ``limits.delete_threshold`` of the
    repository's indexed files and ``request.force`` is false; :class:`RepositoryError`
    when ``--detect-changes`` has no git history to read.
    """
    tree = tree if tree is not None else WorkTree(Path(request.root))
    repo = state.get_repo(request.repo_id)
    changes, commit, advance, note = _changes_for(request, tree, repo.last_commit if repo else None, file_filter)
    fingerprint = filter_fingerprint(file_filter, limits)
    # One ordered mapping keeps source order for usable paths and refused ones alike; a
    # path named twice keeps its first place and its last kind.
    wanted: dict[str, ChangeKind | PlannedFile] = {}
    for n, change in enumerate(changes):
        try:
            wanted[tree.relative(change.path)] = change.kind
        except FileIssue as issue:
            wanted[f"\0{n}"] = PlannedFile(path=printable(change.path), action=Action.ERROR, reason=issue.reason)
    scanned = request.source == "all" or (request.source == "detect" and bool(note))  # a full scan already
    history_gone = scanned and request.source == "detect" and bool(repo and repo.last_commit)
    delete_missing = request.delete_missing or history_gone or (scanned and tree.complete)
    refilter = bool(repo and repo.filter_fingerprint and repo.filter_fingerprint != fingerprint)
    if refilter:
        note = "; ".join(filter(None, [note, "the filter settings changed: every file is evaluated again"]))
    for rel in _reevaluate(request, tree, state, file_filter, wanted, full=scanned or refilter, scanned=scanned,
                           delete_missing=delete_missing):
        wanted.setdefault(rel, ChangeKind.LISTED)

    known = state.file_states(request.repo_id, [rel for rel, kind in wanted.items() if isinstance(kind, ChangeKind)])
    planned = [
        kind if isinstance(kind, PlannedFile)
        else _plan_one(tree, rel, kind, known.get(rel), delete_missing, file_filter, limits.max_file_size,
                       request.reindex)
        for rel, kind in wanted.items()
    ]
    planned = [p for p in planned if p is not None]
    deleting = sum(1 for p in planned if p.action is Action.DELETE)
    if deleting and not request.force:
        indexed = len(state.indexed_paths(request.repo_id))
        if deleting > limits.delete_threshold * indexed:
            raise MassDeleteError.for_counts(deleting, indexed, limits.delete_threshold)
    return Plan(planned, commit, advance, note, fingerprint)


def _reevaluate(request: SyncRequest, tree: SourceTree, state: StateStore, file_filter: FileFilter,
                named: dict, *, full: bool, scanned: bool, delete_missing: bool) -> Iterator[str]:
    """The paths to evaluate besides the named ones (see :func:`plan_sync`). ``full``: the whole
    repository; ``scanned``: the change source is a full scan already."""
    yield from state.linked_paths(request.repo_id)
    ignore_dirs = sorted({rel.rpartition("/")[0] for rel in named
                          if not rel.startswith("\0") and rel.rpartition("/")[2] == ".gitignore"})
    if not full and not ignore_dirs:
        return
    indexed = state.indexed_paths(request.repo_id)
    if full and not scanned:  # an incremental source whose rules changed: scan as --all would
        yield from (c.path for c in _full_scan(tree, file_filter))
    for directory in ([] if full else ignore_dirs):
        yield from (c.path for c in _full_scan(tree, file_filter, directory))
    prefixes = None if full else tuple(f"{d}/" if d else "" for d in ignore_dirs)
    for rel in indexed:
        if prefixes is None or rel.startswith(prefixes):
            if delete_missing or _lexists(tree, rel):
                yield rel


def _lexists(tree: SourceTree, rel: str) -> bool:
    """As ``os.path.lexists``: False for any error."""
    try:
        return tree.lexists(rel)
    except OSError:
        return False


def _plan_one(tree: SourceTree, rel: str, kind: ChangeKind, known: FileState | None, delete_missing: bool,
              file_filter: FileFilter, max_size: int, reindex: bool = False) -> PlannedFile | None:
    """The decision for one path; None when there is nothing to say (deleted and never indexed).
    A problem of this path's own (a name too long, an unreadable directory) becomes its ERROR.
    ``reindex``: an unchanged file is written again (``verify --repair``)."""
    try:
        return _decide(tree, rel, kind, known, delete_missing, file_filter, max_size, reindex)
    except OSError as exc:
        return PlannedFile(path=rel, action=Action.ERROR, reason=f"unreadable: {exc.strerror or exc}",
                           old_chunks=known.chunk_count if known else 0)


def _refused(rel: str, reason: str, known: FileState | None, action: Action) -> PlannedFile:
    """A path whose content is not indexable: deleted from the index when it is indexed."""
    if known:
        return PlannedFile(path=rel, action=Action.DELETE, reason=reason, old_chunks=known.chunk_count,
                           size=known.size)
    return PlannedFile(path=rel, action=action, reason=reason)


def _decide(tree: SourceTree, rel: str, kind: ChangeKind, known: FileState | None, delete_missing: bool,
            file_filter: FileFilter, max_size: int, reindex: bool) -> PlannedFile | None:
    if not tree.lexists(rel):
        if known and (kind is ChangeKind.DELETED or delete_missing):
            return PlannedFile(path=rel, action=Action.DELETE, old_chunks=known.chunk_count, size=known.size)
        if kind is ChangeKind.DELETED:
            return None
        hint = "; pass --delete-missing to drop it from the index" if known else ""
        return PlannedFile(path=rel, action=Action.SKIP, reason=f"missing on disk{hint}")
    reason = file_filter.reason_to_skip(rel)
    if reason:
        return _refused(rel, reason, known, Action.SKIP)
    try:
        data = tree.read(rel, max_size)
        digest = sha256_hex(data)
        if known and known.sha256 == digest and not reindex:
            return PlannedFile(path=rel, action=Action.UNCHANGED, size=len(data), sha256=digest,
                               old_chunks=known.chunk_count)
        decode(data)
    except FileIssue as issue:
        if known and not issue.transient:
            return _refused(rel, issue.reason, known, Action.ERROR)
        action = Action.SKIP if issue.status == "skipped" else Action.ERROR
        return PlannedFile(path=rel, action=action, reason=issue.reason, old_chunks=known.chunk_count if known else 0)
    return PlannedFile(path=rel, action=Action.UPDATE if known else Action.ADD, size=len(data), sha256=digest,
                       old_chunks=known.chunk_count if known else 0)


def index_batch(job: BatchJob, store: VectorStore, cache: EmbeddingCache, embedder: Embedder,
                max_file_size: int, reader: ContentReader | None = None) -> list[FileResult]:
    """Read, chunk, embed and upsert the files of one batch; return one result per file.

    ``reader`` resolves each file's content (``indexing.content``: the work tree for schema v1,
    the message's content strategy for v2; default: a reader without object storage or clone
    cache). File problems (vanished, now binary, unreadable, a checksum mismatch) become failed
    results and do not stop the batch. Chunks whose text is in ``cache`` are not embedded again;
    nor are the names each chunk defines (its name vector: :mod:`indexing.names`), embedded in the
    same call and cached alike. All objects of the batch go to the store in one upsert carrying ``job.fence``.
    Raises :class:`StoreError` when the store, the cache or the content's source fails (the
    task retries the batch).
    """
    reader = reader or ContentReader()
    results: list[FileResult] = []
    pending: list[tuple[FileResult, list, list[str], list[str | None]]] = []
    name_texts: dict[str, str] = {}
    for planned in job.files:
        try:
            data, linked = reader.read(job, planned, max_file_size)
            text = decode(data)
        except FileIssue as issue:
            results.append(FileResult(path=planned.path, ok=False, reason=issue.reason, skipped=issue.status == "skipped"))
            continue
        language = language_of(planned.path)
        chunks = chunk_text(text.text, embedder.max_tokens, embedder.count_tokens, language)
        result = FileResult(path=planned.path, ok=True, sha256=sha256_hex(data), size=len(data),
                            chunk_count=len(chunks), encoding=text.encoding, language=language,
                            linked=linked)
        results.append(result)
        hashes = [sha256_hex(c.text.encode("utf-8", "surrogatepass")) for c in chunks]
        definitions = Definitions(text.text.split("\n"))
        names: list[str | None] = []
        for chunk in chunks:
            named = definitions.text(chunk.start_line, chunk.end_line)
            key = sha256_hex(named.encode("utf-8", "surrogatepass")) if named else None
            if key:
                name_texts[key] = named
            names.append(key)
        pending.append((result, chunks, hashes, names))

    wanted = list(dict.fromkeys([*(h for _, _, hashes, _ in pending for h in hashes), *name_texts]))
    vectors = cache.get_many(embedder.model_id, wanted)
    metrics.cache_lookups("embedding", len(vectors), len(wanted) - len(vectors))
    missing: dict[str, str] = {}
    for result, chunks, hashes, _ in pending:
        for chunk, h in zip(chunks, hashes):
            if h in vectors or h in missing:
                result.reused += 1
            else:
                missing[h] = chunk.text
                result.embedded += 1
    missing.update({h: t for h, t in name_texts.items() if h not in vectors and h not in missing})
    if missing:
        fresh = embedder.embed(list(missing.values()))
        new = dict(zip(missing.keys(), fresh))
        cache.put_many(embedder.model_id, new)
        vectors.update(new)
        if metrics.enabled():
            metrics.cache_size("embedding", cache.size_bytes())

    now = utcnow()
    objects = [
        VectorObject(
            id=object_id(job.collection, job.repo_id, result.path, chunk.index), repo=job.repo_id,
            path=result.path, chunk_index=chunk.index, start_line=chunk.start_line, end_line=chunk.end_line,
            content=chunk.text, language=result.language, content_sha256=h, commit=job.commit,
            indexed_at=now, embedding_model=embedder.model_id, fence=job.fence, vector=vectors[h],
            name_vector=vectors[n] if n else np.zeros(embedder.dimension, dtype=np.float32), names_sha256=n or "")
        for result, chunks, hashes, names in pending
        for chunk, h, n in zip(chunks, hashes, names)
    ]
    if objects:
        store.ensure_collection(embedder.dimension)
        store.upsert(objects)
    return results


def commit_sync(job: CommitJob, results: list[FileResult], state: StateStore, store: VectorStore) -> SyncSummary:
    """Finish a sync: delete shrunk files' tails and deleted files, record state and the run.

    ``results`` are the header tasks' file results (any order). The chunks to delete are the
    state's chunk counts beyond each file's new count; when ``job.verify_store`` (an earlier
    sync failed, maybe after upserts) they are asked of the store instead, so that chunks
    that sync left go too. A file whose indexing failed keeps its old state and its objects,
    so the next sync redoes exactly that file. The last indexed commit advances only
    when the source allows it and no file failed.
    Raises :class:`StaleFenceError` when a newer sync of the repository committed first.
    """
    by_path = {r.path: r for r in results}
    writes = (Action.ADD, Action.UPDATE, Action.DELETE)
    touched = [f for f in job.files if f.action in writes]
    if job.verify_store:
        stored = store.chunk_indexes(job.repo_id, [f.path for f in touched])
    else:
        stored = {f.path: range(f.old_chunks) for f in touched}
    stale_ids: list[str] = []
    upserts: list[FileState] = []
    deletes: list[str] = []
    summary = SyncSummary(run_id=job.run_id, repo_id=job.repo_id, collection=job.collection,
                          status=RunStatus.SUCCEEDED, commit=job.commit, message=job.note)
    now = utcnow()
    for entry in job.files:  # parsed for this commit alone: final actions are written in place
        keep = None
        if entry.action in (Action.ADD, Action.UPDATE):
            result = by_path.get(entry.path)
            if result is None or not result.ok:
                entry.action = Action.SKIP if result is not None and result.skipped else Action.ERROR
                entry.reason = result.reason if result else "no result from the embedding task"
            else:
                keep = result.chunk_count
                entry.size, entry.sha256 = result.size, result.sha256
                summary.chunks_embedded += result.embedded
                summary.chunks_reused += result.reused
                upserts.append(FileState(entry.path, result.sha256, result.size, result.chunk_count,
                                         result.encoding, result.language, job.fence, now, result.linked))
        elif entry.action is Action.DELETE:
            keep = 0
            deletes.append(entry.path)
        if keep is not None:
            stale_ids += [object_id(job.collection, job.repo_id, entry.path, i)
                          for i in stored.get(entry.path, ()) if i >= keep]
        _count(summary, entry)
    store.delete(stale_ids, job.fence)
    if touched:  # the batches may have deferred the full-text index's refresh (LanceDBStore.settle)
        store.settle()
    advance = job.commit if job.advance_commit and summary.errors == 0 else None
    state.commit_files(job.repo_id, job.fence, upserts, deletes, advance, job.filter_fingerprint or None)
    summary.files = job.files
    summary.status = RunStatus.PARTIAL if summary.errors else RunStatus.SUCCEEDED
    return summary


def _count(summary: SyncSummary, entry: PlannedFile) -> None:
    if entry.action is Action.ADD:
        summary.added += 1
        summary.bytes_added += entry.size
    elif entry.action is Action.UPDATE:
        summary.updated += 1
        summary.bytes_updated += entry.size
    elif entry.action is Action.DELETE:
        summary.deleted += 1
    elif entry.action is Action.UNCHANGED:
        summary.unchanged += 1
    elif entry.action is Action.SKIP:
        summary.skipped += 1
    else:
        summary.errors += 1


def summarize_plan(request: SyncRequest, plan: Plan, seconds: float) -> SyncSummary:
    """The summary of a plan that is not carried out (``--dry-run``), or needs no embedding."""
    summary = SyncSummary(run_id=request.run_id, repo_id=request.repo_id, collection=request.collection,
                          status=RunStatus.DRY_RUN if request.dry_run else RunStatus.SUCCEEDED, dry_run=request.dry_run,
                          commit=plan.commit, message=plan.note, seconds=seconds)
    for entry in plan.files:
        _count(summary, entry)
    summary.files = plan.files
    return summary


def run_record(summary: SyncSummary, trigger: str, started_at: str, total: int) -> RunRecord:
    """The sync-run row for a finished summary."""
    return RunRecord(
        id=summary.run_id, repo_id=summary.repo_id, trigger=trigger, status=summary.status,
        added=summary.added, updated=summary.updated, deleted=summary.deleted, unchanged=summary.unchanged,
        skipped=summary.skipped, errors=summary.errors, bytes=summary.bytes_added + summary.bytes_updated,
        files_total=total, files_done=total, started_at=started_at, finished_at=utcnow(), message=summary.message)
