"""The main job end to end on real code: after every change and with every change source,
the index equals a fresh full index of the same commit (same ids, same content hashes, no
extra objects)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import kombu
import numpy as np
import pytest

from indexing.changes import parse_json_changes, parse_lines, parse_nul
from tests.conftest import export_index, git, sync


def name_vectors(repo_id: str = "repo") -> dict[str, bytes | None]:
    """Each object's name vector (its bytes; None: never computed) in the current index."""
    from config.settings import get_settings
    from workers.runtime import runtime

    store = runtime().vector_store(get_settings().collection)
    return {o.id: None if o.name_vector is None else np.asarray(o.name_vector, dtype=np.float32).tobytes()
            for o in store.objects(repo_id)}


def fresh_full_index(root: Path, workdir: Path, repo_id: str = "repo",
                     names: dict | None = None) -> list[dict]:
    """Index a clean clone of ``root``'s HEAD in a new home; return its export (and put its
    objects' name vectors into ``names``)."""
    from config.settings import configure, get_settings
    from workers import runtime

    before = get_settings()
    clone = workdir / f"clone-{uuid.uuid4().hex[:8]}"
    git(workdir, "clone", "-q", str(root), str(clone))
    configure(home=workdir / f"fresh-{uuid.uuid4().hex[:8]}", embedder=before.embedder)
    runtime.reset()
    try:
        summary = sync(clone, "all", repo_id=repo_id)
        assert summary["errors"] == 0
        if names is not None:
            names.update(name_vectors(repo_id))
        return export_index()
    finally:
        configure(home=before.home, embedder=before.embedder)
        runtime.reset()


def assert_exact(root: Path, workdir: Path) -> list[dict]:
    current = export_index()
    fresh_names: dict = {}
    fresh = fresh_full_index(root, workdir, names=fresh_names)
    assert [o["id"] for o in current] == [o["id"] for o in fresh]
    assert current == fresh
    # Each object's name vector is the one a fresh index gives it (a renamed or edited function
    # changes its chunk's names; nothing is left never computed).
    current_names = name_vectors()
    assert None not in current_names.values()
    assert current_names == fresh_names
    assert_lexical_exact()
    return current


def assert_lexical_exact(repo: str = "repo") -> None:
    """The full-text index holds exactly the vector side's objects, each with its current content:
    a lexical query of every indexed file's name (each object's terms hold its file name, and
    ``py`` catches a stray of any Python file) returns every object of the inventory, no other
    and no older version."""
    from config.settings import get_settings
    from indexing.lexical import query_terms
    from indexing.store import SearchFilter
    from workers.runtime import runtime

    store = runtime().vector_store(get_settings().collection)
    vector_side = {chunk.id: chunk.content for chunk in store.inventory(repo)}
    names = " ".join(sorted({chunk_path.rsplit("/", 1)[-1] for chunk_path in
                             (c.path for c in store.inventory(repo))} | {"py"}))
    hits = store.lexical_search(query_terms(names), len(vector_side) + 100, SearchFilter(repo=repo))
    assert len(hits) == len({h.id for h in hits})
    assert {h.id: h.content for h in hits} == vector_side


def as_pairs(changes) -> list[tuple[str, str]]:
    return [(c.path, c.kind.value) for c in changes]


def edit_function(path: Path, marker: str) -> None:
    """Insert a statement into the body of the first function defined after the file's middle."""
    lines = path.read_text().splitlines()
    start = len(lines) // 2
    for i in range(start, len(lines)):
        stripped = lines[i].lstrip()
        if stripped.startswith("def ") and lines[i].rstrip().endswith(":"):
            indent = len(lines[i]) - len(stripped) + 4
            lines.insert(i + 1, " " * indent + f"_codeindex_marker = {marker!r}")
            break
    else:
        lines.append(f"# edited {marker}")
    path.write_text("\n".join(lines) + "\n")


def python_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if ".git" not in p.parts)


