"""`codeindex verify` against a store that drifted from the state: data files deleted (the store
cannot be read), objects missing, extra or corrupt. It finds each, `--repair` makes the index
exact again, and a sync on a store that cannot be read exits 4 naming `verify --repair`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_real_repo
from tests.e2e.test_hostile import assert_exact, assert_one_line_error, run, tracked


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = make_real_repo(tmp_path / "repo", celery_files=14, kombu_files=12)
    assert run(root, "sync", "--all").returncode == 0
    return root


def table(root: Path):
    import lancedb

    return lancedb.connect(str(root / ".codeindex" / "lancedb")).open_table("codeindex")


def verify_json(root: Path, *args: str) -> tuple[int, dict]:
    proc = run(root, "verify", "--json", *args)
    assert "Traceback" not in proc.stderr.decode(), proc.stderr.decode()
    return proc.returncode, json.loads(proc.stdout)


def test_an_intact_index_verifies(repo: Path) -> None:
    code, report = verify_json(repo)
    assert code == 0 and report["ok"] and report["repositories"][0]["stored"] == report["repositories"][0]["expected"]


def test_deleted_data_files_are_found_refused_by_sync_and_repaired(repo: Path, tmp_path: Path) -> None:
    data = sorted((repo / ".codeindex" / "lancedb" / "codeindex.lance" / "data").glob("*.lance"))
    assert data
    data[0].unlink()
    code, report = verify_json(repo)
    assert code == 1 and not report["readable"] and "Not found" in report["error"]
    # A sync no longer reports the files unchanged: it stops, and names the repair.
    proc = run(repo, "sync", "--all")
    assert_one_line_error(proc, 4, r"the vector store cannot be read .*`codeindex verify --repair`")
    code, report = verify_json(repo, "--repair")
    assert code == 0 and report["ok"] and report["repaired_runs"]
    assert run(repo, "sync", "--all").returncode == 0
    assert_exact(repo, tmp_path)


def test_missing_extra_and_corrupt_objects_are_listed_and_repaired(repo: Path, tmp_path: Path) -> None:
    files = tracked(repo)
    lance = table(repo)
    for gone in files[0], files[2]:
        lance.delete(f"path = '{gone}' AND chunk_index = 0")  # missing
    rows = lance.search().where(f"path = '{files[1]}'").limit(1).to_list()
    corrupt = {**rows[0], "content": rows[0]["content"] + "\n# tampered"}
    lance.delete(f"id = '{rows[0]['id']}'")
    extra = {**rows[0], "id": "00000000-0000-5000-8000-000000000001", "path": "not/in/the/state.py",
             "chunk_index": 0}
    lance.add([{**r, "vector": np.asarray(r["vector"], dtype=np.float32)} for r in (corrupt, extra)])
    code, report = verify_json(repo)
    found = report["repositories"][0]
    assert code == 1 and not found["ok"]
    assert found["missing"] == {files[0]: [0], files[2]: [0]}
    assert found["corrupt"] == {files[1]: [rows[0]["chunk_index"]]}
    assert found["extra"] == {"not/in/the/state.py": [0]}
    text = run(repo, "verify").stdout.decode()
    assert f"[MISSING] {files[0]}: chunks 0" in text and "NOT exact" in text and "verify --repair" in text
    # The count differs from the state's (a cheap check that every sync makes; verify is the
    # thorough one): a sync refuses to go on as if nothing happened.
    assert_one_line_error(run(repo, "sync", "--all"), 4, r"holds \d+ objects of repository repo where the state "
                                                          r"records \d+.*verify --repair")
    code, report = verify_json(repo, "--repair")
    assert code == 0 and report["ok"], report
    assert run(repo, "sync", "--all").returncode == 0
    assert_exact(repo, tmp_path)


def test_an_index_from_before_name_vectors_searches_verifies_unnamed_and_repair_computes_them(
        repo: Path, tmp_path: Path) -> None:
    lance = table(repo)
    lance.drop_columns(["name_vector", "names_sha256"])  # the table as an older codeindex wrote it
    stored = lance.count_rows()
    # Search works on it as before (each chunk ranked by its vector alone)...
    proc = run(repo, "search", "--json", "-k", "3", "publish a message to an exchange")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 3, proc.stderr.decode()
    # ... and verify names every object whose name vector was never computed.
    code, report = verify_json(repo)
    found = report["repositories"][0]
    assert code == 1 and not found["ok"] and not (found["missing"] or found["extra"] or found["corrupt"])
    assert sum(len(v) for v in found["unnamed"].values()) == stored
    assert "[NO NAME VECTOR]" in run(repo, "verify").stdout.decode()
    code, report = verify_json(repo, "--repair")
    assert code == 0 and report["ok"] and report["repaired_runs"], report
    assert table(repo).to_arrow().column("name_vector").null_count == 0
    assert_exact(repo, tmp_path)  # the export's names_sha256 included: the names a fresh index computes
