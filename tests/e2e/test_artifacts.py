"""Index artifacts as a user runs them (seed 000's patterns through the ``codeindex`` command):
onboarding by pull, refusals that leave the index byte for byte as it was, a SIGKILL during an
install, delta chains over real commits, retention."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
import time
from dataclasses import asdict, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import zstandard

from indexing.artifact_store import ArtifactRecord, ArtifactStore, RetentionPolicy
from indexing.artifacts import apply_delta, extract, read_meta, read_snapshot
from indexing.objects import LocalObjectStore
from tests.conftest import git, make_real_repo
from tests.e2e.test_cli import CODEINDEX, out, run, tree_digest

PROJECT = Path(__file__).resolve().parents[2]


def pushed(root: Path, store: Path, *args: str) -> dict:
    proc = run(root, "artifact", "push", "--json", *args, env={"CODEINDEX_ARTIFACT_URI": str(store)})
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(out(proc))


def art(root: Path, store: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run(root, "artifact", *args, env={"CODEINDEX_ARTIFACT_URI": str(store), **(env or {})})


def export(root: Path) -> str:
    proc = run(root, "export")
    assert proc.returncode == 0, proc.stderr.decode()
    return out(proc)


def clone(source: Path, target: Path, commit: str | None = None) -> Path:
    subprocess.run(["git", "clone", "-q", str(source), str(target)], check=True, timeout=120)
    if commit:
        git(target, "checkout", "-q", commit)
    return target


def test_onboarding_pull_then_detect_changes_equals_a_fresh_full_index_of_the_project(tmp_path: Path) -> None:
    """Seed 000's pattern 1 on this project's own history: A indexes an older commit and pushes;
    B clones HEAD, pulls, syncs --detect-changes, and equals a fresh full index of HEAD."""
    store = tmp_path / "artifacts"
    older = git(PROJECT, "rev-parse", "HEAD~3").strip()
    a = clone(PROJECT, tmp_path / "A" / "codeindex", older)
    assert run(a, "sync", "--all").returncode == 0
    record = pushed(a, store, "--branch", "main")
    assert record["commit"] == older and record["kind"] == "full" and record["id"] in out(art(a, store, "list"))

    b = clone(PROJECT, tmp_path / "B" / "codeindex")
    assert json.loads(out(art(b, store, "sync", "--json")))["status"] == "behind"
    pull = art(b, store, "pull", "--latest", "--json")
    assert pull.returncode == 0, pull.stderr.decode()
    assert json.loads(out(pull))["commit"] == older
    query = ["search", "where is the artifact checksum verified", "-k", "5"]
    assert out(run(b, *query)) == out(run(a, *query))  # same index, same commit: same answers
    assert export(b) == export(a)

    detect = run(b, "sync", "--detect-changes")
    assert detect.returncode == 0, detect.stderr.decode()
    fresh = clone(PROJECT, tmp_path / "C" / "codeindex")
    assert run(fresh, "sync", "--all").returncode == 0
    assert export(b) == export(fresh)
    assert json.loads(out(art(b, store, "sync", "--json")))["status"] == "ahead"


@pytest.fixture
def installed(tmp_path: Path) -> tuple[Path, Path, Path, dict]:
    """An origin repository indexed and pushed, and a second clone B with that artifact pulled;
    returns (origin, B, store, the artifact's record)."""
    store = tmp_path / "artifacts"
    origin = make_real_repo(tmp_path / "A" / "repo", celery_files=12, kombu_files=12)
    assert run(origin, "sync", "--all").returncode == 0
    record = pushed(origin, store)
    b = clone(origin, tmp_path / "B" / "repo")
    assert art(b, store, "pull", record["id"]).returncode == 0
    return origin, b, store, record


def _members(store: Path, record: dict, tmp: Path) -> dict[str, bytes]:
    into = tmp / f"members-{record['id']}"
    into.mkdir()
    found = extract(store / record["key"], into, max_bytes=1 << 30)
    return {name: path.read_bytes() for name, path in found.items()}


def forge(store: Path, record: dict, entries: list[tuple[tarfile.TarInfo, bytes]], new_id: str,
          sha256: str | None = None) -> str:
    """Store an artifact of ``entries`` (tar members as given) under ``new_id``, recorded like
    ``record``; its record carries the archive's true SHA-256 unless ``sha256`` says otherwise."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    archive = zstandard.ZstdCompressor().compress(raw.getvalue())
    objects = LocalObjectStore(store)
    key = f"artifacts/{new_id}.tar.zst"
    objects.put(key, archive)
    import hashlib

    doc = {**record, "id": new_id, "key": key, "size": len(archive),
           "sha256": sha256 or hashlib.sha256(archive).hexdigest()}
    objects.put(f"artifacts/{new_id}.json", json.dumps({k: v for k, v in doc.items() if k != "uri"
                                                         and k != "promoted"}).encode())
    return new_id


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _rebuilt(members: dict[str, bytes], **meta_changes) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The members with the metadata changed and a manifest that matches again."""
    import hashlib

    meta = {**json.loads(members["artifact-metadata.json"]), **meta_changes}
    body = {**members, "artifact-metadata.json": json.dumps(meta).encode()}
    body.pop("manifest.json")
    manifest = {"members": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in body.items()}}
    return [_file(n, d) for n, d in body.items()] + [_file("manifest.json", json.dumps(manifest).encode())]


