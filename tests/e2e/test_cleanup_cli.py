"""``codeindex cleanup`` as a user runs it: a subprocess on an embedded index, its lines, its
JSON, its exit codes; ``--dry-run`` lists and removes nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import git, make_real_repo
from tests.e2e.test_cli import out, run


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_real_repo(tmp_path / "repo", celery_files=6, kombu_files=6)


def cache_keys(repo: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(repo / ".codeindex" / "embeddings.sqlite") as conn:
        return set(conn.execute("SELECT model, text_sha256 FROM embeddings"))


def lance_files(repo: Path) -> set[str]:
    return {str(p.relative_to(repo)) for p in (repo / ".codeindex" / "lancedb").rglob("*") if p.is_file()}


def test_dry_run_lists_and_removes_nothing_then_cleanup_removes_it_once(repo: Path) -> None:
    assert run(repo, "sync", "--all").returncode == 0
    edited = sorted(repo.rglob("*.py"))[0]
    edited.write_text("def replaced():\n    return 'new'\n")
    git(repo, "commit", "-qam", "replace a file")
    assert run(repo, "sync", "--all").returncode == 0
    keys, files, export = cache_keys(repo), lance_files(repo), out(run(repo, "export"))

    dry = run(repo, "cleanup", "--dry-run")
    assert dry.returncode == 0, dry.stderr.decode()
    lines = out(dry).splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["runs", "failures", "bundles", "downloads", "clones",
                                                          "embeddings", "compaction", "artifacts"]
    embeddings = next(line for line in lines if line.startswith("embeddings: "))
    assert embeddings.startswith("embeddings: would remove ") and not embeddings.startswith("embeddings: would remove 0")
    assert cache_keys(repo) == keys and lance_files(repo) == files and out(run(repo, "export")) == export

    done = run(repo, "cleanup", "--json")
    assert done.returncode == 0, done.stderr.decode()
    results = {r["rule"]: r for r in json.loads(out(done))["results"]}
    assert results["embeddings"]["removed"] and not results["embeddings"]["dry_run"]
    assert len(cache_keys(repo)) == len(keys) - len(results["embeddings"]["removed"])
    assert out(run(repo, "export")) == export
    again = run(repo, "cleanup")
    assert again.returncode == 0 and all(" removed 0" in line for line in out(again).splitlines()), out(again)


def test_an_unknown_rule_is_a_usage_error(repo: Path) -> None:
    proc = run(repo, "cleanup", "--rule", "embeddings", "--rule", "nonsense")
    assert proc.returncode == 2
    assert "unknown cleanup rule nonsense" in proc.stderr.decode()
