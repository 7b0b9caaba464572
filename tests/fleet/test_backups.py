"""Cold storage in a fleet that shares no disk (issue 10): real Redis, PostgreSQL, S3 (moto's
server) and workers with data directories of their own. A worker that dies or drains loses no
clone: its repositories continue on their new owners from the bundles, without the code host."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.fleet.conftest import wait_for
from tests.fleet.test_shared_nothing import SharedNothing, shared_nothing  # noqa: F401 - the fixture
from tests.history import differences, fresh_export, make_history
from tests.s3 import s3_server  # noqa: F401 - the session fixture, used by name


def _restores(sn: SharedNothing, repo_id: str) -> list[dict]:
    return json.loads(sn.cli("backups", "--repo", repo_id, "--json").stdout)["restores"]


def test_a_killed_owners_repository_is_restored_from_its_bundle_without_the_code_host(
        shared_nothing: SharedNothing, tmp_path: Path) -> None:  # noqa: F811 - the fixture imported above
    sn, fleet = shared_nothing, shared_nothing.fleet
    for shard in ("a", "b"):
        sn.start_worker(shard)
    sn.start_beat()
    history = make_history(tmp_path / "upstream", "lib", celery_files=20, kombu_files=12)
    added = json.loads(sn.cli("repo", "add", history.url, "--name", "lib", "--json", timeout=300).stdout)
    assert added["errors"] == 0
    made = json.loads(sn.cli("backup", "--repo", "lib", "--json", timeout=300).stdout)
    assert made["outcome"] == "created" and made["bundle"]["head"] == history.commits[-1]
    assert f"objects/{made['bundle']['key']}" in sn.keys("objects/bundles/lib/")
    victim = fleet.owner("lib")
    sn.note_owners("lib")
    # The code host goes away, then the owner dies.
    moved = history.bare.with_name("lib-moved.git")
    history.bare.rename(moved)
    fleet.kill(victim, signal.SIGKILL)
    wait_for(lambda: fleet.shard_status(victim) == "offline", 90, f"shard {victim} to be declared offline")
    new_owner = wait_for(lambda: (o := fleet.owner("lib")) not in (None, victim) and o, 60, "lib to move")
    sn.note_owners("lib")
    summary = sn.sync("lib", "--all")  # the content already in the bundle
    assert summary["errors"] == 0 and summary["commit"] == history.commits[-1]
    assert "lib restored from bundle" in fleet.log(f"worker-{new_owner}")
    restores = _restores(sn, "lib")
    assert [(r["source"], r["bundle"], r["shard_id"]) for r in restores] == [
        ("bundle", made["bundle"]["key"], new_owner)]
    assert (sn.node(new_owner).root / "data" / "lib.git").is_dir()
    current, fresh = sn.export("lib"), fresh_export(moved.as_uri(), history.commits[-1], fleet.workdir, "lib")
    assert not differences(current, fresh), differences(current, fresh)
    # The code host is back with new commits: the restored clone fetches them (no new clone).
    moved.rename(history.bare)
    head = next(history.replay())
    summary = sn.sync("lib")
    assert summary["errors"] == 0 and summary["commit"] == head
    sn.assert_exact(history, "lib")
    assert len(_restores(sn, "lib")) == 1
    sn.assert_contained()


def test_sigterm_backs_up_the_changed_repositories_before_the_hand_over(
        shared_nothing: SharedNothing, tmp_path: Path) -> None:  # noqa: F811 - the fixture imported above
    sn, fleet = shared_nothing, shared_nothing.fleet
    # Without a tracer (a SIGTERM to the process group would reach it first) and without beat.
    fleet.start_worker("a", extra_env=sn.node("a").env, cwd=sn.node("a").root)
    histories = [make_history(tmp_path / "upstream", f"r{i}", celery_files=8, kombu_files=6) for i in range(3)]
    for history in histories:
        sn.cli("repo", "add", history.url, "--name", history.bare.stem, "--json", timeout=300)
    first = json.loads(sn.cli("backup", "--all", "--json", timeout=300).stdout)["repositories"]
    assert [r["outcome"] for r in first] == ["created"] * 3
    for history in histories:  # each changes after its bundle
        next(history.replay())
        assert sn.sync(history.bare.stem)["commit"] == history.commits[-1]
    fleet.start_worker("b", extra_env=sn.node("b").env, cwd=sn.node("b").root)
    assert {fleet.owner(h.bare.stem) for h in histories} == {"a"}
    started = time.monotonic()
    fleet.kill("a", signal.SIGTERM)
    fleet.workers["a"].wait(timeout=300)
    drained_in = time.monotonic() - started
    assert drained_in < 300, f"the drain took {drained_in:.0f} s, past the grace period"
    assert "draining: 3 repositories backed up, 0 unchanged, 0 left, 0 failed" in fleet.log("worker-a")
    assert {fleet.owner(h.bare.stem) for h in histories} == {"b"}
    for history in histories:
        repo = history.bare.stem
        bundles = json.loads(sn.cli("backups", "--repo", repo, "--json").stdout)["bundles"]
        assert [b["head"] for b in bundles] == history.commits[-2:] and bundles[-1]["shard_id"] == "a"
        history.bare.rename(history.bare.with_name(f"{repo}-gone.git"))
        summary = sn.sync(repo, "--all")
        assert summary["errors"] == 0 and summary["commit"] == history.commits[-1]
        restores = _restores(sn, repo)
        assert [(r["bundle"], r["shard_id"]) for r in restores] == [(bundles[-1]["key"], "b")]