def _bad_artifacts(store: Path, record: dict, tmp: Path) -> dict[str, tuple[str, int, str, dict]]:
    """name -> (artifact id, exit code, expected message, extra environment)."""
    members = _members(store, record, tmp)
    good = [_file(n, d) for n, d in members.items()]
    link = tarfile.TarInfo("vectors.arrow")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    device = tarfile.TarInfo("state.json")
    device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 1, 3
    flipped = bytearray((store / record["key"]).read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    corrupt_id = record["id"] + "-corrupt"
    LocalObjectStore(store).put(f"artifacts/{corrupt_id}.tar.zst", bytes(flipped))
    LocalObjectStore(store).put(f"artifacts/{corrupt_id}.json", json.dumps(
        {**{k: v for k, v in record.items() if k not in ("uri", "promoted")}, "id": corrupt_id,
         "key": f"artifacts/{corrupt_id}.tar.zst"}).encode())
    return {
        "checksum": (corrupt_id, 2, "checksum mismatch", {}),
        "tar-slip": (forge(store, record, [_file("../x", b"escaped")] + good, record["id"] + "-slip"), 2,
                     "leads outside", {}),
        "absolute": (forge(store, record, [_file("/tmp/codeindex-absolute-x", b"escaped")] + good,
                           record["id"] + "-abs"), 2, "absolute path", {}),
        "symlink": (forge(store, record, [(link, b"")] + good, record["id"] + "-link"), 2, "is a link", {}),
        "device": (forge(store, record, [(device, b"")] + good, record["id"] + "-dev"), 2, "device", {}),
        "model": (forge(store, record, _rebuilt(members, id=record["id"] + "-model", embedding_model="voyage-code-3"),
                            record["id"] + "-model"),
                  3, "embedding model voyage-code-3", {}),
        "dimension": (forge(store, record, _rebuilt(members, id=record["id"] + "-dim", model_dimension=1024),
                                record["id"] + "-dim"),
                      3, "dimension 1024", {}),
        "schema": (forge(store, record, _rebuilt(members, id=record["id"] + "-schema", schema_version=99),
                             record["id"] + "-schema"),
                   3, "schema version 99", {}),
        "oversized": (record["id"], 2, "above the limit", {"CODEINDEX_ARTIFACT_MAX_BYTES": "4096"}),
    }


def test_refused_artifacts_leave_the_local_index_byte_for_byte_unchanged(installed, tmp_path: Path) -> None:
    _, b, store, record = installed
    before = tree_digest(b)
    for name, (artifact_id, code, message, env) in _bad_artifacts(store, record, tmp_path).items():
        proc = art(b, store, "pull", artifact_id, env=env)
        err = proc.stderr.decode()
        assert proc.returncode == code, (name, err)
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (name, err)
        assert tree_digest(b) == before, name
        if name != "oversized":
            verify = art(b, store, "verify", artifact_id)
            assert verify.returncode == code and message in verify.stderr.decode(), name
    assert not Path("/tmp/codeindex-absolute-x").exists()
    listed = sorted(p.name for p in (store / "artifacts").iterdir())
    too_big = art(b, store, "push", env={"CODEINDEX_ARTIFACT_MAX_BYTES": "4096"})
    assert too_big.returncode == 2 and "above the limit of 4096 bytes" in too_big.stderr.decode()
    assert sorted(p.name for p in (store / "artifacts").iterdir()) == listed  # nothing uploaded
    assert not any(p.name == "x" for p in tmp_path.rglob("x"))
    assert art(b, store, "verify", record["id"]).returncode == 0


def test_a_local_index_ahead_of_the_artifact_is_kept_unless_forced(installed) -> None:
    _, b, store, record = installed
    target = sorted(b.rglob("*.py"))[0]
    target.write_text(target.read_text() + "\ndef added_later():\n    return 2\n")
    git(b, "commit", "-qam", "later")
    assert run(b, "sync", "--detect-changes").returncode == 0
    before = tree_digest(b / ".codeindex")
    refused = art(b, store, "pull", record["id"])
    assert refused.returncode == 3 and "is ahead" in refused.stderr.decode()
    assert tree_digest(b / ".codeindex") == before
    assert art(b, store, "pull", record["id"], "--force").returncode == 0
    assert "added_later" not in out(run(b, "search", "added_later", "--mode", "lexical"))


def test_sigkill_during_a_pull_leaves_the_previous_or_the_new_index_complete(installed) -> None:
    origin, b, store, first = installed
    old_export = export(b)
    for path in sorted(origin.rglob("*.py"))[:4]:
        path.write_text(path.read_text() + "\n# a later edit\n")
    git(origin, "commit", "-qam", "later")
    assert run(origin, "sync", "--detect-changes").returncode == 0
    second = pushed(origin, store)
    new_export = export(origin)
    assert new_export != old_export
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    environment.update({"CODEINDEX_EMBEDDER": "hashing", "CODEINDEX_ARTIFACT_URI": str(store)})
    outcomes = []
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.6):
        proc = subprocess.Popen([*CODEINDEX, "artifact", "pull", second["id"], "--force"], cwd=b, env=environment,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while proc.poll() is None and not list(b.glob(".codeindex.staging-*")) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = export(b)
        assert now in (old_export, new_export), f"after a SIGKILL {delay} s into the install the index is neither"
        outcomes.append("new" if now == new_export else "old")
        assert run(b, "verify").returncode == 0
        back = art(b, store, "pull", first["id"], "--force")  # the next pull recovers what the kill left
        assert back.returncode == 0, back.stderr.decode()
        assert export(b) == old_export and not list(b.glob(".codeindex.staging-*"))
    print("outcomes by kill delay:", outcomes)
    assert art(b, store, "pull", second["id"], "--force").returncode == 0 and export(b) == new_export


def _materialized(store: ArtifactStore, record: ArtifactRecord, tmp: Path):
    snap = None
    for link in store.chain(record):
        archive, into = tmp / f"{link.id}.archive", tmp / link.id
        store.download(link, archive)
        into.mkdir()
        members = extract(archive, into, max_bytes=1 << 30)
        part = read_snapshot(members, read_meta(members))
        snap = part if snap is None else apply_delta(snap, part)
    return snap


def test_a_full_artifact_and_three_deltas_equal_the_full_artifact_of_the_last_commit(tmp_path: Path) -> None:
    store_dir = tmp_path / "artifacts"
    repo = make_real_repo(tmp_path / "repo", celery_files=15, kombu_files=15)
    assert run(repo, "sync", "--all").returncode == 0
    pushed(repo, store_dir)
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*.py"))
    changes = [lambda: (repo / files[0]).write_text((repo / files[0]).read_text() + "\ndef delta_one():\n    pass\n"),
               lambda: (git(repo, "mv", files[1], "moved.py"), (repo / files[2]).unlink()),
               lambda: (repo / "new_module.py").write_text("def delta_three():\n    return 3\n")]
    for change in changes:
        change()
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "step")
        assert run(repo, "sync", "--detect-changes").returncode == 0
        assert pushed(repo, store_dir, "--delta", "--with-embeddings")["kind"] == "delta"
    full = pushed(repo, store_dir)
    store = ArtifactStore(LocalObjectStore(store_dir))
    records = store.list("repo")
    assert [r.kind for r in records] == ["full", "delta", "delta", "delta", "full"]
    assert records[-2].size < records[0].size / 2
    chained = _materialized(store, records[-2], tmp_path / "chain")
    whole = _materialized(store, store.get(full["id"]), tmp_path / "full")
    assert sorted(chained.objects) == sorted(whole.objects)
    for oid, obj in whole.objects.items():
        other = chained.objects[oid]
        assert (other.path, other.chunk_index, other.content_sha256) == (obj.path, obj.chunk_index, obj.content_sha256)
        assert (other.vector == obj.vector).all()
    assert {p: replace(s, fence=0) for p, s in chained.files.items()} == \
        {p: replace(s, fence=0) for p, s in whole.files.items()}
    assert chained.commit == whole.commit == git(repo, "rev-parse", "HEAD").strip()
    # pulled on another machine, the chain installs the same index
    other = clone(repo, tmp_path / "B" / "repo")
    assert art(other, store_dir, "pull", records[-2].id).returncode == 0
    assert export(other) == export(repo)


