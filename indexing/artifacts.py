"""Index artifacts (seed 000): one repository's index packed into one archive that another
machine installs instead of re-indexing.

An archive is a tar stream, compressed with zstd (multi-threaded; the default) or gzip level 9
(the seed's tar.gz), holding exactly these members:

- ``artifact-metadata.json``: the seed's fields (``embedding_model``, ``model_dimension``,
  ``distance_metric``, ``created_at``, ``commit``, ``index_stats``) plus the artifact's id,
  kind (``full`` or ``delta`` and its ``base``), repository, branch, collection,
  ``schema_version`` (:data:`SCHEMA_VERSION`) and ``chunker_version``;
- ``manifest.json``: each other member's size and SHA-256;
- ``state.json``: the repository's record and its files' state (a delta: the files changed
  and the paths deleted since its base);
- ``vectors.arrow``: the repository's objects with their vectors and name vectors (Arrow IPC;
  a delta: the objects changed and the ids deleted; an artifact without the ``name_vector``
  column, packed before name vectors existed, installs with none);
- ``embeddings.arrow`` (optional): the embedding-cache entries of those objects.

Reading fails closed (:func:`open_archive`): the archive's SHA-256 is checked before anything
is extracted, a member that is not a plain file of the list above (an absolute path, ``..``, a
link, a device) is refused, each member is written by this module (never by ``tarfile``'s
extraction) and checked against the manifest. :func:`check_compatible` refuses another model,
dimension, distance, a newer schema or another chunker.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from indexing.chunking import CHUNKER_VERSION
from indexing.errors import ArtifactError, IncompatibleArtifactError
from indexing.state import CollectionMeta, FileState
from indexing.store import VectorObject, vector_array, vector_list

#: The artifact format this code writes and the newest it reads.
SCHEMA_VERSION = 1
FORMAT = "codeindex-index-artifact"
METADATA, MANIFEST, STATE, VECTORS, EMBEDDINGS = (
    "artifact-metadata.json", "manifest.json", "state.json", "vectors.arrow", "embeddings.arrow")
MEMBERS = (METADATA, MANIFEST, STATE, VECTORS, EMBEDDINGS)
_ZSTD_MAGIC, _GZIP_MAGIC = b"\x28\xb5\x2f\xfd", b"\x1f\x8b"
_CHUNK = 1024 * 1024
#: An archive unpacks to at most this many times its size limit (a decompression bomb stops there).
EXPANSION_LIMIT = 20
_VECTOR_FIELDS = tuple(f.name for f in fields(VectorObject) if f.name not in ("vector", "name_vector"))
_ID_PART = re.compile(r"[^A-Za-z0-9._]+")


@dataclass(frozen=True, slots=True)
class ArtifactMeta:
    """``artifact-metadata.json``: seed 000's compatibility metadata and what names the artifact.

    ``kind`` is ``full`` or ``delta`` (``base``: the id it applies to); ``created_at`` ISO 8601
    UTC; ``index_stats``: ``{"files": n, "chunks": n}`` of the whole index at ``commit``
    (a delta's too, after applying it).
    """

    id: str
    kind: str
    base: str | None
    repo: str
    branch: str
    commit: str
    collection: str
    embedding_model: str
    model_dimension: int
    distance_metric: str
    created_at: str
    index_stats: dict[str, int]
    schema_version: int = SCHEMA_VERSION
    chunker_version: int = CHUNKER_VERSION
    with_embeddings: bool = False
    format: str = FORMAT

    @classmethod
    def from_json(cls, data: bytes) -> ArtifactMeta:
        """Parse the member; ArtifactError for anything but an object with the fields."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} (format {doc.get('format')!r})" if isinstance(doc, dict)
                                 else "not a JSON object")
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in doc.items() if k in known})
        except (ValueError, TypeError) as exc:
            raise ArtifactError(f"{METADATA}: {exc}") from None


