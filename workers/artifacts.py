"""Index artifacts over the runtime: push (pack a consistent snapshot and upload it), pull
(download, verify, check, install), list, promote, the behind/ahead answer of ``artifact
sync``, and retention. The tasks of ``tasks/artifact.py`` and the CLI call these.

Embedded mode: a pull builds a whole new index home beside the current one and switches it in
atomically (``indexing.install``). A fleet: a pull writes the snapshot into the shared state
and store on the repository's owner, under its lock and a new fencing token.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from indexing import metrics
from indexing.artifact_store import ArtifactRecord, ArtifactStore, RetentionPolicy
from indexing.artifacts import (ArtifactMeta, Snapshot, apply_delta, artifact_id, check_checksum, check_compatible,
                                check_size, delta, extract, members_of, read_meta, read_snapshot, snapshot_objects,
                                write_archive)
from indexing.errors import ArtifactError, IncompatibleArtifactError, RefusedError, StoreError, UsageError
from indexing.install import install_snapshot, other_repositories, recover, staging_dir, switch_home
from workers.runtime import Runtime

log = logging.getLogger("codeindex.artifacts")
#: Reads of a repository's index before a push gives up on a sync in flight (a second apart).
SNAPSHOT_TRIES = 30
GIT_TIMEOUT = 30


def artifact_store(rt: Runtime) -> ArtifactStore:
    """The artifact store: ``CODEINDEX_ARTIFACT_URI`` (a directory or ``s3://bucket/prefix``), else
    the object store. UsageError in a fleet without either."""
    uri = rt.settings.artifact_uri
    if uri is None:
        if rt.object_store is None:
            raise UsageError("no artifact store: set CODEINDEX_ARTIFACT_URI (a directory or s3://bucket/prefix)")
        return ArtifactStore(rt.object_store)
    from indexing.s3_objects import object_store_from_uri  # lazy: boto3 only for a configured store

    return ArtifactStore(object_store_from_uri(uri, **rt.s3_client_options()))


def retention_policy(rt: Runtime) -> RetentionPolicy:
    """Seed 000's retention from the settings."""
    s = rt.settings
    return RetentionPolicy(pr_days=s.artifact_pr_days, main_days=s.artifact_main_days,
                           promoted_days=s.artifact_promoted_days, main_branches=tuple(s.artifact_main_branches))


def take_snapshot(rt: Runtime, repo_id: str, *, with_embeddings: bool = False) -> Snapshot:
    """A consistent snapshot of ``repo_id``'s committed index: its state read under the
    repository's lock, and the store's objects checked against it (a sync in flight between its
    plan and its commit makes the read wait and try again, up to :data:`SNAPSHOT_TRIES` times in
    a fleet). UsageError for a repository never indexed or indexed without a commit; StoreError
    when the store disagrees with the state."""
    collection = rt.settings.collection
    tries = 1 if rt.settings.eager else SNAPSHOT_TRIES
    for attempt in range(tries):
        with rt.repo_lock(repo_id):
            record = rt.state.get_repo(repo_id)
            if record is None or record.committed_fence == 0:
                raise UsageError(f"repository {repo_id} has no index to pack: sync it first")
            if not record.last_commit:
                raise UsageError(f"the index of {repo_id} is at no commit (only listed paths were synced): "
                                 "run codeindex sync --all or --detect-changes, then push")
            meta = rt.state.collection_meta(collection)
            files = {f.path: f for f in rt.state.all_file_states(repo_id)}
            objects = snapshot_objects(rt.vector_store(collection).objects(repo_id), files, record.committed_fence)
        if objects is not None and meta is not None:
            break
        if attempt + 1 < tries:
            time.sleep(1.0)
    else:
        raise StoreError(f"the vector store does not hold exactly what the state records for {repo_id} "
                         "(a sync still in flight, or damage: codeindex verify says which)")
    embeddings = {}
    if with_embeddings:
        hashes = list(dict.fromkeys(o.content_sha256 for o in objects.values()))
        embeddings = rt.embedding_cache.get_many(meta.embedding_model, hashes)
    return Snapshot(repo_id=repo_id, commit=record.last_commit, collection=meta, url=record.url,
                    branch=record.branch, filter_fingerprint=record.filter_fingerprint, files=files,
                    objects=objects, embeddings=embeddings)


def push_artifact(rt: Runtime, repo_id: str, *, branch: str, as_delta: bool = False,
                  with_embeddings: bool = False) -> dict:
    """Pack ``repo_id``'s index (a delta of the newest artifact of ``branch`` with ``as_delta``)
    and upload it; its record as a dict. ArtifactError when it exceeds the size limit (nothing
    is uploaded); UsageError for a delta without a base."""
    s = rt.settings
    store = artifact_store(rt)
    started = time.monotonic()
    snap = take_snapshot(rt, repo_id, with_embeddings=with_embeddings)
    body, base = snap, None
    with tempfile.TemporaryDirectory(prefix="codeindex-artifact-") as tmp:
        if as_delta:
            base = store.latest(repo_id, [branch])
            if base is None:
                raise UsageError(f"no artifact of {repo_id} on {branch} to base a delta on: push a full one first")
            base_snap, _ = materialize(rt, store, base, Path(tmp))
            body = delta(base_snap, snap)
        created = datetime.now(timezone.utc)
        meta = ArtifactMeta(
            id=artifact_id(created, repo_id, branch, snap.commit),
            kind="delta" if base else "full", base=base.id if base else None, repo=repo_id, branch=branch,
            commit=snap.commit, collection=s.collection, embedding_model=snap.collection.embedding_model,
            model_dimension=snap.collection.dimension, distance_metric=snap.collection.distance,
            created_at=created.isoformat(timespec="seconds"), index_stats=snap.stats(),
            with_embeddings=with_embeddings)
        archive = Path(tmp) / "artifact"
        sha256 = write_archive(members_of(meta, body), archive, compression=s.artifact_compression,
                               zstd_level=s.artifact_zstd_level)
        try:
            check_size(archive.stat().st_size, s.artifact_max_bytes)
        except ArtifactError:
            metrics.artifact_op("push", "refused")
            raise
        record = store.put(meta, archive, sha256, s.artifact_compression)
    metrics.artifact_op("push", "ok", size=record.size, seconds=time.monotonic() - started)
    log.info("artifact %s pushed: %d bytes, sha256 %s", record.id, record.size, record.sha256)
    return {**record.as_dict(), "uri": store.uri(record)}


def _fetch_checked(rt: Runtime, store: ArtifactStore, record: ArtifactRecord, tmp: Path) -> tuple[ArtifactMeta, dict]:
    """Download ``record``'s archive into ``tmp``, check its size and SHA-256, then extract and
    check its members; the metadata and the extracted members."""
    check_size(record.size, rt.settings.artifact_max_bytes)
    archive = tmp / f"{record.id}.archive"
    store.download(record, archive)
    return check_archive(rt, archive, record.sha256, tmp / record.id)


def check_archive(rt: Runtime, archive: Path, sha256: str | None, into: Path) -> tuple[ArtifactMeta, dict]:
    """Check ``archive`` (its size, its SHA-256 when ``sha256`` is given, each member, the
    manifest) and extract it into ``into``; the metadata and the extracted members.
    ArtifactError when anything fails."""
    check_size(archive.stat().st_size, rt.settings.artifact_max_bytes)
    if sha256 is not None:
        check_checksum(archive, sha256)
    into.mkdir()
    members = extract(archive, into, max_bytes=rt.settings.artifact_max_bytes)
    return read_meta(members), members


def check_fits(rt: Runtime, meta: ArtifactMeta) -> None:
    """IncompatibleArtifactError unless ``meta`` fits this index's settings and collection."""
    embedder = rt.embedder
    existing = rt.readonly_state().collection_meta(rt.settings.collection)
    check_compatible(meta, model_id=embedder.model_id, dimension=embedder.dimension, distance=embedder.distance,
                     existing=existing)
    if meta.collection != rt.settings.collection:
        raise IncompatibleArtifactError(f"artifact {meta.id} holds collection {meta.collection}, this index uses "
                                        f"{rt.settings.collection} (its object ids would differ): set "
                                        f"CODEINDEX_COLLECTION={meta.collection}")


def materialize(rt: Runtime, store: ArtifactStore, record: ArtifactRecord, tmp: Path) -> tuple[Snapshot, ArtifactMeta]:
    """The index ``record`` describes: its chain from the full artifact on, each downloaded,
    checked (:func:`_fetch_checked`, :func:`check_fits`) and applied in turn. ArtifactError when
    a member, a checksum or the result's counts do not match the records."""
    snap, meta = None, None
    for link in store.chain(record):
        meta, members = _fetch_checked(rt, store, link, tmp)
        if (meta.id, meta.repo, meta.base) != (link.id, link.repo, link.base):
            raise ArtifactError(f"refused: the archive of {link.id} holds artifact {meta.id} of {meta.repo}")
        check_fits(rt, meta)
        part = read_snapshot(members, meta)
        snap = part if snap is None else apply_delta(snap, part)
        shutil.rmtree(tmp / link.id, ignore_errors=True)
    assert snap is not None and meta is not None  # a chain has at least its own record
    if snap.stats() != meta.index_stats:
        raise ArtifactError(f"refused: artifact {record.id} should hold {meta.index_stats}, its chain gives "
                            f"{snap.stats()}")
    return snap, meta


def resolve(store: ArtifactStore, rt: Runtime, ref: str | None, repo_id: str, branch: str | None) -> ArtifactRecord:
    """The artifact ``ref`` names, or (``ref`` None) the newest of ``repo_id`` on ``branch``, else
    on a main branch. ArtifactError when there is none."""
    if ref:
        return store.get(ref)
    branches = list(dict.fromkeys([b for b in (branch,) if b] + list(rt.settings.artifact_main_branches)))
    record = store.latest(repo_id, branches)
    if record is None:
        raise ArtifactError(f"no artifact of {repo_id} (branch {', '.join(branches)}) in {store.describe()}")
    return record


def relation(root: Path | None, local: str | None, artifact: str) -> str:
    """Where a local index at commit ``local`` stands against an artifact at ``artifact``:
    ``equal``, ``behind`` (the artifact's commit descends from the local one, or there is no
    local index), ``ahead``, ``diverged``, or ``unknown`` (git in ``root`` does not know one of them)."""
    if not local:
        return "behind"
    if local == artifact:
        return "equal"
    if root is None:
        return "unknown"

    def ancestor(a: str, b: str) -> bool | None:
        try:
            done = subprocess.run(["git", "-C", str(root), "merge-base", "--is-ancestor", a, b],
                                  capture_output=True, timeout=GIT_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return {0: True, 1: False}.get(done.returncode)

    forward, backward = ancestor(local, artifact), ancestor(artifact, local)
    if forward is None or backward is None:
        return "unknown"
    return "behind" if forward else "ahead" if backward else "diverged"


def pull_artifact(rt: Runtime, ref: str | None, *, repo_id: str, branch: str | None, root: Path | None,
                  force: bool = False) -> dict:
    """Download, check and install the artifact ``ref`` (or the newest; :func:`resolve`) for
    ``repo_id``. Embedded mode: a new home beside ``rt.home``, switched in atomically; the local
    index must not be ahead of or diverged from the artifact (``force`` allows it) and the home
    may hold no other repository. A fleet: written into the shared state and store under the
    repository's lock. Returns what was installed. Nothing changes when anything is refused."""
    store = artifact_store(rt)
    started = time.monotonic()
    record = resolve(store, rt, ref, repo_id, branch)
    try:
        with tempfile.TemporaryDirectory(prefix="codeindex-artifact-") as tmp:
            snap, meta = materialize(rt, store, record, Path(tmp))
            if rt.settings.eager:
                _install_embedded(rt, snap, root, force)
            else:
                with rt.repo_lock(snap.repo_id):
                    known = rt.state.get_repo(snap.repo_id)
                    install_snapshot(snap, rt.state, rt.vector_store(rt.settings.collection),
                                     root=known.root if known else "", collection=rt.settings.collection)
                    rt.embedding_cache.put_many(meta.embedding_model, snap.embeddings)
    except (ArtifactError, RefusedError):
        metrics.artifact_op("pull", "refused")
        raise
    seconds = time.monotonic() - started
    metrics.artifact_op("pull", "ok", size=record.size, seconds=seconds)
    return {"id": record.id, "repo": snap.repo_id, "branch": record.branch, "commit": snap.commit,
            "kind": record.kind, "files": len(snap.files), "chunks": len(snap.objects),
            "embeddings": len(snap.embeddings), "seconds": round(seconds, 3)}


def _install_embedded(rt: Runtime, snap: Snapshot, root: Path | None, force: bool) -> None:
    """Build the snapshot's index home beside ``rt.home``, check it, switch it in; then add the
    artifact's embedding-cache entries to the (carried-over) cache."""
    from indexing.embed_cache import SQLiteEmbeddingCache  # lazy: the embedded mode's stores only
    from indexing.lance_store import LanceDBStore  # lazy: likewise
    from indexing.state import SQLiteStateStore  # lazy: likewise

    home, collection = rt.home, rt.settings.collection
    recover(home)
    local = rt.readonly_state()
    others = other_repositories(local, snap.repo_id)
    if others:
        raise UsageError(f"the index home {home} also holds {', '.join(others)}: pull into a home of its own "
                         "(CODEINDEX_HOME)")
    mine = local.get_repo(snap.repo_id)
    where = relation(root, mine.last_commit if mine else None, snap.commit)
    if where not in ("behind", "equal") and not force:
        raise RefusedError(f"the local index of {snap.repo_id} is {where} the artifact's commit {snap.commit[:12]} "
                           f"(local {mine.last_commit[:12]}): pulling would replace newer work; --force to do it")
    with rt.repo_lock(snap.repo_id):
        staged = staging_dir(home)
        try:
            state = SQLiteStateStore(staged / "state.sqlite")
            install_snapshot(snap, state, LanceDBStore(staged / "lancedb", collection),
                             root=str(root or ""), collection=collection)
            counted = LanceDBStore(staged / "lancedb", collection).count(snap.repo_id)
            if not counted == state.indexed_chunks(snap.repo_id) == len(snap.objects):
                raise StoreError(f"the staged index holds {counted} objects, the artifact {len(snap.objects)}")
            switch_home(home, staged)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
    if snap.embeddings:
        SQLiteEmbeddingCache(home / "embeddings.sqlite").put_many(snap.collection.embedding_model, snap.embeddings)


def _sidecar_checksum(side: Path) -> str:
    """The hex SHA-256 a ``FILE.sha256`` holds (``sha256sum``'s format: the digest first).
    ArtifactError when it holds none."""
    words = side.read_text(errors="replace").split()
    if not words or not re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
        raise ArtifactError(f"{side} holds no SHA-256 (sha256sum's format: the hex digest, then the name)")
    return words[0]


def verify_artifact(rt: Runtime, ref: str) -> dict:
    """Check an artifact without installing it: ``ref`` a file (its SHA-256 from ``FILE.sha256``
    when present) or an id in the store (and its chain). Returns the metadata and the checks
    passed; ArtifactError or IncompatibleArtifactError for the first that fails."""
    with tempfile.TemporaryDirectory(prefix="codeindex-artifact-") as tmp:
        path = Path(ref)
        if path.is_file():
            side = path.with_name(path.name + ".sha256")
            expected = _sidecar_checksum(side) if side.is_file() else None
            meta, members = check_archive(rt, path, expected, Path(tmp) / "members")
            check_fits(rt, meta)
            snap = read_snapshot(members, meta)
            if meta.kind == "full" and snap.stats() != meta.index_stats:
                raise ArtifactError(f"refused: {meta.index_stats} recorded, {snap.stats()} packed")
            checks = ["size", "members", "manifest", "metadata", "compatibility"] + (["sha256"] if expected else [])
        else:
            store = artifact_store(rt)
            _, meta = materialize(rt, store, store.get(ref), Path(tmp))
            checks = ["size", "sha256", "members", "manifest", "metadata", "compatibility", "chain"]
    return {"id": meta.id, "repo": meta.repo, "branch": meta.branch, "commit": meta.commit, "kind": meta.kind,
            "embedding_model": meta.embedding_model, "index_stats": meta.index_stats, "checks": checks, "ok": True}


def artifact_status(rt: Runtime, repo_id: str, branch: str | None, root: Path | None) -> dict:
    """``artifact sync``: the local index of ``repo_id`` against the newest artifact."""
    store = artifact_store(rt)
    mine = rt.readonly_state().get_repo(repo_id)
    local = mine.last_commit if mine else None
    try:
        record = resolve(store, rt, None, repo_id, branch)
    except ArtifactError:
        return {"repo": repo_id, "local_commit": local, "artifact": None, "status": "no-artifact"}
    return {"repo": repo_id, "local_commit": local, "artifact": record.id, "artifact_commit": record.commit,
            "status": relation(root, local, record.commit)}


def prune_artifacts(rt: Runtime, *, limit: int, dry_run: bool = False, now: datetime | None = None) -> list[str]:
    """Artifact retention: remove (or with ``dry_run`` list) at most ``limit`` artifacts past
    their retention (:class:`~indexing.artifact_store.RetentionPolicy`); their ids."""
    return artifact_store(rt).prune(retention_policy(rt), now or datetime.now(timezone.utc), limit, dry_run=dry_run)