def _record(store: ArtifactStore, name: str, branch: str, age_days: float, now: datetime,
            promoted_days_ago: float | None = None, base: str | None = None) -> ArtifactRecord:
    created = now - timedelta(days=age_days)
    record = ArtifactRecord(
        id=f"{created:%Y%m%dT%H%M%S%fZ}.{name}", kind="delta" if base else "full", base=base, repo="repo",
        branch=branch, commit="0" * 40, embedding_model="m", model_dimension=4, created_at=created.isoformat(),
        index_stats={"files": 0, "chunks": 0}, key=f"artifacts/{name}.tar.zst", size=1, sha256="0" * 64,
        compression="zstd",
        promoted_at=(now - timedelta(days=promoted_days_ago)).isoformat() if promoted_days_ago is not None else None)
    store.objects.put(record.key, b"x")
    store.objects.put(f"artifacts/{record.id}.json", json.dumps(asdict(record)).encode())
    return record


def test_retention_removes_exactly_the_expired_artifacts_and_a_second_pass_nothing(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    store = ArtifactStore(LocalObjectStore(tmp_path / "artifacts"))
    policy = RetentionPolicy(pr_days=7, main_days=30, promoted_days=365, main_branches=("main", "master"))
    expired = {_record(store, "pr-8d", "feature/x", 8, now).id, _record(store, "main-31d", "main", 31, now).id}
    kept = {_record(store, "pr-6d", "feature/y", 6, now).id, _record(store, "main-29d", "main", 29, now).id,
            _record(store, "promoted-90d", "main", 120, now, promoted_days_ago=90).id}
    base = _record(store, "base-of-kept-delta", "feature/z", 10, now)
    kept |= {base.id, _record(store, "young-delta", "feature/z", 1, now, base=base.id).id}
    assert set(store.prune(policy, now, limit=100, dry_run=True)) == expired
    assert {r.id for r in store.list()} == expired | kept  # a dry run removes nothing
    assert set(store.prune(policy, now, limit=100)) == expired
    assert {r.id for r in store.list()} == kept
    assert not any(info.key.endswith(("pr-8d.tar.zst", "main-31d.tar.zst")) for info in store.objects.list("artifacts/"))
    assert store.prune(policy, now, limit=100) == []


def test_codeindex_cleanup_applies_artifact_retention_once(tmp_path: Path) -> None:
    """The artifacts rule of ``codeindex cleanup`` (beat's ``codeindex.cleanup.artifacts``)."""
    repo = make_real_repo(tmp_path / "repo", celery_files=2, kombu_files=2)
    now = datetime.now(timezone.utc)
    store = ArtifactStore(LocalObjectStore(tmp_path / "artifacts"))
    expired = {_record(store, "pr-8d", "feature/x", 8, now).id, _record(store, "main-31d", "main", 31, now).id}
    kept = {_record(store, "promoted-90d", "main", 100, now, promoted_days_ago=90).id,
            _record(store, "pr-1d", "feature/x", 1, now).id}

    def cleanup(*args: str) -> dict:
        proc = run(repo, "cleanup", "--rule", "artifacts", "--json", *args,
                   env={"CODEINDEX_ARTIFACT_URI": str(tmp_path / "artifacts")})
        assert proc.returncode == 0, proc.stderr.decode()
        return json.loads(out(proc))

    assert set(cleanup("--dry-run")["results"][0]["removed"]) == expired
    assert {r.id for r in store.list()} == expired | kept
    assert set(cleanup()["results"][0]["removed"]) == expired
    assert {r.id for r in store.list()} == kept
    assert cleanup()["results"][0]["removed"] == []


def test_verify_a_file_with_its_sha256_sidecar(installed, tmp_path: Path) -> None:
    """``artifact verify FILE`` as CI runs it on a downloaded archive: the checksum from
    ``FILE.sha256`` (sha256sum's format) when present, and a sidecar without one is an error."""
    _, b, store, record = installed
    archive = tmp_path / "downloaded.tar.zst"
    archive.write_bytes((store / record["key"]).read_bytes())
    side = tmp_path / "downloaded.tar.zst.sha256"
    side.write_text("")
    empty = art(b, store, "verify", str(archive))
    assert empty.returncode == 2 and "holds no SHA-256" in empty.stderr.decode()
    side.write_text(f"{'0' * 64}  downloaded.tar.zst\n")
    wrong = art(b, store, "verify", str(archive))
    assert wrong.returncode == 2 and "checksum mismatch" in wrong.stderr.decode()
    side.write_text(f"{record['sha256']}  downloaded.tar.zst\n")
    good = art(b, store, "verify", str(archive), "--json")
    assert good.returncode == 0 and "sha256" in json.loads(out(good))["checks"]