@dataclass(slots=True)
class Snapshot:
    """One repository's index as an artifact carries it: the repository's record, its files'
    state and its objects, at ``commit``. A delta's ``deleted_paths`` and ``deleted_ids`` are
    what to remove from its base; a full snapshot's are empty."""

    repo_id: str
    commit: str
    collection: CollectionMeta
    url: str | None
    branch: str | None
    filter_fingerprint: str | None
    files: dict[str, FileState]
    objects: dict[str, VectorObject]
    deleted_paths: list[str] = field(default_factory=list)
    deleted_ids: list[str] = field(default_factory=list)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    def stats(self) -> dict[str, int]:
        """``{"files": n, "chunks": n}`` as the metadata records them."""
        return {"files": len(self.files), "chunks": len(self.objects)}


def artifact_id(created: datetime, repo: str, branch: str, commit: str) -> str:
    """An id that sorts by creation time and names the repository, branch and commit:
    ``20261206T130102123456Z.flask.main.0123456789ab`` (other characters become ``_``)."""
    def part(value: str) -> str:
        return _ID_PART.sub("_", value).strip("_.") or "_"

    return f"{created.astimezone(timezone.utc):%Y%m%dT%H%M%S%fZ}.{part(repo)}.{part(branch)}.{commit[:12]}"


def _row_key(obj: VectorObject) -> tuple:
    """What makes two objects the same for a delta: every property but the fence (a fencing
    token is local to the index that granted it) and the vector (it follows the content)."""
    return tuple(getattr(obj, n) for n in _VECTOR_FIELDS if n != "fence")


def _file_key(state: FileState) -> tuple:
    return tuple(getattr(state, f.name) for f in fields(FileState) if f.name != "fence")


def delta(base: Snapshot, current: Snapshot) -> Snapshot:
    """What turns ``base`` into ``current``: the files and objects added or changed, and the
    paths and ids removed (``apply_delta(base, delta(base, current))`` equals ``current``)."""
    files = {p: s for p, s in current.files.items() if p not in base.files or _file_key(base.files[p]) != _file_key(s)}
    objects = {i: o for i, o in current.objects.items()
               if i not in base.objects or _row_key(base.objects[i]) != _row_key(o)}
    embeddings = {h: v for h, v in current.embeddings.items() if h not in base.embeddings}
    return replace(current, files=files, objects=objects, embeddings=embeddings,
                   deleted_paths=sorted(set(base.files) - set(current.files)),
                   deleted_ids=sorted(set(base.objects) - set(current.objects)))


def apply_delta(base: Snapshot, change: Snapshot) -> Snapshot:
    """``base`` with ``change`` (a delta of it) applied: a new snapshot; ``base`` is unchanged."""
    files = {p: s for p, s in base.files.items() if p not in set(change.deleted_paths)}
    files.update(change.files)
    gone = set(change.deleted_ids)
    objects = {i: o for i, o in base.objects.items() if i not in gone}
    objects.update(change.objects)
    return replace(change, files=files, objects=objects, deleted_paths=[], deleted_ids=[],
                   embeddings={**base.embeddings, **change.embeddings})


# Writing


def _state_document(snap: Snapshot) -> bytes:
    return json.dumps({
        "repo_id": snap.repo_id, "commit": snap.commit, "collection": asdict(snap.collection), "url": snap.url,
        "branch": snap.branch, "filter_fingerprint": snap.filter_fingerprint,
        "files": [asdict(s) for _, s in sorted(snap.files.items())],
        "deleted_paths": snap.deleted_paths, "deleted_ids": snap.deleted_ids,
    }, sort_keys=True).encode()


def _arrow_bytes(table) -> bytes:
    import pyarrow as pa  # lazy: with the artifact commands only

    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _vectors_table(objects: Sequence[VectorObject], dimension: int):
    import pyarrow as pa  # lazy: see _arrow_bytes

    columns: dict[str, Any] = {n: [getattr(o, n) for o in objects] for n in _VECTOR_FIELDS}
    columns["vector"] = vector_array([o.vector for o in objects], dimension)
    columns["name_vector"] = vector_array([o.name_vector for o in objects], dimension)
    return pa.table(columns)


def _embeddings_table(model: str, embeddings: dict[str, np.ndarray], dimension: int):
    import pyarrow as pa  # lazy: see _arrow_bytes

    hashes = sorted(embeddings)
    return pa.table({"model": [model] * len(hashes), "text_sha256": hashes,
                     "vector": vector_array([embeddings[h] for h in hashes], dimension)})


