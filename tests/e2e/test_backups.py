"""``codeindex backup``, ``backups`` and ``restore`` in the embedded mode, as a user runs them: a
repository added by URL, backed up, then its clone lost and its code host gone: the next sync
restores the clone from the bundle and the index equals a fresh full index of the commit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.e2e.test_url_repos import export, run
from tests.history import differences, fresh_export, make_history


def test_backup_list_restore_and_a_sync_without_the_code_host(tmp_path: Path) -> None:
    history = make_history(tmp_path / "upstream", "lib", celery_files=12, kombu_files=12)
    cwd, home = tmp_path / "anywhere", tmp_path / "home"
    cwd.mkdir()
    run(cwd, home, "repo", "add", history.url, "--name", "lib", "--json")
    made = json.loads(run(cwd, home, "backup", "--repo", "lib", "--json").stdout)
    assert made["outcome"] == "created" and made["bundle"]["head"] == history.commits[-1]
    text = run(cwd, home, "backup", "--repo", "lib").stdout
    assert text.startswith("lib: unchanged (lib is unchanged since its last bundle")
    next(history.replay())
    run(cwd, home, "sync", "--repo", "lib")
    second = run(cwd, home, "backup", "--all").stdout
    assert second.startswith("lib: created: ") and f"head {history.commits[-1][:12]}" in second
    listed = json.loads(run(cwd, home, "backups", "--repo", "lib", "--json").stdout)
    assert [b["head"] for b in listed["bundles"]] == history.commits[-2:]
    assert all(b["verified"] and b["uri"].endswith(b["key"]) and b["sha256"] for b in listed["bundles"])

    # The clone is lost (a new owner's empty disk) and the code host is gone.
    shutil.rmtree(home / "repos" / "lib.git")
    moved = history.bare.with_name("moved-away.git")
    history.bare.rename(moved)
    synced = run(cwd, home, "sync", "--repo", "lib", "--all", "--format", "json")
    summary = json.loads(synced.stdout)
    assert summary["errors"] == 0 and summary["commit"] == history.commits[-1]
    restores = json.loads(run(cwd, home, "backups", "--repo", "lib", "--json").stdout)["restores"]
    assert len(restores) == 1 and restores[0]["source"] == "bundle"
    assert restores[0]["bundle"] == listed["bundles"][-1]["key"] and restores[0]["reason"] == "no clone on this worker"
    current, fresh = export(cwd, home, "lib"), fresh_export(moved.as_uri(), history.commits[-1], tmp_path, "lib")
    assert current == fresh, differences(current, fresh)

    # `restore --bundle` takes an older one; an unknown one is a usage error; a path repository has none.
    older = listed["bundles"][0]
    back = json.loads(run(cwd, home, "restore", "--repo", "lib", "--bundle", older["uri"], "--json").stdout)
    assert back["bundle"] == older["key"] and back["head"] == history.commits[-2]
    unknown = run(cwd, home, "restore", "--repo", "lib", "--bundle", "nope.bundle", check=False)
    assert unknown.returncode == 2 and "no bundle 'nope.bundle' of lib" in unknown.stderr
    assert run(cwd, home, "backup", check=False).returncode == 2
