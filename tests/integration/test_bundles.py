"""indexing/bundles.py on real clones of real code, in a local object store and in S3 (moto's
server): backups, checksums and trial clones that refuse what is damaged, incremental chains,
empty repositories, retention."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from indexing.bundles import (
    BackupOutcome, create_bundle, delete_bundles, expired, list_bundles, restore_bundle,
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


def test_corrupt_and_tampered_bundles_are_refused_for_the_previous(tmp_path: Path, store) -> None:
    history = make_history(tmp_path / "up", "lib", celery_files=10, kombu_files=10)
    mirror = _mirror(history, tmp_path / "owner" / "lib.git")
    older = _backup(mirror, store, tmp_path).record
    history.replay().__next__()
    mirror.fetch()
    newer = _backup(mirror, store, tmp_path).record
    assert [r.key for r in list_bundles(store, "lib")] == [older.key, newer.key]
    data = bytearray(store.get(newer.key))
    data[len(data) // 2] ^= 0xFF  # bytes changed inside the pack: `git bundle verify` would not notice
    store.put(newer.key, bytes(data))
    dest = tmp_path / "new-owner" / "lib.git"
    result = restore_bundle(store, "lib", dest, tmp_path / "work2")
    assert result.record.key == older.key and _head(dest) == history.commits[0]
    assert result.refused[0][0] == newer.key and "checksum mismatch" in result.refused[0][1]
    # the same damage with the record's checksum replaced too: only the trial clone can tell
    record = json.loads(store.get(newer.record_key))
    record["sha256"] = store.head(newer.key).sha256
    store.put(newer.record_key, json.dumps(record).encode())
    result = restore_bundle(store, "lib", tmp_path / "third" / "lib.git", tmp_path / "work3")
    assert result.record.key == older.key
    assert "trial clone failed" in result.refused[0][1], result.refused
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
    # retention never removes a base that a kept incremental bundle needs
    assert expired(list_bundles(store, "lib"), keep=1, keep_days=0) == []


def test_an_empty_repository_is_reported_and_nothing_uploaded(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    bare = tmp_path / "empty.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True, timeout=60)
    result = create_bundle(bare, repo_id="empty", url=bare.as_uri(), branch="main", store=store,
                           work_dir=tmp_path / "work")
    assert result.outcome is BackupOutcome.EMPTY and "no commit" in result.message
    assert list(store.list("bundles/")) == []


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
