"""indexing/bundles.py on real clones of real code, in a local object store and in S3 (moto's
server): backups, checksums and trial clones that refuse what is damaged (restored clones
checked object by object), incremental chains, empty repositories, retention; and the restore
task over the embedded runtime, whose record names the bundle refused and the one used."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from indexing.bundles import (
    BackupOutcome, create_bundle, delete_bundles, expired, list_bundles, list_restores, restore_bundle,
)
from indexing.errors import UsageError
from indexing.git_source import GitMirror
from indexing.objects import LocalObjectStore
from tests.history import History, make_history
from tests.s3 import s3_server, s3_store  # noqa: F401 (fixtures)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path):
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    return request.getfixturevalue("s3_store")


def _mirror(history: History, path: Path) -> GitMirror:
    mirror = GitMirror(path, history.url, branch="main")
    mirror.fetch()
    return mirror


def _backup(mirror: GitMirror, store, tmp_path: Path, **kw):
    return create_bundle(mirror.path, repo_id="lib", url=mirror.url, branch="main", store=store,
                         work_dir=tmp_path / "work", shard_id="s1", **kw)


def _head(clone: Path) -> str:
    return subprocess.run(["git", "-C", str(clone), "rev-parse", "refs/heads/main"], capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip()


def _contents(clone: Path) -> tuple[str, list[str]]:
    """The branches and tags of a bare clone (name and commit) and every object their history
    reaches, sorted: what a restored clone must have of the one bundled."""
    def out(*args: str) -> str:
        return subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True, check=True,
                              timeout=60).stdout
    refs = out("for-each-ref", "--format=%(refname) %(objectname)", "refs/heads", "refs/tags")
    return refs, sorted(out("rev-list", "--objects", "--branches", "--tags").splitlines())


def _assert_restored(clone: Path, bundled: tuple[str, list[str]]) -> None:
    """``clone`` passes a full object check and holds exactly the refs and objects ``bundled``."""
    fsck = subprocess.run(["git", "-C", str(clone), "fsck", "--full", "--strict", "--no-dangling"],
                          capture_output=True, text=True, timeout=120)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    refs, objects = _contents(clone)
    assert refs == bundled[0] and refs.strip()
    assert objects == bundled[1]


def test_backup_then_restore_and_unchanged(tmp_path: Path, store) -> None:
    history = make_history(tmp_path / "up", "lib", celery_files=10, kombu_files=10)
    mirror = _mirror(history, tmp_path / "owner" / "lib.git")
    first = _backup(mirror, store, tmp_path)
    assert first.outcome is BackupOutcome.CREATED and first.record.verified and first.record.head == history.commits[-1]
    assert first.record.key.startswith("bundles/lib/") and first.record.key.endswith(f"-{history.commits[-1][:12]}.bundle")
    info = store.head(first.record.key)
    assert info.size == first.record.size and info.sha256 == first.record.sha256
    assert not [i.key for i in store.list("bundles/lib/partial/")], "the temporary key is gone"
    again = _backup(mirror, store, tmp_path)
    assert again.outcome is BackupOutcome.UNCHANGED and len(list_bundles(store, "lib")) == 1
    restored = restore_bundle(store, "lib", tmp_path / "new-owner" / "lib.git", tmp_path / "work2")
    assert restored.record.key == first.record.key and restored.refused == []
    assert _head(tmp_path / "new-owner" / "lib.git") == history.commits[-1]


def _corrupt(store, key: str) -> None:
    """Change one byte in the middle of the object at ``key`` (inside a bundle's pack, where
    `git bundle verify` would not notice)."""
    data = bytearray(store.get(key))
    data[len(data) // 2] ^= 0xFF
    store.put(key, bytes(data))


def test_corrupt_and_tampered_bundles_are_refused_for_the_previous(tmp_path: Path, store) -> None:
    history = make_history(tmp_path / "up", "lib", celery_files=10, kombu_files=10)
    mirror = _mirror(history, tmp_path / "owner" / "lib.git")
    older = _backup(mirror, store, tmp_path).record
    bundled = _contents(mirror.path)
    history.replay().__next__()
    mirror.fetch()
    newer = _backup(mirror, store, tmp_path).record
    assert [r.key for r in list_bundles(store, "lib")] == [older.key, newer.key]
    _corrupt(store, newer.key)
    dest = tmp_path / "new-owner" / "lib.git"
    result = restore_bundle(store, "lib", dest, tmp_path / "work2")
    assert result.record.key == older.key and _head(dest) == history.commits[0]
    assert result.refused[0][0] == newer.key and "checksum mismatch" in result.refused[0][1]
    _assert_restored(dest, bundled)
    # the same damage with the record's checksum replaced too: only the trial clone can tell
    record = json.loads(store.get(newer.record_key))
    record["sha256"] = store.head(newer.key).sha256
    store.put(newer.record_key, json.dumps(record).encode())
    result = restore_bundle(store, "lib", tmp_path / "third" / "lib.git", tmp_path / "work3")
    assert result.record.key == older.key
    assert [key for key, _ in result.refused] == [newer.key]
    assert "trial clone failed" in result.refused[0][1], result.refused
    _assert_restored(tmp_path / "third" / "lib.git", bundled)
    store.delete(older.key)
    nothing = restore_bundle(store, "lib", tmp_path / "fourth" / "lib.git", tmp_path / "work4")
    assert nothing.record is None and len(nothing.refused) == 2 and not (tmp_path / "fourth" / "lib.git").exists()


def test_incremental_chain_restores_the_head(tmp_path: Path, store) -> None:
    history = make_history(tmp_path / "up", "lib", celery_files=10, kombu_files=10)
    mirror = _mirror(history, tmp_path / "owner" / "lib.git")
    full = _backup(mirror, store, tmp_path, incremental=True).record
    assert full.base is None
    steps = history.replay()
    for _ in range(2):
        next(steps)
        mirror.fetch()
        delta = _backup(mirror, store, tmp_path, incremental=True).record
        assert delta.base is not None and delta.size < full.size
    result = restore_bundle(store, "lib", tmp_path / "new" / "lib.git", tmp_path / "work2")
    assert len(result.chain) == 3 and result.chain[0] == full.key
    assert _head(tmp_path / "new" / "lib.git") == history.commits[-1]
    _assert_restored(tmp_path / "new" / "lib.git", _contents(mirror.path))
    # retention never removes a base that a kept incremental bundle needs
    assert expired(list_bundles(store, "lib"), keep=1, keep_days=0) == []


def test_an_empty_repository_is_reported_and_nothing_uploaded(tmp_path: Path, store) -> None:
    bare = tmp_path / "empty.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True, timeout=60)
    result = create_bundle(bare, repo_id="empty", url=bare.as_uri(), branch="main", store=store,
                           work_dir=tmp_path / "work")
    assert result.outcome is BackupOutcome.EMPTY and result.record is None
    assert result.message == "empty has no commit on main: nothing to back up (git cannot bundle it)"
    assert list(store.list()) == [], "nothing at all uploaded, not even a temporary key"
    assert list_bundles(store, "empty") == []


def test_retention_keeps_the_newest_n_and_the_young(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    history = make_history(tmp_path / "up", "lib", celery_files=5, kombu_files=5)
    mirror = _mirror(history, tmp_path / "owner" / "lib.git")
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    steps = history.replay()
    for day in range(5):
        if day:
            next(steps)
            mirror.fetch()
        assert _backup(mirror, store, tmp_path, now=start + timedelta(days=day)).outcome is BackupOutcome.CREATED
    records = list_bundles(store, "lib")
    assert len(records) == 5
    now = start + timedelta(days=30)
    assert delete_bundles(store, expired(records, keep=2, keep_days=7, now=now)) == 3
    assert [r.key for r in list_bundles(store, "lib")] == [r.key for r in records[-2:]]
    young = expired(records[-2:], keep=1, keep_days=27.5, now=now)  # day 3 is 27 days old: kept
    assert young == []


def test_restore_of_a_named_bundle_and_an_unknown_one(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    history = make_history(tmp_path / "up", "lib", celery_files=5, kombu_files=5)
    mirror = _mirror(history, tmp_path / "owner" / "lib.git")
    older = _backup(mirror, store, tmp_path).record
    next(history.replay())
    mirror.fetch()
    _backup(mirror, store, tmp_path)
    named = restore_bundle(store, "lib", tmp_path / "n" / "lib.git", tmp_path / "w", bundle=older.key.rsplit("/", 1)[1])
    assert named.record.key == older.key and _head(tmp_path / "n" / "lib.git") == history.commits[0]
    with pytest.raises(UsageError, match="no bundle"):
        restore_bundle(store, "lib", tmp_path / "m" / "lib.git", tmp_path / "w", bundle="nope.bundle")


def test_beat_backs_up_what_moved_and_prunes_old_bundles(tmp_path: Path) -> None:
    """The schedule task (eager, embedded) sends a backup only for a repository whose index moved
    past its last bundle and has been quiet long enough; the retention task prunes."""
    from config.settings import configure
    from tasks.backup import schedule
    from tasks.cleanup import bundles as prune
    from tasks.sync import add_repository
    from workers import runtime
    from workers.app import apply_settings

    history = make_history(tmp_path / "up", "lib", celery_files=5, kombu_files=5)
    settings = configure(home=tmp_path / "home", embedder="hashing", backup_quiet_seconds=3600, backup_keep=1,
                         backup_keep_days=0)
    runtime.reset()
    apply_settings(settings)
    try:
        assert add_repository("lib", "codeindex", url=history.url, branch="main")[2].get()["errors"] == 0
        assert schedule.apply().get() == {"sent": 0, "repositories": []}  # indexed just now: not quiet yet
        settings = configure(home=tmp_path / "home", embedder="hashing", backup_quiet_seconds=0, backup_keep=1,
                             backup_keep_days=0)
        runtime.reset()
        apply_settings(settings)
        assert schedule.apply().get() == {"sent": 1, "repositories": ["lib"]}
        assert schedule.apply().get()["sent"] == 0  # its bundle has the indexed head now
        store = runtime.runtime().object_store
        next(history.replay())
        assert add_repository("lib", "codeindex", url=history.url, branch="main")[2].get()["errors"] == 0
        assert schedule.apply().get()["sent"] == 1
        assert [r.head for r in list_bundles(store, "lib")] == history.commits[-2:]
        (pruned,) = prune.apply().get()["results"]
        assert pruned["rule"] == "bundles" and len(pruned["removed"]) == 1 and pruned["error"] is None
        assert prune.apply().get()["results"][0]["removed"] == []  # a second pass removes nothing
        assert [r.head for r in list_bundles(store, "lib")] == history.commits[-1:]
    finally:
        runtime.reset()


def test_the_restore_task_records_the_refused_bundle_and_the_one_used(tmp_path: Path, s3_server, s3_store) -> None:
    """``codeindex restore``'s task over the embedded runtime, its bundles in S3: the newest
    bundle's bytes changed, the restore uses the one before, the clone is that bundle's, and the
    ``backups`` record names both."""
    from config.settings import configure
    from tasks.backup import send_backup, send_restore
    from tasks.sync import add_repository
    from workers import runtime
    from workers.app import apply_settings
    from workers.backups import clone_path, describe_backups

    history = make_history(tmp_path / "up", "lib", celery_files=5, kombu_files=5)
    settings = configure(home=tmp_path / "home", embedder="hashing",
                         object_store_uri=f"s3://{s3_store.bucket}/{s3_store.prefix.strip('/')}",
                         s3_endpoint_url=s3_server.url, s3_region=s3_server.region,
                         s3_access_key_id=s3_server.access_key, s3_secret_access_key=s3_server.secret_key)
    runtime.reset()
    apply_settings(settings)
    try:
        assert add_repository("lib", "codeindex", url=history.url, branch="main")[2].get()["errors"] == 0
        older = send_backup("lib").get()["bundle"]
        clone = clone_path(runtime.runtime(), "lib")
        bundled = _contents(clone)
        next(history.replay())
        assert add_repository("lib", "codeindex", url=history.url, branch="main")[2].get()["errors"] == 0
        newer = send_backup("lib").get()["bundle"]
        assert [r.key for r in list_bundles(s3_store, "lib")] == [older["key"], newer["key"]]
        _corrupt(s3_store, newer["key"])

        done = send_restore("lib").get()
        assert done["source"] == "bundle" and done["bundle"] == older["key"] and done["head"] == history.commits[0]
        assert [r["bundle"] for r in done["refused"]] == [newer["key"]]
        assert done["refused"][0]["reason"].startswith(f"checksum mismatch: {newer['key']} has sha256 ")
        _assert_restored(clone, bundled)
        (recorded,) = describe_backups(runtime.runtime(), "lib")["restores"]
        assert recorded["bundle"] == older["key"] and recorded["refused"] == done["refused"]
        assert recorded["reason"] == "requested" and recorded["shard_id"] == runtime.runtime().shard_id
        assert list_restores(s3_store, "lib") == [recorded]
    finally:
        runtime.reset()