def members_of(meta: ArtifactMeta, snap: Snapshot) -> dict[str, bytes]:
    """The archive's members (name -> bytes), manifest included, for ``snap`` described by ``meta``."""
    dim = meta.model_dimension
    body = {STATE: _state_document(snap),
            VECTORS: _arrow_bytes(_vectors_table([snap.objects[i] for i in sorted(snap.objects)], dim)),
            METADATA: json.dumps(asdict(meta), sort_keys=True, indent=2).encode()}
    if meta.with_embeddings:
        body[EMBEDDINGS] = _arrow_bytes(_embeddings_table(meta.embedding_model, snap.embeddings, dim))
    manifest = {"members": {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                            for name, data in sorted(body.items())}}
    return {**body, MANIFEST: json.dumps(manifest, sort_keys=True, indent=2).encode()}


def write_archive(members: dict[str, bytes], path: Path, *, compression: str, zstd_level: int = 9) -> str:
    """Write ``members`` as a tar archive at ``path``, compressed with ``compression`` (``zstd``
    with ``zstd_level`` on every core, or ``tar.gz``: gzip level 9). Returns the archive's hex
    SHA-256. Members are plain files with mode 0644 and a fixed owner and time, in ``MEMBERS`` order."""
    with open(path, "wb") as raw:
        if compression == "zstd":
            import zstandard  # lazy: only when packing or reading an artifact

            compressor = zstandard.ZstdCompressor(level=zstd_level, threads=-1, write_checksum=True)
            with compressor.stream_writer(raw, closefd=False) as out:
                _write_tar(members, out, "w|")
        elif compression == "tar.gz":
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=9) as tar:
                _add_members(tar, members)
        else:
            raise ArtifactError(f"unknown compression {compression!r} (zstd or tar.gz)")
    return sha256_of(path)


def _write_tar(members: dict[str, bytes], out: IO[bytes], mode: str) -> None:
    with tarfile.open(fileobj=out, mode=mode) as tar:
        _add_members(tar, members)


def _add_members(tar: tarfile.TarFile, members: dict[str, bytes]) -> None:
    for name in sorted(members, key=MEMBERS.index):
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(members[name]), 0o644, 0
        tar.addfile(info, io.BytesIO(members[name]))


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# Reading


