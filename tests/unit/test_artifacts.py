"""The index artifact format (indexing/artifacts.py): members refused before extraction, the
manifest, compatibility, delta chains, ids and retention dates."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.artifact_store import ArtifactRecord, RetentionPolicy
from indexing.artifacts import (MANIFEST, METADATA, ArtifactMeta, Snapshot, _unsafe, apply_delta, artifact_id,
                                chain_of, check_compatible, delta, extract, members_of, read_meta, read_snapshot,
                                write_archive)
from indexing.errors import ArtifactError, IncompatibleArtifactError
from indexing.state import CollectionMeta, FileState
from indexing.store import VectorObject

COLLECTION = CollectionMeta("codeindex", "feature-hashing-v1-4", 4, "cosine")


def _obj(path: str, index: int, text: str, fence: int = 1) -> VectorObject:
    # Name vectors of every kind: computed, zeros (defines nothing), None (never computed).
    name_vector = [np.array([0, 1, 0, len(text)], dtype=np.float32), np.zeros(4, dtype=np.float32), None][len(text) % 3]
    return VectorObject(id=f"{path}#{index}", repo="r", path=path, chunk_index=index, start_line=1, end_line=2,
                        content=text, language="python", content_sha256=text, commit="c", indexed_at="t",
                        embedding_model=COLLECTION.embedding_model, fence=fence,
                        vector=np.full(4, float(len(text)), dtype=np.float32), name_vector=name_vector,
                        names_sha256="n" + text if name_vector is not None and name_vector.any() else "")


def _snapshot(files: dict[str, list[str]], commit: str = "c" * 40) -> Snapshot:
    states = {p: FileState(p, "h" + "".join(chunks), 10, len(chunks), "utf-8", "python", 1, "t")
              for p, chunks in files.items()}
    objects = {o.id: o for p, chunks in files.items() for o in (_obj(p, i, t) for i, t in enumerate(chunks))}
    return Snapshot("r", commit, COLLECTION, None, "main", "fp", states, objects)


def _meta(snap: Snapshot, **changes) -> ArtifactMeta:
    meta = ArtifactMeta(id="a1", kind="full", base=None, repo="r", branch="main", commit=snap.commit,
                        collection="codeindex", embedding_model=COLLECTION.embedding_model, model_dimension=4,
                        distance_metric="cosine", created_at="2026-12-06T00:00:00+00:00", index_stats=snap.stats())
    return replace(meta, **changes)


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(("info", "reason"), [
    (_info("/etc/passwd"), "absolute path"),
    (_info("../x"), "leads outside"),
    (_info("a/../../x"), "leads outside"),
    (_info("vectors.arrow", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
    (_info("vectors.arrow", tarfile.LNKTYPE, "state.json"), "is a link"),
    (_info("state.json", tarfile.CHRTYPE), "device"),
    (_info("state.json", tarfile.FIFOTYPE), "device or FIFO"),
    (_info("lancedb", tarfile.DIRTYPE), "not a regular file"),
    (_info("evil.sh"), "not part of an index artifact"),
    (_info("sub/state.json"), "not part of an index artifact"),
])
def test_unsafe_members_are_refused_with_the_reason(info: tarfile.TarInfo, reason: str) -> None:
    assert reason in (_unsafe(info) or "")


def test_the_members_of_an_artifact_pass() -> None:
    assert _unsafe(_info("state.json")) is None and _unsafe(_info("manifest.json")) is None


@pytest.mark.parametrize("compression", ["zstd", "tar.gz"])
def test_archive_round_trip_and_a_member_changed_after_the_manifest_is_refused(tmp_path: Path, compression) -> None:
    snap = _snapshot({"a.py": ["x", "yy"], "b.py": ["zzz"]})
    members = members_of(_meta(snap), snap)
    archive = tmp_path / "a.archive"
    write_archive(members, archive, compression=compression)
    (tmp_path / "out").mkdir()
    found = extract(archive, tmp_path / "out", max_bytes=1 << 20)
    back = read_snapshot(found, read_meta(found))
    assert sorted(back.objects) == sorted(snap.objects) and back.files == snap.files
    assert all((back.objects[i].vector == o.vector).all() for i, o in snap.objects.items())
    # The name vectors travel as they were: a vector, zeros, or None (never computed).
    for i, o in snap.objects.items():
        got = back.objects[i]
        assert got.names_sha256 == o.names_sha256
        assert (got.name_vector is None) if o.name_vector is None else np.array_equal(got.name_vector, o.name_vector)
    assert {type(o.name_vector).__name__ for o in back.objects.values()} == {"ndarray", "NoneType"}

    tampered = {**members, "state.json": members["state.json"].replace(b'"main"', b'"evil"')}
    write_archive(tampered, archive, compression=compression)
    (tmp_path / "again").mkdir()
    with pytest.raises(ArtifactError, match="does not match its SHA-256"):
        extract(archive, tmp_path / "again", max_bytes=1 << 20)


def test_a_decompression_bomb_stops_at_the_expansion_limit(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("vectors.arrow")
        info.size = 30 * 1024
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    (tmp_path / "bomb").write_bytes(raw.getvalue())
    (tmp_path / "out").mkdir()
    with pytest.raises(ArtifactError, match="unpacks to more than"):
        extract(tmp_path / "bomb", tmp_path / "out", max_bytes=1024)
    assert not (tmp_path / "out" / "vectors.arrow").exists()


def test_not_an_archive_and_a_missing_manifest_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not a tar")
    with pytest.raises(ArtifactError, match="neither zstd nor gzip"):
        extract(tmp_path / "junk", tmp_path, max_bytes=1 << 20)
    snap = _snapshot({"a.py": ["x"]})
    members = members_of(_meta(snap), snap)
    del members[MANIFEST]
    write_archive(members, tmp_path / "a", compression="zstd")
    (tmp_path / "out").mkdir()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        extract(tmp_path / "a", tmp_path / "out", max_bytes=1 << 20)


@pytest.mark.parametrize(("changes", "message"), [
    ({"embedding_model": "sentence-transformers/all-MiniLM-L6-v2"}, "embedding model"),
    ({"model_dimension": 384}, "dimension 384"),
    ({"distance_metric": "l2"}, "distance l2"),
    ({"schema_version": 2}, "schema version 2 is newer"),
    ({"chunker_version": 0}, "chunker version 0"),
])
def test_incompatible_metadata_is_refused(changes: dict, message: str) -> None:
    meta = _meta(_snapshot({}), **changes)
    with pytest.raises(IncompatibleArtifactError, match=message):
        check_compatible(meta, model_id=COLLECTION.embedding_model, dimension=4, distance="cosine", existing=None)


def test_a_collection_built_with_another_model_refuses_even_a_matching_artifact() -> None:
    meta = _meta(_snapshot({}))
    other = CollectionMeta("codeindex", "sentence-transformers/all-MiniLM-L6-v2", 384, "cosine")
    check_compatible(meta, model_id=COLLECTION.embedding_model, dimension=4, distance="cosine", existing=COLLECTION)
    with pytest.raises(IncompatibleArtifactError, match="holds sentence-transformers"):
        check_compatible(meta, model_id=COLLECTION.embedding_model, dimension=4, distance="cosine", existing=other)


def test_metadata_of_another_format_is_refused() -> None:
    with pytest.raises(ArtifactError, match=METADATA):
        ArtifactMeta.from_json(json.dumps({"format": "qdrant", "id": "x"}).encode())


def test_chains_resolve_from_the_full_artifact_and_broken_ones_are_refused() -> None:
    assert chain_of("d2", {"f": None, "d1": "f", "d2": "d1"}) == ["f", "d1", "d2"]
    assert chain_of("f", {"f": None}) == ["f"]
    with pytest.raises(ArtifactError, match="gone is missing"):
        chain_of("d1", {"d1": "gone"})
    with pytest.raises(ArtifactError, match="loops"):
        chain_of("a", {"a": "b", "b": "a"})


files_strategy = st.dictionaries(st.sampled_from([f"f{i}.py" for i in range(8)]),
                                 st.lists(st.sampled_from(["a", "b", "cc", "ddd"]), min_size=1, max_size=3),
                                 max_size=8)


@settings(max_examples=60, deadline=None)
@given(files_strategy, files_strategy)
def test_a_delta_applied_to_its_base_gives_the_current_snapshot(base_files, current_files) -> None:
    base, current = _snapshot(base_files), _snapshot(current_files)
    current.objects = {i: replace(o, fence=7) for i, o in current.objects.items()}  # fences are local
    rebuilt = apply_delta(base, delta(base, current))
    assert rebuilt.files == current.files
    assert {i: (o.content, o.fence) for i, o in rebuilt.objects.items()} == \
        {i: (o.content, o.fence if i not in base.objects or base.objects[i].content != o.content else 1)
         for i, o in current.objects.items()}


def test_ids_sort_by_time_and_name_repo_branch_and_commit() -> None:
    t = datetime(2026, 12, 6, 13, 1, 2, 123456, tzinfo=timezone.utc)
    first = artifact_id(t, "flask", "feature/x y", "0123456789abcdef")
    assert first == "20261206T130102123456Z.flask.feature_x_y.0123456789ab"
    assert artifact_id(t + timedelta(microseconds=1), "a", "main", "f" * 40) > first


def test_retention_days_by_branch_and_promotion() -> None:
    policy = RetentionPolicy(pr_days=7, main_days=30, promoted_days=365, main_branches=("main",))
    record = ArtifactRecord(id="x", kind="full", base=None, repo="r", branch="main", commit="c", embedding_model="m",
                            model_dimension=4, created_at="2026-01-01T00:00:00+00:00", index_stats={}, key="k",
                            size=1, sha256="s", compression="zstd")
    assert policy.expires(record) == datetime(2026, 1, 31, tzinfo=timezone.utc)
    assert policy.expires(replace(record, branch="pr-12")) == datetime(2026, 1, 8, tzinfo=timezone.utc)
    promoted = replace(record, promoted_at="2026-02-01T00:00:00+00:00")
    assert promoted.promoted and policy.expires(promoted) == datetime(2027, 2, 1, tzinfo=timezone.utc)


def test_an_artifact_packed_before_name_vectors_reads_with_none(tmp_path: Path) -> None:
    import pyarrow as pa

    snap = _snapshot({"a.py": ["x", "yy"], "b.py": ["zzz"]})
    members = members_of(_meta(snap), snap)
    old = pa.ipc.open_file(pa.BufferReader(members["vectors.arrow"])).read_all().drop_columns(
        ["name_vector", "names_sha256"])
    paths = {}
    for name, data in members.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    with pa.OSFile(str(paths["vectors.arrow"]), "wb") as sink, pa.ipc.new_file(sink, old.schema) as writer:
        writer.write_table(old)
    back = read_snapshot(paths, read_meta(paths))
    assert sorted(back.objects) == sorted(snap.objects)
    assert all(o.name_vector is None and o.names_sha256 == "" for o in back.objects.values())
