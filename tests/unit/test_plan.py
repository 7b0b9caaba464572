"""The sync planner with a real SQLite state store (indexing/sync.py: plan_sync, Plan.batches)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.errors import MassDeleteError, RefusedError, StaleFenceError
from indexing.messages import Action, PlannedFile, SyncRequest
from indexing.scanner import FileFilter
from indexing.state import FileState, SQLiteStateStore, utcnow
from indexing.sync import Plan, PlanLimits, plan_sync

REPO_ID = "repo"
LIMITS = PlanLimits(max_file_size=1000, batch_files=10, batch_bytes=10_000, delete_threshold=0.2)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    return r


@pytest.fixture()
def state(tmp_path: Path) -> SQLiteStateStore:
    return SQLiteStateStore(tmp_path / "state" / "state.db")


def write(root: Path, rel: str, data: str | bytes) -> bytes:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    path.write_bytes(raw)
    return raw


def request(root: Path, changes: list[tuple[str, str]], **kw) -> SyncRequest:
    return SyncRequest(run_id="run-1", repo_id=REPO_ID, root=str(root), collection="code",
                       source="paths", changes=changes, **kw)


def plan(root: Path, state: SQLiteStateStore, changes, limits: PlanLimits = LIMITS, **kw) -> Plan:
    return plan_sync(request(root, changes, **kw), state, FileFilter(root), limits)


def record(state: SQLiteStateStore, root: Path, files: dict[str, bytes], chunks: int = 2) -> int:
    """Record ``files`` as indexed, the way commit_sync does."""
    fence = state.grant_fence(REPO_ID, str(root), "code")
    state.commit_files(
        REPO_ID, fence,
        [FileState(p, hashlib.sha256(d).hexdigest(), len(d), chunks, "utf-8", "python", fence, utcnow())
         for p, d in files.items()],
        [], None)
    return fence


def by_path(p: Plan) -> dict[str, PlannedFile]:
    return {f.path: f for f in p.files}


# --------------------------------------------------------------------------- decisions


def test_new_files_are_added(root, state):
    a = write(root, "a.py", "print('a')\n")
    write(root, "pkg/b.py", "B = 2\n")
    result = plan(root, state, [("a.py", "listed"), ("pkg/b.py", "added")])
    files = by_path(result)
    assert [f.path for f in result.files] == ["a.py", "pkg/b.py"]
    assert files["a.py"].action is Action.ADD
    assert files["a.py"].size == len(a)
    assert files["a.py"].sha256 == hashlib.sha256(a).hexdigest()
    assert files["a.py"].old_chunks == 0
    assert files["pkg/b.py"].action is Action.ADD
    assert [f.path for f in result.to_index()] == ["a.py", "pkg/b.py"]
    assert result.advance_commit is False  # a listed source never moves the indexed commit


def test_recorded_files_are_unchanged(root, state):
    data = {"a.py": write(root, "a.py", "x = 1\n"), "b.py": write(root, "b.py", "y = 2\n")}
    record(state, root, data, chunks=3)
    result = plan(root, state, [("a.py", "modified"), ("b.py", "listed")])
    assert {f.path: f.action for f in result.files} == {"a.py": Action.UNCHANGED, "b.py": Action.UNCHANGED}
    assert by_path(result)["a.py"].old_chunks == 3
    assert result.to_index() == []
    assert result.batches(10, 10_000) == []


def test_changed_content_is_an_update(root, state):
    record(state, root, {"a.py": write(root, "a.py", "x = 1\n")}, chunks=4)
    new = write(root, "a.py", "x = 2\n")
    entry = by_path(plan(root, state, [("a.py", "listed")]))["a.py"]
    assert entry.action is Action.UPDATE
    assert entry.sha256 == hashlib.sha256(new).hexdigest()
    assert entry.old_chunks == 4


def test_absolute_and_dotted_paths_are_normalised(root, state):
    write(root, "pkg/a.py", "A = 1\n")
    result = plan(root, state, [(str(root / "pkg" / "a.py"), "listed")])
    assert [(f.path, f.action) for f in result.files] == [("pkg/a.py", Action.ADD)]
    result = plan(root, state, [("./x/../pkg/a.py", "modified")])
    assert [(f.path, f.action) for f in result.files] == [("pkg/a.py", Action.ADD)]


def test_deleted_file_named_deleted_is_deleted(root, state):
    record(state, root, {"gone.py": b"old\n" * 10, "kept.py": write(root, "kept.py", "k\n"),
                         "k2.py": b"", "k3.py": b"", "k4.py": b""}, chunks=5)
    entry = by_path(plan(root, state, [("gone.py", "deleted")]))["gone.py"]
    assert entry.action is Action.DELETE
    assert entry.old_chunks == 5
    assert entry.size == 40


def test_deleted_but_never_indexed_says_nothing(root, state):
    assert plan(root, state, [("never.py", "deleted")]).files == []


def test_listed_missing_file_is_skipped_with_a_hint(root, state):
    record(state, root, {f"f{i}.py": b"x" for i in range(10)})
    entry = by_path(plan(root, state, [("f0.py", "listed")]))["f0.py"]
    assert entry.action is Action.SKIP
    assert "missing on disk" in entry.reason
    assert "--delete-missing" in entry.reason
    # a "modified" or "added" missing file is not deleted either
    for kind in ("modified", "added"):
        assert by_path(plan(root, state, [("f0.py", kind)]))["f0.py"].action is Action.SKIP


def test_listed_missing_unknown_file_is_skipped_without_hint(root, state):
    entry = by_path(plan(root, state, [("ghost.py", "listed")]))["ghost.py"]
    assert entry.action is Action.SKIP
    assert "missing on disk" in entry.reason and "--delete-missing" not in entry.reason


def test_delete_missing_deletes_listed_missing_files(root, state):
    record(state, root, {f"f{i}.py": b"x" for i in range(10)})
    entry = by_path(plan(root, state, [("f0.py", "listed")], delete_missing=True))["f0.py"]
    assert entry.action is Action.DELETE
    assert entry.old_chunks == 2


def test_file_on_disk_is_never_deleted(root, state):
    data = {"a.py": write(root, "a.py", "a\n")}
    record(state, root, data)
    # The source says deleted, but the file is there (re-created): look at the disk.
    entry = by_path(plan(root, state, [("a.py", "deleted")], delete_missing=True))["a.py"]
    assert entry.action is Action.UNCHANGED


def test_path_outside_root_is_an_error(root, state, tmp_path):
    write(tmp_path, "outside.py", "x\n")
    write(root, "a.py", "a\n")
    result = plan(root, state, [("../outside.py", "listed"), ("a.py", "listed"), ("/etc/passwd", "modified")])
    files = by_path(result)
    assert files["../outside.py"].action is Action.ERROR
    assert "outside" in files["../outside.py"].reason
    assert files["/etc/passwd"].action is Action.ERROR
    assert files["a.py"].action is Action.ADD
    assert len(result.files) == 3


def test_symlink_leaving_root_is_an_error(root, state, tmp_path):
    write(tmp_path, "secret.py", "TOKEN = 1\n")
    os.symlink(tmp_path / "secret.py", root / "leak.py")
    entry = by_path(plan(root, state, [("leak.py", "listed")]))["leak.py"]
    assert entry.action is Action.ERROR
    assert "symlink" in entry.reason


def test_binary_file_is_skipped(root, state):
    write(root, "logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    entry = by_path(plan(root, state, [("logo.png", "added")]))["logo.png"]
    assert entry.action is Action.SKIP
    assert "binary" in entry.reason


def test_oversized_file_is_skipped(root, state):
    write(root, "big.py", "x" * (LIMITS.max_file_size + 1))
    write(root, "edge.py", "y" * LIMITS.max_file_size)
    files = by_path(plan(root, state, [("big.py", "listed"), ("edge.py", "listed")]))
    assert files["big.py"].action is Action.SKIP
    assert "oversized" in files["big.py"].reason
    assert files["edge.py"].action is Action.ADD


def test_undecodable_file_is_an_error(root, state):
    write(root, "junk.dat", bytes([1, 2, 3, 0xFF, 4, 5, 6, 7]) * 20)
    entry = by_path(plan(root, state, [("junk.dat", "listed")]))["junk.dat"]
    assert entry.action is Action.ERROR
    assert "undecodable" in entry.reason


def test_ignored_file_is_skipped(root, state):
    write(root, ".gitignore", "*.log\n")
    write(root, "debug.log", "noise\n")
    entry = by_path(plan(root, state, [("debug.log", "listed")]))["debug.log"]
    assert entry.action is Action.SKIP
    assert "gitignore" in entry.reason


def test_latin1_file_is_added(root, state):
    write(root, "old.py", "# caf\xe9\n".encode("latin-1"))
    assert by_path(plan(root, state, [("old.py", "listed")]))["old.py"].action is Action.ADD


def test_full_scan_with_delete_missing(root, state):
    on_disk = {name: write(root, name, f"{name} = 1\n") for name in ("a.py", "b.py", "c.py", "d.py")}
    record(state, root, {**on_disk, "old.py": b"o\n"})
    write(root, "new.py", "n\n")
    req = SyncRequest(run_id="r", repo_id=REPO_ID, root=str(root), collection="code", source="all",
                      delete_missing=True)
    result = plan_sync(req, state, FileFilter(root), LIMITS)
    actions = {f.path: f.action for f in result.files}
    assert actions == {"a.py": Action.UNCHANGED, "b.py": Action.UNCHANGED, "c.py": Action.UNCHANGED,
                       "d.py": Action.UNCHANGED, "new.py": Action.ADD, "old.py": Action.DELETE}
    assert result.advance_commit is True
    # without --delete-missing a full scan does not look at indexed files that are gone
    req = req.model_copy(update={"delete_missing": False})
    assert "old.py" not in {f.path for f in plan_sync(req, state, FileFilter(root), LIMITS).files}


# --------------------------------------------------------------------------- mass-delete guard


def _indexed(state, root, n: int) -> list[str]:
    names = [f"f{i:03d}.py" for i in range(n)]
    record(state, root, {name: b"x = 1\n" for name in names})
    return names


def test_mass_delete_above_threshold_is_refused(root, state):
    names = _indexed(state, root, 10)
    with pytest.raises(MassDeleteError) as info:
        plan(root, state, [(n, "deleted") for n in names[:3]])
    message = str(info.value)
    assert "3 of 10" in message and "--force" in message
    assert isinstance(info.value, RefusedError) and info.value.exit_code == 3


def test_mass_delete_exactly_at_threshold_is_allowed(root, state):
    names = _indexed(state, root, 10)
    result = plan(root, state, [(n, "deleted") for n in names[:2]])
    assert [f.action for f in result.files] == [Action.DELETE, Action.DELETE]


def test_mass_delete_with_force(root, state):
    names = _indexed(state, root, 10)
    result = plan(root, state, [(n, "deleted") for n in names], force=True)
    assert len(result.files) == 10
    assert all(f.action is Action.DELETE for f in result.files)


def test_mass_delete_via_delete_missing_is_guarded(root, state):
    names = _indexed(state, root, 5)
    with pytest.raises(MassDeleteError):
        plan(root, state, [(n, "listed") for n in names[:2]], delete_missing=True)
    assert len(plan(root, state, [(n, "listed") for n in names[:1]], delete_missing=True).files) == 1


@settings(max_examples=30, deadline=None, database=None)
@given(st.integers(1, 60), st.data())
def test_property_mass_delete_threshold(tmp_path_factory, indexed, data):
    base = tmp_path_factory.mktemp("guard")
    root = base / "repo"
    root.mkdir()
    st_ = SQLiteStateStore(base / "state.db")
    names = _indexed(st_, root, indexed)
    deleting = data.draw(st.integers(1, indexed), label="deleting")
    changes = [(n, "deleted") for n in names[:deleting]]
    if deleting * 5 <= indexed:  # at most 20%: allowed
        result = plan(root, st_, changes)
        assert sum(f.action is Action.DELETE for f in result.files) == deleting
    else:
        with pytest.raises(MassDeleteError):
            plan(root, st_, changes)
    assert len(plan(root, st_, changes, force=True).files) == deleting


# --------------------------------------------------------------------------- batches


def _plan_of(sizes: list[int], actions: list[Action] | None = None) -> Plan:
    actions = actions or [Action.ADD] * len(sizes)
    return Plan([PlannedFile(path=f"f{i}.py", action=a, size=s) for i, (s, a) in enumerate(zip(sizes, actions))],
                commit="", advance_commit=False)


def test_batches_respect_max_files():
    batches = _plan_of([1] * 7).batches(max_files=3, max_bytes=10**9)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [f.path for b in batches for f in b] == [f"f{i}.py" for i in range(7)]


def test_batches_respect_max_bytes():
    batches = _plan_of([40, 40, 40, 10, 100, 5]).batches(max_files=100, max_bytes=100)
    assert [[f.size for f in b] for b in batches] == [[40, 40], [40, 10], [100], [5]]


def test_batches_oversized_file_gets_its_own_batch():
    batches = _plan_of([10, 500, 10]).batches(max_files=100, max_bytes=100)
    assert [[f.size for f in b] for b in batches] == [[10], [500], [10]]


def test_batches_only_hold_files_to_index():
    p = _plan_of([1, 2, 3, 4, 5, 6], [Action.ADD, Action.UNCHANGED, Action.UPDATE, Action.DELETE, Action.SKIP,
                                      Action.ERROR])
    assert [[f.path for f in b] for b in p.batches(10, 100)] == [["f0.py", "f2.py"]]


@settings(max_examples=100, deadline=None, database=None)
@given(
    st.lists(st.tuples(st.integers(0, 5000), st.sampled_from(list(Action))), max_size=60),
    st.integers(1, 12),
    st.integers(1, 20_000),
)
def test_property_batches(files, max_files, max_bytes):
    p = _plan_of([s for s, _ in files], [a for _, a in files])
    batches = p.batches(max_files, max_bytes)
    # every file to index, once, in order
    assert [f for b in batches for f in b] == p.to_index()
    for b in batches:
        assert 1 <= len(b) <= max_files
        assert sum(f.size for f in b) <= max_bytes or len(b) == 1
    # greedy: a batch is closed only when the next file would not fit
    for b, nxt in zip(batches, batches[1:]):
        assert len(b) == max_files or sum(f.size for f in b) + nxt[0].size > max_bytes


# --------------------------------------------------------------------------- the state store the planner reads


def test_state_fences_and_stale_writer(root, state):
    first = state.grant_fence(REPO_ID, str(root), "code")
    second = state.grant_fence(REPO_ID, str(root), "code")
    assert (first, second) == (1, 2)
    fs = FileState("a.py", "0" * 64, 1, 1, "utf-8", "python", second, utcnow())
    state.commit_files(REPO_ID, second, [fs], [], "abc123")
    assert state.get_repo(REPO_ID).last_commit == "abc123"
    with pytest.raises(StaleFenceError):
        state.commit_files(REPO_ID, first, [], ["a.py"], None)
    assert state.indexed_paths(REPO_ID) == ["a.py"]  # the stale delete did nothing
    state.commit_files(REPO_ID, second, [], ["a.py"], None)  # the same fence may commit again
    assert state.indexed_paths(REPO_ID) == []


def test_state_file_states_many_paths(root, state):
    names = [f"d{i // 100}/f{i:04d}.py" for i in range(1203)]  # more than one SQL batch
    record(state, root, {n: n.encode() for n in names})
    known = state.file_states(REPO_ID, names + ["absent.py"] + names[:5])
    assert set(known) == set(names)
    assert known["d3/f0345.py"].sha256 == hashlib.sha256(b"d3/f0345.py").hexdigest()
    assert state.indexed_paths(REPO_ID) == sorted(names)
    assert state.file_states("other-repo", names[:3]) == {}


def test_state_readonly_missing_file_reads_empty(tmp_path):
    path = tmp_path / "nothing" / "state.db"
    ro = SQLiteStateStore(path, readonly=True)
    assert ro.indexed_paths(REPO_ID) == []
    assert ro.file_states(REPO_ID, ["a.py"]) == {}
    assert ro.get_repo(REPO_ID) is None
    assert not path.exists() and not path.parent.exists()


def test_plan_with_readonly_state_sees_recorded_files(root, state, tmp_path):
    record(state, root, {"a.py": write(root, "a.py", "a\n")})
    ro = SQLiteStateStore(tmp_path / "state" / "state.db", readonly=True)
    assert by_path(plan(root, ro, [("a.py", "listed")]))["a.py"].action is Action.UNCHANGED


def test_paths_in_excluded_dirs_are_skipped(root, state):
    write(root, ".git/config", "[core]\n")
    write(root, ".codeindex/state.db", "x")
    files = by_path(plan(root, state, [(".git/config", "modified"), (".codeindex/state.db", "listed")]))
    assert {p: f.action for p, f in files.items()} == {".git/config": Action.SKIP, ".codeindex/state.db": Action.SKIP}
    assert all("excluded directory" in f.reason for f in files.values())