def test_every_change_source_keeps_the_index_exact(real_repo: Path, index_home: Path, tmp_path: Path) -> None:
    root = real_repo
    work = tmp_path / "work"
    work.mkdir()

    # 1. full scan
    first = sync(root, "all")
    assert first["errors"] == 0 and first["added"] == len(python_files(root)) + 1  # + .gitignore
    assert_exact(root, work)

    # 2. modified and added files, piped as `git diff --name-only`
    files = python_files(root)
    for i, rel in enumerate(files[:3]):
        edit_function(root / rel, f"step2-{i}")
    extra = sorted(Path(kombu.__file__).parent.joinpath("asynchronous").rglob("*.py"))[:2]
    for i, src in enumerate(extra):
        shutil.copyfile(src, root / f"added_{i}_{src.name}")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "step 2")
    summary = sync(root, changes=as_pairs(parse_lines(git(root, "diff", "--name-only", "HEAD~1").splitlines())))
    assert (summary["updated"], summary["added"], summary["errors"]) == (3, 2, 0)
    assert_exact(root, work)

    # 3. renames and deletions, piped as `git diff --name-status`
    files = python_files(root)
    git(root, "mv", files[5], "renamed_a.py")
    git(root, "mv", files[6], f"{Path(files[6]).parent}/renamed_b.py")
    git(root, "rm", "-q", files[7], files[8])
    git(root, "commit", "-q", "-m", "step 3")
    summary = sync(root, changes=as_pairs(parse_lines(git(root, "diff", "--name-status", "HEAD~1").splitlines())))
    assert (summary["deleted"], summary["added"], summary["errors"]) == (4, 2, 0)
    assert_exact(root, work)

    # 4. NUL-separated name-status (`git diff -z --name-status`), a name with a space
    files = python_files(root)
    edit_function(root / files[10], "step4")
    git(root, "mv", files[11], "with space.py")
    git(root, "commit", "-qam", "step 4")
    summary = sync(root, changes=as_pairs(parse_nul(git(root, "diff", "-z", "--name-status", "HEAD~1"))))
    assert (summary["updated"], summary["added"], summary["deleted"]) == (1, 1, 1)
    assert_exact(root, work)

    # 5. the JSON change list of the sync spec
    files = python_files(root)
    edit_function(root / files[12], "step5")
    (root / "json_added.py").write_text("def added():\n    return 'json'\n")
    git(root, "rm", "-q", files[13])
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "step 5")
    document = json.dumps({"repositories": [{"path": str(root), "modified": [files[12]],
                                             "added": ["json_added.py"], "deleted": [files[13]]}]})
    entry = parse_json_changes(document).repositories[0]
    summary = sync(root, changes=as_pairs(entry.changes()))
    assert (summary["updated"], summary["added"], summary["deleted"]) == (1, 1, 1)
    assert_exact(root, work)

    # 6. --detect-changes across several commits (first time: from the --all sync's commit)
    files = python_files(root)
    edit_function(root / files[14], "step6")
    git(root, "commit", "-qam", "step 6a")
    git(root, "mv", files[15], "moved_in_6.py")
    git(root, "rm", "-q", files[16])
    git(root, "commit", "-qam", "step 6b")
    summary = sync(root, "detect")
    assert summary["errors"] == 0
    assert summary["updated"] >= 1 and summary["deleted"] >= 2
    assert_exact(root, work)

    # 7. a file that shrinks loses its surplus chunks
    files = python_files(root)
    biggest = max(files, key=lambda rel: (root / rel).stat().st_size)
    chunks_before = sum(1 for o in export_index() if o["path"] == biggest)
    text = (root / biggest).read_text().splitlines()
    (root / biggest).write_text("\n".join(text[: len(text) // 4]) + "\n")
    git(root, "commit", "-qam", "step 7")
    summary = sync(root, "detect")
    assert summary["updated"] == 1
    exported = assert_exact(root, work)
    chunks_after = [o["chunk_index"] for o in exported if o["path"] == biggest]
    assert len(chunks_after) < chunks_before
    assert sorted(chunks_after) == list(range(len(chunks_after)))


def lance_files(home: Path) -> dict[str, int]:
    return {str(p.relative_to(home)): p.stat().st_size for p in (home / "lancedb").rglob("*") if p.is_file()}


def test_second_identical_sync_writes_nothing(real_repo: Path, index_home: Path) -> None:
    sync(real_repo, "all")
    before = lance_files(index_home)
    again = sync(real_repo, "all")
    assert (again["added"], again["updated"], again["deleted"]) == (0, 0, 0)
    assert again["unchanged"] == len(python_files(real_repo)) + 1
    assert lance_files(index_home) == before


def test_editing_one_function_reembeds_only_its_chunk(real_repo: Path, index_home: Path) -> None:
    sync(real_repo, "all")
    files = [f for f in python_files(real_repo) if (real_repo / f).stat().st_size > 8000][:10]
    for i, rel in enumerate(files):
        edit_function(real_repo / rel, f"reuse-{i}")
    summary = sync(real_repo, changes=[(rel, "modified") for rel in files])
    assert summary["updated"] == len(files)
    assert summary["chunks_embedded"] <= 2 * len(files)
    assert summary["chunks_reused"] > summary["chunks_embedded"]


def test_name_only_rename_keeps_old_path_until_delete_missing(real_repo: Path, index_home: Path, tmp_path: Path) -> None:
    """Plain `git diff --name-only` lists only a rename's new path (documented); a full scan
    with --delete-missing then drops the old one."""
    sync(real_repo, "all")
    old = python_files(real_repo)[3]
    git(real_repo, "mv", old, "renamed_by_name_only.py")
    git(real_repo, "commit", "-qm", "rename")
    sync(real_repo, changes=as_pairs(parse_lines(git(real_repo, "diff", "--name-only", "HEAD~1").splitlines())))
    paths = {o["path"] for o in export_index()}
    assert old in paths and "renamed_by_name_only.py" in paths
    summary = sync(real_repo, "all", delete_missing=True)
    assert summary["deleted"] == 1
    assert_exact(real_repo, tmp_path)


def test_failed_batch_leaves_state_unadvanced_and_next_sync_completes(real_repo: Path, index_home: Path, tmp_path: Path) -> None:
    from config.settings import get_settings
    from indexing.errors import SyncFailedError
    from workers import runtime

    index_home.mkdir(parents=True, exist_ok=True)
    # The embedding cache is what only the batches use: a directory where its file should be.
    (index_home / "embeddings.sqlite").mkdir()
    with pytest.raises(SyncFailedError, match="embedding cache"):
        sync(real_repo, "all")
    state = runtime.runtime().state
    assert state.indexed_paths("repo") == []
    assert state.get_repo("repo").last_commit is None
    runs = state.list_runs()
    assert runs[0].status == "failed"
    assert state.failures()[0].task == "codeindex.embed.batch"

    (index_home / "embeddings.sqlite").rmdir()
    runtime.reset()
    summary = sync(real_repo, "detect")
    assert summary["errors"] == 0 and summary["added"] == len(python_files(real_repo)) + 1
    assert_exact(real_repo, tmp_path)


def test_chunks_left_by_a_failed_sync_are_deleted(real_repo: Path, index_home: Path, tmp_path: Path) -> None:
    """A sync that failed after upserting a longer version of a file leaves chunks the state
    does not count; the next sync of that file finds them in the store and deletes them."""
    import numpy as np

    from config.settings import get_settings
    from indexing.ids import object_id
    from indexing.store import VectorObject
    from workers import runtime

    sync(real_repo, "all")
    target = python_files(real_repo)[2]
    settings = get_settings()
    # The failed sync: granted a fencing token, upserted a longer version of the file, never committed.
    failed_fence = runtime.runtime().state.grant_fence("repo", str(real_repo), settings.collection)
    leftover = VectorObject(
        id=object_id(settings.collection, "repo", target, 500), repo="repo", path=target, chunk_index=500,
        start_line=1, end_line=1, content="left by a failed sync", language="python", content_sha256="0" * 64,
        commit="", indexed_at="", embedding_model="feature-hashing-v1-384", fence=failed_fence,
        vector=np.ones(384, dtype=np.float32) / np.sqrt(384))
    runtime.runtime().vector_store(settings.collection).upsert([leftover])
    edit_function(real_repo / target, "after-failure")
    git(real_repo, "commit", "-qam", "edit after a failed sync")
    summary = sync(real_repo, "detect")
    assert summary["updated"] == 1
    assert_exact(real_repo, tmp_path)


def live_models(cls: type) -> int:
    """How many instances of ``cls`` this process holds, after a collection."""
    import gc

    gc.collect()
    return sum(isinstance(o, cls) for o in gc.get_objects())


def test_an_embedded_sync_lets_go_of_its_plan_while_the_batches_run(real_repo: Path, index_home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """In eager mode (the embedded sync) the chord runs inside the plan task; the plan's
    per-path models (one ``PlannedFile`` a path: megabytes for a 10,000-path list) are let go
    before it, so while a batch runs only that batch's files exist as models
    (docs/performance.md, D)."""
    from config.settings import configure, get_settings
    from indexing import sync as sync_module
    from indexing.messages import PlannedFile
    from workers import runtime

    configure(home=index_home, embedder="hashing", batch_files=8)
    runtime.reset()
    assert get_settings().batch_files == 8
    before = live_models(PlannedFile)  # an earlier test in this process may have left some
    alive: list[int] = []
    index_batch = sync_module.index_batch

    def counted(job, *args, **kwargs):
        alive.append(live_models(PlannedFile) - before)
        return index_batch(job, *args, **kwargs)

    monkeypatch.setattr(sync_module, "index_batch", counted)
    summary = sync(real_repo, "all")
    assert summary["errors"] == 0 and summary["added"] > 40
    assert len(alive) == -(-summary["added"] // 8)  # every batch was seen
    assert max(alive) <= 8, alive


@pytest.mark.parametrize("segment_rows", [10_000, 40], ids=["the commit folds", "the batches fold"])
def test_an_embedded_sync_folds_the_full_text_index_with_no_batch_or_commit_records_alive(
        real_repo: Path, index_home: Path, monkeypatch: pytest.MonkeyPatch, segment_rows: int) -> None:
    """A fold of the full-text index (the largest transient of a sync) runs between batches once
    a batch's objects are gone (``settle(final=False)``; a write never folds), and at the commit
    before the commit task turns its message into models, one ``PlannedFile`` and one
    ``FileResult`` a path (24 MB for 10,000 paths), so none of them adds to its peak
    (docs/performance.md, D)."""
    from config.settings import configure
    from indexing import lance_store
    from indexing.messages import FileResult, PlannedFile
    from indexing.store import VectorObject
    from workers import runtime

    configure(home=index_home, embedder="hashing", batch_files=8)
    runtime.reset()
    monkeypatch.setattr(lance_store, "FTS_SEGMENT_ROWS", segment_rows)
    monkeypatch.setattr(lance_store, "FTS_REFRESH_ROWS", 1)  # the commit's settle folds whatever is left
    before = live_models(PlannedFile) + live_models(FileResult), live_models(VectorObject)
    at_folds: list[tuple[int, int]] = []  # (models, objects) alive at each fold
    fold = lance_store._fold_into_index

    def counted(*args, **kwargs):
        at_folds.append((live_models(PlannedFile) + live_models(FileResult) - before[0],
                         live_models(VectorObject) - before[1]))
        return fold(*args, **kwargs)

    monkeypatch.setattr(lance_store, "_fold_into_index", counted)
    summary = sync(real_repo, "all")
    assert summary["errors"] == 0 and summary["added"] > 40
    if segment_rows == 10_000:
        assert at_folds == [(0, 0)]  # the commit's fold alone, before its models
    else:
        assert len(at_folds) > 2, at_folds
        # a batch's files and results at most, none of its objects
        assert all(models <= 16 and objects == 0 for models, objects in at_folds), at_folds
