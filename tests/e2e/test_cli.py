"""The ``codeindex`` command as a user runs it: a subprocess, pipes, exit codes, output."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import git, make_real_repo

# The installed console script, as a user runs it (``python -m`` would put the repository
# under test, which holds a ``kombu/`` folder, ahead of the real packages on sys.path).
CODEINDEX = [str(Path(sys.executable).parent / "codeindex")]


def run(root: Path, *args: str, stdin: str | bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    environment.update({"CODEINDEX_EMBEDDER": "hashing", **(env or {})})
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run([*CODEINDEX, *args], cwd=root, input=data, capture_output=True, env=environment, timeout=300)


def out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.decode()


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_real_repo(tmp_path / "repo", celery_files=15, kombu_files=15)


def test_full_sync_prints_spec_output_and_second_run_is_a_no_op(repo: Path) -> None:
    first = run(repo, "sync", "--all")
    assert first.returncode == 0, first.stderr.decode()
    text = out(first)
    assert text.startswith("Syncing to collection: codeindex\n")
    assert "[ADD]    celery_app/" in text and "Summary:" in text and "  Errors:    0" in text
    second = run(repo, "sync", "--all")
    assert "  Added:     0 files" in out(second) and "  Unchanged: 31 files" in out(second)


def test_stdin_sources_name_status_and_nul(repo: Path) -> None:
    run(repo, "sync", "--all")
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*.py"))
    git(repo, "mv", files[0], "moved.py")
    (repo / files[1]).write_text((repo / files[1]).read_text() + "\n# edited\n")
    git(repo, "commit", "-qam", "change")
    proc = run(repo, "sync", "--stdin", stdin=git(repo, "diff", "--name-status", "HEAD~1"))
    text = out(proc)
    assert proc.returncode == 0
    assert f"[DELETE] {files[0]}" in text and "[ADD]    moved.py" in text and f"[UPDATE] {files[1]}" in text
    (repo / files[2]).write_text((repo / files[2]).read_text() + "\n# edited again\n")
    nul = run(repo, "sync", "--stdin", "-0", stdin=f"{files[2]}\0")
    assert f"[UPDATE] {files[2]}" in out(nul)


def test_json_change_list_in_and_json_document_out(repo: Path, tmp_path: Path) -> None:
    run(repo, "sync", "--all")
    target = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*.py"))[4]
    (repo / target).write_text("def replaced():\n    return 1\n")
    changes = tmp_path / "changes.json"
    changes.write_text(json.dumps({"repositories": [{"path": str(repo), "modified": [target]}]}))
    proc = run(repo, "sync", "--json", "--changes", str(changes))
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(out(proc))
    assert doc["updated"] == 1 and doc["files"][0]["path"] == target and doc["files"][0]["action"] == "UPDATE"
    status = json.loads(out(run(repo, "status", "--json")))
    assert status["repositories"][0]["files"] == 31 and status["embedding_model"] == "feature-hashing-v1-384"


def test_dry_run_writes_nothing_anywhere(repo: Path) -> None:
    dry = run(repo, "sync", "--all", "--dry-run")
    assert dry.returncode == 0 and "Dry run" in out(dry) and "[ADD]" in out(dry)
    assert not (repo / ".codeindex").exists()
    run(repo, "sync", "--all")
    before = tree_digest(repo / ".codeindex")
    (repo / "new_file.py").write_text("def new():\n    pass\n")
    git(repo, "rm", "-q", sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*.py"))[0])
    dry = run(repo, "sync", "--stdin", "--dry-run", "--delete-missing",
              stdin="new_file.py\n" + git(repo, "diff", "--cached", "--name-status"))
    assert "[ADD]    new_file.py" in out(dry) and "[DELETE]" in out(dry)
    assert tree_digest(repo / ".codeindex") == before


def test_bad_inputs_are_reported_and_do_not_stop_the_sync(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("outside\n")
    (repo / "escape.py").symlink_to(outside)
    (repo / "blob.bin").write_bytes(b"\x00\x01binary" * 10)
    (repo / "garbage.txt").write_bytes(bytes(range(1, 31)) * 20 + b"\xff")
    (repo / "latin.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (repo / "big.py").write_text("x = 1\n" * 200)
    (repo / "ok.py").write_text("def ok():\n    return True\n")
    paths = ["/etc/passwd", "../outside.py", "escape.py", "blob.bin", "garbage.txt", "latin.txt", "big.py",
             "missing.py", "ok.py"]
    proc = run(repo, "sync", "--stdin", stdin="\n".join(paths) + "\n", env={"CODEINDEX_MAX_FILE_SIZE": "1000"})
    text = out(proc)
    assert proc.returncode == 1, text
    assert "[ERROR]  /etc/passwd: outside the repository root" in text
    assert "[ERROR]  ../outside.py: outside the repository root" in text
    assert "[ERROR]  escape.py: symlink pointing outside the repository" in text
    assert "[SKIP]   blob.bin: binary file" in text
    assert "[ERROR]  garbage.txt: undecodable" in text
    assert "[SKIP]   big.py: oversized" in text
    assert "[SKIP]   missing.py: missing on disk" in text
    assert "[ADD]    latin.txt" in text and "[ADD]    ok.py" in text
    assert "  Errors:    4" in text
    exported = [json.loads(line) for line in out(run(repo, "export")).splitlines()]
    assert {o["path"] for o in exported} == {"latin.txt", "ok.py"}


def test_usage_errors_exit_2(repo: Path) -> None:
    both = run(repo, "sync", "--all", "--detect-changes")
    assert both.returncode == 2 and "choose one change source" in both.stderr.decode()
    bad = run(repo, "sync", "--json", "--stdin", stdin='{"repositories": [{"path": 3}]')
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr.decode()
    shape = run(repo, "sync", "--json", "--stdin", stdin='{"repos": []}')
    assert shape.returncode == 2 and "sync spec's format" in shape.stderr.decode()
    assert run(repo, "sync", "--bogus").returncode == 2


def test_mass_delete_guard_exits_3_and_force_proceeds(repo: Path) -> None:
    run(repo, "sync", "--all")
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*.py"))
    git(repo, "rm", "-q", *files[:10])
    git(repo, "commit", "-qm", "delete a third")
    listing = git(repo, "diff", "--name-status", "HEAD~1")
    refused = run(repo, "sync", "--stdin", stdin=listing)
    assert refused.returncode == 3 and "--force" in refused.stderr.decode()
    assert json.loads(out(run(repo, "status", "--json")))["repositories"][0]["files"] == 31
    forced = run(repo, "sync", "--stdin", "--force", stdin=listing)
    assert forced.returncode == 0 and "  Deleted:   10 files" in out(forced)


def test_another_model_is_refused(repo: Path) -> None:
    run(repo, "sync", "--all")
    (repo / "x.py").write_text("def x():\n    pass\n")
    other = run(repo, "sync", "--stdin", stdin="x.py\n", env={"CODEINDEX_HASHING_DIMENSION": "128"})
    assert other.returncode == 3 and "feature-hashing-v1-384" in other.stderr.decode()


def test_search_status_export(repo: Path) -> None:
    run(repo, "sync", "--all")
    hits = json.loads(out(run(repo, "search", "connection pool acquire release", "-k", "3", "--json")))
    assert len(hits) == 3 and all(h["end_line"] >= h["start_line"] >= 1 for h in hits)
    assert hits[0]["score"] >= hits[-1]["score"]
    text = out(run(repo, "search", "connection pool", "-k", "2"))
    assert text.startswith(" 1. ") and ":" in text.splitlines()[0]
    lines = out(run(repo, "export")).splitlines()
    objects = [json.loads(line) for line in lines]
    assert [o["id"] for o in objects] == sorted(o["id"] for o in objects)
    assert set(objects[0]) == {"id", "repo", "path", "chunk_index", "start_line", "end_line", "content_sha256",
                               "embedding_model", "names_sha256"}
    with_vectors = json.loads(out(run(repo, "export", "--vectors")).splitlines()[0])
    assert len(with_vectors["vector"]) == 384


def test_help_explains_the_options(repo: Path) -> None:
    text = out(run(repo, "sync", "--help"))
    for option in ("--stdin", "--json", "--changes", "--detect-changes", "--all", "--delete-missing", "--dry-run",
                   "--force", "-0"):
        assert option in text


def test_progress_bar_on_a_terminal_only(repo: Path, tmp_path: Path) -> None:
    """With standard output on a terminal (util-linux ``script`` gives it a pty) a progress
    bar is drawn on standard error; piped, the output is the plain text alone."""
    typescript = tmp_path / "typescript"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    environment.update({"CODEINDEX_EMBEDDER": "hashing", "CODEINDEX_BATCH_FILES": "8"})
    subprocess.run(["script", "-qec", f"{CODEINDEX[0]} sync --all", str(typescript)], cwd=repo,
                   env=environment, capture_output=True, timeout=300, check=True)
    screen = typescript.read_bytes().decode(errors="replace")
    assert "indexing repo" in screen and "31/31" in screen and "Summary:" in screen
    piped = run(repo, "sync", "--all")
    assert "indexing repo" not in out(piped) + piped.stderr.decode()


def test_version(repo: Path) -> None:
    proc = run(repo, "--version")
    assert proc.returncode == 0 and out(proc).startswith("codeindex ")


def test_store_uri_setting_places_the_vectors(repo: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "vectors"
    proc = run(repo, "sync", "--all", env={"CODEINDEX_STORE_URI": str(elsewhere)})
    assert proc.returncode == 0
    assert any(elsewhere.rglob("*.lance")) and not (repo / ".codeindex" / "lancedb").exists()
    exported = out(run(repo, "export", env={"CODEINDEX_STORE_URI": str(elsewhere)})).splitlines()
    assert len(exported) > 31