def _unsafe(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` may not be extracted, or None. Only plain files named by :data:`MEMBERS`
    at the archive's top level pass (tarfile's own ``data`` filter would allow more)."""
    name = member.name
    pure = PurePosixPath(name)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or pure.is_absolute():
        return f"member {name!r} has an absolute path"
    if ".." in pure.parts:
        return f"member {name!r} leads outside the archive (..)"
    if member.issym() or member.islnk():
        return f"member {name!r} is a link (to {member.linkname!r})"
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        return f"member {name!r} is a device or FIFO"
    if not member.isfile():
        return f"member {name!r} is not a regular file"
    if name not in MEMBERS:
        return f"member {name!r} is not part of an index artifact"
    return None


def _decompressed(raw: IO[bytes]) -> tuple[IO[bytes], str]:
    head = raw.read(4)
    raw.seek(0)
    if head.startswith(_ZSTD_MAGIC):
        import zstandard  # lazy: see write_archive

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True), "zstd"
    if head.startswith(_GZIP_MAGIC):
        return raw, "tar.gz"
    raise ArtifactError("not an index artifact: neither zstd nor gzip data")


def extract(archive: Path, into: Path, *, max_bytes: int) -> dict[str, Path]:
    """Extract ``archive``'s members into the empty directory ``into`` after checking each
    (:func:`_unsafe`), and check them against the manifest. Returns name -> extracted path.

    Raises ArtifactError for an unsafe, unknown, repeated or oversized member, unpacked data
    beyond ``max_bytes`` x :data:`EXPANSION_LIMIT`, a manifest that does not match, or an archive
    that cannot be read. Files are created exclusively (``O_EXCL``) inside ``into`` only.
    """
    out: dict[str, Path] = {}
    total = 0
    try:
        with open(archive, "rb") as raw:
            stream, compression = _decompressed(raw)
            mode = "r|" if compression == "zstd" else "r|gz"
            with tarfile.open(fileobj=stream, mode=mode) as tar:
                for member in tar:
                    if (why := _unsafe(member)) is not None:
                        raise ArtifactError(f"refused: {why}")
                    if member.name in out:
                        raise ArtifactError(f"refused: member {member.name!r} appears twice")
                    total += member.size
                    if total > max_bytes * EXPANSION_LIMIT:
                        raise ArtifactError(f"refused: the archive unpacks to more than {EXPANSION_LIMIT}x "
                                            f"the artifact size limit ({max_bytes} bytes)")
                    target = into / member.name
                    source = tar.extractfile(member)
                    with open(target, "xb") as fh:  # never follows or replaces anything
                        while chunk := source.read(_CHUNK):
                            fh.write(chunk)
                    out[member.name] = target
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArtifactError(f"cannot read the artifact archive: {exc}") from None
    except Exception as exc:  # zstandard.ZstdError: a truncated or corrupt frame
        if type(exc).__name__ != "ZstdError":
            raise
        raise ArtifactError(f"cannot decompress the artifact archive: {exc}") from None
    _check_manifest(out)
    return out


def _check_manifest(members: dict[str, Path]) -> None:
    for required in (METADATA, MANIFEST, STATE, VECTORS):
        if required not in members:
            raise ArtifactError(f"refused: the artifact has no {required}")
    try:
        listed = json.loads(members[MANIFEST].read_bytes())["members"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"refused: {MANIFEST} is malformed ({exc})") from None
    present = set(members) - {MANIFEST}
    if set(listed) != present:
        raise ArtifactError(f"refused: the manifest lists {sorted(listed)}, the archive holds {sorted(present)}")
    for name, entry in listed.items():
        if sha256_of(members[name]) != entry.get("sha256"):
            raise ArtifactError(f"refused: {name} does not match its SHA-256 in the manifest")


def check_checksum(archive: Path, expected: str) -> None:
    """Raise ArtifactError unless ``archive``'s SHA-256 is ``expected`` (before extraction)."""
    actual = sha256_of(archive)
    if actual != expected.lower():
        raise ArtifactError(f"refused: checksum mismatch: the archive's SHA-256 is {actual}, "
                            f"its record says {expected}")


def check_size(size: int, max_bytes: int) -> None:
    """Raise ArtifactError when an archive of ``size`` bytes is over ``max_bytes``."""
    if size > max_bytes:
        raise ArtifactError(f"refused: the artifact is {size} bytes, above the limit of {max_bytes} bytes "
                            "(CODEINDEX_ARTIFACT_MAX_BYTES)")


def read_meta(members: dict[str, Path]) -> ArtifactMeta:
    """The artifact's metadata from its extracted members."""
    return ArtifactMeta.from_json(members[METADATA].read_bytes())


def check_compatible(meta: ArtifactMeta, *, model_id: str, dimension: int, distance: str,
                     existing: CollectionMeta | None) -> None:
    """Raise IncompatibleArtifactError when ``meta`` does not fit this index: another embedding
    model, dimension or distance than the configured embedder's (``model_id``, ``dimension``,
    ``distance``) or than the collection already built here (``existing``), a schema newer
    than :data:`SCHEMA_VERSION`, or another chunker version. No flag overrides it."""
    problems = []
    if meta.schema_version > SCHEMA_VERSION:
        problems.append(f"schema version {meta.schema_version} is newer than this codeindex reads "
                        f"({SCHEMA_VERSION}): upgrade codeindex")
    if meta.chunker_version != CHUNKER_VERSION:
        problems.append(f"chunker version {meta.chunker_version} is not this codeindex's ({CHUNKER_VERSION}): "
                        "its chunks would not match what the next sync cuts")
    for what, theirs, ours in (("embedding model", meta.embedding_model, model_id),
                               ("dimension", meta.model_dimension, dimension),
                               ("distance", meta.distance_metric, distance)):
        if theirs != ours:
            problems.append(f"{what} {theirs} is not the configured {ours}")
    if existing is not None and (existing.embedding_model, existing.dimension) != (meta.embedding_model,
                                                                                   meta.model_dimension):
        problems.append(f"the collection {existing.name} here holds {existing.embedding_model} "
                        f"({existing.dimension}-d) vectors")
    if problems:
        raise IncompatibleArtifactError(f"artifact {meta.id} is incompatible: " + "; ".join(problems))


def read_snapshot(members: dict[str, Path], meta: ArtifactMeta) -> Snapshot:
    """The snapshot (or delta) the extracted ``members`` hold. ArtifactError when malformed."""
    import pyarrow as pa  # lazy: see _arrow_bytes

    try:
        doc = json.loads(members[STATE].read_bytes())
        files = {f["path"]: FileState(**f) for f in doc["files"]}
        with pa.memory_map(str(members[VECTORS])) as source:
            table = pa.ipc.open_file(source).read_all()
        objects = _objects_of(table, meta.model_dimension)
        embeddings: dict[str, np.ndarray] = {}
        if EMBEDDINGS in members:
            with pa.memory_map(str(members[EMBEDDINGS])) as source:
                cache = pa.ipc.open_file(source).read_all()
            vectors = _matrix(cache.column("vector"), meta.model_dimension)
            embeddings = dict(zip(cache.column("text_sha256").to_pylist(), vectors))
        return Snapshot(repo_id=doc["repo_id"], commit=doc["commit"], collection=CollectionMeta(**doc["collection"]),
                        url=doc["url"], branch=doc["branch"], filter_fingerprint=doc["filter_fingerprint"],
                        files=files, objects=objects, deleted_paths=list(doc["deleted_paths"]),
                        deleted_ids=list(doc["deleted_ids"]), embeddings=embeddings)
    except (ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        raise ArtifactError(f"refused: the artifact's state or vectors are malformed ({exc})") from None


def _matrix(column, dimension: int) -> np.ndarray:
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if len(column) and flat.size != len(column) * dimension:
        raise ValueError(f"vectors are not {dimension}-dimensional")
    return flat.reshape(len(column), dimension)


def _objects_of(table, dimension: int) -> dict[str, VectorObject]:
    vectors = _matrix(table.column("vector"), dimension)
    # An artifact packed before name vectors existed has none: its objects rank by their vector alone.
    names = (vector_list(table.column("name_vector"), dimension) if "name_vector" in table.column_names
             else [None] * table.num_rows)
    rows = table.select([n for n in _VECTOR_FIELDS if n != "names_sha256" or n in table.column_names]).to_pylist()
    return {row["id"]: VectorObject(**row, vector=vectors[i], name_vector=names[i]) for i, row in enumerate(rows)}


def snapshot_objects(objects: Iterable[VectorObject], files: dict[str, FileState],
                     committed_fence: int) -> dict[str, VectorObject] | None:
    """The objects that belong to the committed index described by ``files``: those of an
    indexed path with a chunk index below its chunk count. None when they do not match it
    exactly: an object is missing, or was written by a sync that has not committed (a fence
    above ``committed_fence``): the caller waits for that sync and reads again."""
    kept: dict[str, VectorObject] = {}
    for obj in objects:
        state = files.get(obj.path)
        if state is None or obj.chunk_index >= state.chunk_count:
            if obj.fence > committed_fence:
                return None  # a sync in flight added it
            continue  # left over by an interrupted sync: not part of the index
        if obj.fence > committed_fence:
            return None
        kept[obj.id] = obj
    if len(kept) != sum(s.chunk_count for s in files.values()):
        return None
    return kept


def chain_of(target: str, parents: dict[str, str | None]) -> list[str]:
    """The ids from the full artifact to ``target`` (``parents``: id -> base id, None for a
    full one). ArtifactError for an id or base that is missing, or a loop."""
    chain = [target]
    while True:
        if chain[-1] not in parents:
            raise ArtifactError(f"artifact {target}'s chain is broken: {chain[-1]} is missing")
        base = parents[chain[-1]]
        if base is None:
            return list(reversed(chain))
        if base in chain:
            raise ArtifactError(f"artifact {target}'s chain is broken: it loops at {base}")
        chain.append(base)
