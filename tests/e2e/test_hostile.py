"""Hostile and broken input through the command, as a subprocess: every case ends with the exit
code its kind documents, a one-line message and no traceback, and the next sync leaves the
index equal to a fresh full index of the same tree (same ids and content hashes, nothing
extra). README "Exit codes" and "Safety" state the rules these cases hold the command to."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import git, make_real_repo
from tests.e2e.test_cli import CODEINDEX

SECRET = "codeindex-must-never-index-this-8f2c1e"
NEXT_SYNC = ("sync", "--all", "--delete-missing", "--force")


def run(root: Path, *args: str, stdin: str | bytes | None = None, env: dict | None = None,
        prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    environment.update({"CODEINDEX_EMBEDDER": "hashing", **(env or {})})
    data = stdin.encode("utf-8", "surrogateescape") if isinstance(stdin, str) else stdin
    return subprocess.run([*prefix, *CODEINDEX, *args], cwd=root, input=data, capture_output=True,
                          env=environment, timeout=300)


def exported(root: Path, env: dict | None = None) -> list[dict]:
    proc = run(root, "export", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


def fresh_index(root: Path, workdir: Path, env: dict | None = None) -> list[dict]:
    """A full index of a copy of the tree as it is now (symlinks kept), in a new home."""
    env = {k: v for k, v in (env or {}).items() if k != "CODEINDEX_HOME"}
    copy = workdir / f"copy-{uuid.uuid4().hex[:8]}" / root.name
    shutil.copytree(root, copy, symlinks=True, ignore=shutil.ignore_patterns(".codeindex"))
    proc = run(copy, "sync", "--all", env=env)
    assert proc.returncode in (0, 1), proc.stderr.decode()
    return exported(copy, env)


def assert_exact(root: Path, workdir: Path, env: dict | None = None) -> None:
    current, fresh = exported(root, env), fresh_index(root, workdir, env)
    assert [o["id"] for o in current] == [o["id"] for o in fresh]
    assert current == fresh


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    import re

    stderr = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, stderr, proc.stdout.decode()[-2000:])
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert re.search(pattern, lines[0]), lines[0]


def as_root_without_dac() -> tuple[str, ...]:
    """A prefix that runs a command without the power to ignore file permissions (we may be root)."""
    if os.geteuid() != 0:
        return ()
    return ("setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search")


def tracked(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if ".git" not in p.parts)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = make_real_repo(tmp_path / "repo", celery_files=14, kombu_files=12)
    proc = run(root, "sync", "--all")
    assert proc.returncode == 0, proc.stderr.decode()
    return root


# --- the two named regressions -------------------------------------------------------------------


def no_secret_in_the_store(root: Path) -> None:
    """Not a byte of the outside file reached the store: search and the table's content column."""
    proc = run(root, "search", SECRET, "-k", "100", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert all(SECRET not in hit["content"] for hit in json.loads(proc.stdout))
    import lancedb

    table = lancedb.connect(str(root / ".codeindex" / "lancedb")).open_table("codeindex")
    contents = table.search().select(["content"]).limit(None).to_arrow().column("content").to_pylist()
    assert contents and not any(SECRET in c for c in contents)


def test_symlink_escape_through_all_delete_missing_is_refused_and_deleted(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text(f"root:x:0:0:{SECRET}:/root:/bin/bash\n")
    victim = tracked(repo)[3]
    (repo / victim).unlink()
    os.symlink(outside, repo / victim)  # ln -sf /etc/passwd utils/time.py
    proc = run(repo, "sync", "--all", "--delete-missing")
    text = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"[DELETE] {victim}: symlink pointing outside the repository" in text
    assert f"[UPDATE] {victim}" not in text and f"[ADD]    {victim}" not in text
    no_secret_in_the_store(repo)
    # Every other way of naming it refuses it too, and the index stays exact.
    for args, stdin in ((("sync", "--all"), None), (("sync", "--stdin"), victim + "\n"),
                        (("sync", "--stdin"), f"M\t{victim}\n")):
        again = run(repo, *args, stdin=stdin)
        assert f"[ADD]    {victim}" not in again.stdout.decode() and "[UPDATE]" not in again.stdout.decode()
    no_secret_in_the_store(repo)
    assert_exact(repo, tmp_path)


def test_a_json_change_list_naming_etc_or_root_is_refused_and_writes_nothing(
        repo: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    before = {p: p.stat().st_mtime_ns for p in (repo / ".codeindex").rglob("*")}
    for path, name in (("/etc", "passwd"), ("/", "etc/passwd"), (str(tmp_path), "outside.txt"),
                       ("..", "repo/celery_app/__init__.py")):
        (tmp_path / "outside.txt").write_text(SECRET)
        document = {"repositories": [{"path": path, "modified": [name]}]}
        proc = run(repo, "sync", "--json", stdin=json.dumps(document))
        assert_one_line_error(proc, 2, r"repository .* of the change list is (outside the allowed directories|not "
                                       r"the top of a git work tree)")
    assert {p: p.stat().st_mtime_ns for p in (repo / ".codeindex").rglob("*")} == before
    no_secret_in_the_store(repo)
    # Repositories beside this one are allowed, and so is a configured base.
    sibling = make_real_repo(tmp_path / "sibling", celery_files=2, kombu_files=1)
    first = tracked(sibling)[0]
    document = {"repositories": [{"path": str(sibling), "modified": [first]}]}
    assert run(repo, "sync", "--json", stdin=json.dumps(document)).returncode == 0
    far = tmp_path_factory.mktemp("far")  # not under the repository's parent
    elsewhere = make_real_repo(far / "away" / "third", celery_files=2, kombu_files=1)
    document = {"repositories": [{"path": str(elsewhere), "modified": [tracked(elsewhere)[0]]}]}
    assert run(repo, "sync", "--json", stdin=json.dumps(document)).returncode == 2
    assert run(repo, "sync", "--json", stdin=json.dumps(document),
               env={"CODEINDEX_ALLOWED_ROOTS": str(far)}).returncode == 0


# --- the table ---------------------------------------------------------------------------------


@dataclass
class Case:
    """One hostile case: ``prepare`` makes the trouble on an indexed repository and returns the
    command to run (``args``, ``stdin``; ``env`` for that command alone, ``sticky_env`` for it and
    the next sync; ``heal`` undoes what the next sync cannot, a permission or a full disk);
    ``code`` and ``message`` are what must come out; ``env`` applies to every command, the
    fresh index included."""

    prepare: Callable[[Path, Path], dict]
    code: int
    message: str | None = None  # a one-line error matching this, when the code is not 0 or 1
    output: str | None = None  # text the standard output must hold
    env: dict = field(default_factory=dict)


def _long_path(repo: Path, tmp: Path) -> dict:
    edited = tracked(repo)[0]
    (repo / edited).write_text((repo / edited).read_text() + "\n# edited\n")
    return {"args": ("sync", "--stdin"), "stdin": "a" * 5000 + "\n" + edited + "\n"}


def _symlink_loop(repo: Path, tmp: Path) -> dict:
    os.symlink("loop-b.py", repo / "loop-a.py")
    os.symlink("loop-a.py", repo / "loop-b.py")
    (repo / "celery_app" / "new_module.py").write_text("def added():\n    return 1\n")
    return {"args": ("sync", "--all")}


def _invalid(setting: str, value: str, command: tuple[str, ...]) -> Callable[[Path, Path], dict]:
    def prepare(repo: Path, tmp: Path) -> dict:
        return {"args": command, "env": {setting: value}}
    return prepare


def _read_only_index(repo: Path, tmp: Path) -> dict:
    (repo / tracked(repo)[0]).write_text("def changed():\n    return 2\n")
    for path in [repo / ".codeindex", *(repo / ".codeindex").rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    return {"args": ("sync", "--all"), "prefix": as_root_without_dac(),
            "heal": lambda: [p.chmod(p.stat().st_mode | 0o200) for p in [repo / ".codeindex",
                                                                       *(repo / ".codeindex").rglob("*")]]}


def _corrupt_state(repo: Path, tmp: Path) -> dict:
    (repo / ".codeindex" / "state.sqlite").write_bytes(b"this is not a database" * 100)
    return {"args": ("sync", "--all"), "heal": lambda: (repo / ".codeindex" / "state.sqlite").unlink()}


def _full_disk(repo: Path, tmp: Path) -> dict:
    if os.geteuid() != 0:
        pytest.skip("filling a small tmpfs needs root to mount it")  # CI runs as root
    home = tmp / "small-home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(home)], check=True)
    env = {"CODEINDEX_HOME": str(home)}
    assert run(repo, "sync", "--all", env=env).returncode == 0
    filler = home / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # until full
    for rel in tracked(repo)[:6]:
        (repo / rel).write_text((repo / rel).read_text() + "\n" + "def more():\n    return 3\n" * 200)
    return {"args": ("sync", "--all"), "sticky_env": env, "heal": lambda: filler.unlink(),
            "cleanup": lambda: subprocess.run(["umount", "-l", str(home)], check=False)}


def _mass_delete(repo: Path, tmp: Path) -> dict:
    for rel in tracked(repo)[:15]:
        (repo / rel).unlink()
    return {"args": ("sync", "--all", "--delete-missing"),
            "after": lambda: runs(repo, "refused") and not runs(repo, "running")}


def _unknown_status_letter(repo: Path, tmp: Path) -> dict:
    return {"args": ("sync", "--stdin"), "stdin": f"M\t{tracked(repo)[0]}\nZ\t{tracked(repo)[1]}\n"}


def _rewritten_and_collected_history(repo: Path, tmp: Path) -> dict:
    gone = tracked(repo)[2]
    git(repo, "rm", "-q", gone)
    git(repo, "commit", "-q", "--amend", "-m", "history rewritten: the indexed commit is gone")
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "-q", "--prune=now")
    return {"args": ("sync", "--detect-changes"), "expect_out": f"[DELETE] {gone}"}


def _ignore_rules_edited(repo: Path, tmp: Path) -> dict:
    ignored = next(rel for rel in tracked(repo) if rel.startswith("kombu/") and rel.count("/") == 2)
    subdir = ignored.split("/")[1]
    (repo / "kombu" / ".gitignore").write_text(f"{subdir}/\n")
    git(repo, "add", "kombu/.gitignore")
    git(repo, "commit", "-qm", f"ignore kombu/{subdir}")
    # Newly ignored files count toward the mass-delete guard like any delete (a third of them here).
    return {"args": ("sync", "--stdin", "--force"), "stdin": git(repo, "diff", "--name-only", "HEAD~1"),
            "expect_out": f"[DELETE] {ignored}: ignored by .gitignore"}


def _file_replaced_by_binary(repo: Path, tmp: Path) -> dict:
    victim = tracked(repo)[4]
    (repo / victim).write_bytes(b"\x00\x01binary now" * 50)
    return {"args": ("sync", "--stdin"), "stdin": victim + "\n", "expect_out": f"[DELETE] {victim}: binary file"}


def _undecodable_and_latin1(repo: Path, tmp: Path) -> dict:
    (repo / "control_noise.py").write_bytes(bytes(range(1, 32)) * 40 + b"\xff\xfe")  # neither UTF-8 nor text
    (repo / "latin1.py").write_bytes("# caf\xe9 cr\xe8me\ndef au_lait():\n    return 1\n".encode("latin-1"))
    return {"args": ("sync", "--all"), "expect_out": "[ERROR]  control_noise.py: undecodable"}


def _non_utf8_file_name(repo: Path, tmp: Path) -> dict:
    name = b"caf\xe9_latin1_name.py"  # a file name that is not UTF-8
    with open(os.path.join(os.fsencode(repo), name), "wb") as fh:
        fh.write(b"def odd_name():\n    return 2\n")
    return {"args": ("sync", "--stdin", "-0"), "stdin": name + b"\0" + b"celery_app/__init__.py\0",
            "expect_out": "[ERROR]  caf\\xe9_latin1_name.py: file name is not UTF-8"}


def _linked_target_moved(repo: Path, tmp: Path) -> dict:
    target = tracked(repo)[5]
    os.symlink(target, repo / "alias.py")  # relative to the root, where the link lies
    assert run(repo, "sync", "--stdin", stdin="alias.py\n").returncode == 0
    git(repo, "mv", target, target.rsplit("/", 1)[0] + "/moved_target.py")
    git(repo, "commit", "-qm", "move the link's target")
    return {"args": ("sync", "--stdin"), "stdin": git(repo, "diff", "--name-status", "HEAD~1"),
            "expect_out": "[DELETE] alias.py: file not found"}


def _filter_settings_changed(repo: Path, tmp: Path) -> dict:
    return {"args": ("sync", "--detect-changes", "--force"), "expect_out": "[DELETE] kombu/"}


def _two_syncs_at_once(repo: Path, tmp: Path) -> dict:
    for rel in tracked(repo)[:5]:
        (repo / rel).write_text((repo / rel).read_text() + "\n# both\n")
    return {"args": ("sync", "--all"), "concurrent": True}


CASES = {
    "path longer than the system allows": Case(_long_path, 1, output="File name too long"),
    "a symlink loop in the tree": Case(_symlink_loop, 1, output="Too many levels of symbolic links"),
    "negative batch size (sync)": Case(_invalid("CODEINDEX_BATCH_FILES", "-1", ("sync", "--all")), 2,
                                       r"invalid setting CODEINDEX_BATCH_FILES='-1'"),
    "bad collection name (status)": Case(_invalid("CODEINDEX_COLLECTION", "bad name", ("status",)), 2,
                                         r"invalid setting CODEINDEX_COLLECTION='bad name'"),
    "unknown embedder (search)": Case(_invalid("CODEINDEX_EMBEDDER", "nope", ("search", "x")), 2,
                                      r"invalid setting CODEINDEX_EMBEDDER='nope'"),
    "time limits the visibility timeout does not cover (worker)": Case(
        lambda repo, tmp: {"args": ("worker", "--shard-id", "w1"), "env": {
            "CODEINDEX_BROKER_URL": "redis://127.0.0.1:1/0", "CODEINDEX_STATE_URL": "postgresql://127.0.0.1:1/none",
            "CODEINDEX_HOME": str(tmp / "worker-home"),
            "CODEINDEX_VISIBILITY_TIMEOUT": "12", "CODEINDEX_TASK_TIME_LIMIT": "120",
            "CODEINDEX_TASK_SOFT_TIME_LIMIT": "110"}}, 2,
        r"invalid setting: visibility_timeout \(12s\) must exceed the hard time limit \(120s\)"),
    "delete threshold above 1 (sync)": Case(_invalid("CODEINDEX_DELETE_THRESHOLD", "7", ("sync", "--all")), 2,
                                            r"CODEINDEX_DELETE_THRESHOLD='7'"),
    "read-only index directory": Case(_read_only_index, 4, r"(readonly|read-only|Permission denied)"),
    "corrupt state database": Case(_corrupt_state, 4, r"state database .*: file is not a database"),
    "full disk": Case(_full_disk, 4, r"(disk is full|No space left on device)"),
    "mass delete refused": Case(_mass_delete, 3, r"would delete 15 of \d+ indexed files.*--force"),
    "unknown git status letter": Case(_unknown_status_letter, 2, r"line 2: 'Z' is not a git status letter"),
    "history rewritten and collected": Case(_rewritten_and_collected_history, 0),
    "a .gitignore edit": Case(_ignore_rules_edited, 0),
    "an indexed file turned binary": Case(_file_replaced_by_binary, 0),
    "undecodable and Latin-1 content": Case(_undecodable_and_latin1, 1),
    "a file name that is not UTF-8": Case(_non_utf8_file_name, 1),
    "an indexed symlink's target moved": Case(_linked_target_moved, 0),
    "the exclude setting changed": Case(_filter_settings_changed, 0, env={"CODEINDEX_EXCLUDE": "kombu/**"}),
    "two syncs at once": Case(_two_syncs_at_once, 0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case(name: str, repo: Path, tmp_path: Path) -> None:
    case = CASES[name]
    spec = case.prepare(repo, tmp_path)
    sticky = {**case.env, **spec.get("sticky_env", {})}
    env = {**sticky, **spec.get("env", {})}
    try:
        if spec.get("concurrent"):
            procs = [subprocess.Popen([*CODEINDEX, *spec["args"]], cwd=repo, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE,
                                      env={**{k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")},
                                           "CODEINDEX_EMBEDDER": "hashing"}) for _ in range(2)]
            outcomes = [(p.wait(timeout=120), p.stderr.read().decode()) for p in procs]
            assert all(code == 0 and "Traceback" not in err for code, err in outcomes), outcomes
        else:
            proc = run(repo, *spec["args"], stdin=spec.get("stdin"), env=env, prefix=spec.get("prefix", ()))
            if case.message is not None:
                assert_one_line_error(proc, case.code, case.message)
            else:
                assert proc.returncode == case.code, (proc.returncode, proc.stderr.decode())
                assert "Traceback" not in proc.stderr.decode() and not proc.stderr.strip(), proc.stderr.decode()
            for expected in filter(None, [case.output, spec.get("expect_out")]):
                assert expected in proc.stdout.decode(), proc.stdout.decode()[-3000:]
            if "after" in spec:
                assert spec["after"](), "the run ended otherwise"
        if "heal" in spec:
            spec["heal"]()
        next_sync = run(repo, *NEXT_SYNC, env=sticky)
        assert next_sync.returncode in (0, 1) and "Traceback" not in next_sync.stderr.decode(), \
            next_sync.stderr.decode()
        assert_exact(repo, tmp_path, sticky)
    finally:
        if "cleanup" in spec:
            spec["cleanup"]()


# --- interrupted and killed syncs ----------------------------------------------------------------


def _big_repo(tmp_path: Path) -> Path:
    return make_real_repo(tmp_path / "big", celery_files=120, kombu_files=90)


def _start_sync_and_wait_for_its_run(root: Path) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    environment.update({"CODEINDEX_EMBEDDER": "hashing", "CODEINDEX_BATCH_FILES": "4"})
    proc = subprocess.Popen([*CODEINDEX, "sync", "--all"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=environment, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if runs(root, "running"):
            return proc
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the sync never started its run")


def runs(root: Path, status: str | None = None) -> list[str]:
    path = root / ".codeindex" / "state.sqlite"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT id, status FROM sync_runs").fetchall()
    except sqlite3.Error:
        return []
    return [run_id for run_id, s in rows if status is None or s == status]


def test_sigint_mid_sync_says_so_in_one_line_and_leaves_its_run_abandoned(tmp_path: Path) -> None:
    root = _big_repo(tmp_path)
    proc = _start_sync_and_wait_for_its_run(root)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_line_error(result, 130, r"^error: interrupted: nothing of the sync in progress was committed")
    assert runs(root, "abandoned") and not runs(root, "running")
    assert run(root, *NEXT_SYNC).returncode == 0
    assert_exact(root, tmp_path)


def test_sigkill_mid_sync_is_marked_abandoned_by_the_next_sync(tmp_path: Path) -> None:
    root = _big_repo(tmp_path)
    proc = _start_sync_and_wait_for_its_run(root)
    time.sleep(0.3)
    proc.kill()
    proc.wait(timeout=30)
    killed = runs(root, "running")
    assert len(killed) == 1
    assert run(root, "sync", "--all").returncode == 0
    assert killed[0] in runs(root, "abandoned") and not runs(root, "running")
    assert_exact(root, tmp_path)
