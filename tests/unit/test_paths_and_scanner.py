"""Safe relative paths (indexing/paths.py) and the file scanner (indexing/scanner.py)."""

from __future__ import annotations

import os
import sys
import subprocess
from pathlib import Path

import pytest

from indexing.errors import FileIssue
from indexing.paths import is_linked as paths_is_linked
from indexing.paths import relative_path
from indexing.scanner import ALWAYS_EXCLUDED_DIRS, DecodedText, FileFilter, decode, read_file, walk


def _touch(root: Path, rel: str, data: bytes | str = "x = 1\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- relative_path


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    _touch(root, "a.py")
    _touch(root, "b.py")
    _touch(root, "pkg/mod.py")
    return root


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a.py", "a.py"),
        ("pkg/mod.py", "pkg/mod.py"),
        ("./a/../b.py", "b.py"),
        ("pkg/./mod.py", "pkg/mod.py"),
        ("pkg//mod.py", "pkg/mod.py"),
        ("pkg/../pkg/mod.py", "pkg/mod.py"),
        ("not/yet/created.py", "not/yet/created.py"),  # a deleted file is still a valid path
    ],
)
def test_relative_path_relative_inputs(repo: Path, raw: str, expected: str):
    assert relative_path(repo, raw) == expected


def test_relative_path_absolute_inside(repo: Path):
    assert relative_path(repo, str(repo / "pkg" / "mod.py")) == "pkg/mod.py"
    assert relative_path(repo, str(repo / "pkg" / ".." / "a.py")) == "a.py"


def test_relative_path_root_given_relatively(repo: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(repo.parent)
    assert relative_path(Path("repo"), str(repo / "a.py")) == "a.py"
    assert relative_path(Path("repo"), "pkg/mod.py") == "pkg/mod.py"


@pytest.mark.parametrize("raw", ["../outside.py", "pkg/../../outside.py", "/etc/passwd", "..", "a/../../repo2/x.py"])
def test_relative_path_refuses_outside_root(repo: Path, raw: str):
    with pytest.raises(FileIssue) as info:
        relative_path(repo, raw)
    assert info.value.status == "error"
    assert "outside" in info.value.reason


def test_relative_path_refuses_sibling_with_common_prefix(repo: Path):
    # /tmp/x/repo2/a.py is not inside /tmp/x/repo although the strings share a prefix.
    _touch(repo.parent / "repo2", "a.py")
    with pytest.raises(FileIssue):
        relative_path(repo, str(repo.parent / "repo2" / "a.py"))


@pytest.mark.parametrize("raw", ["", ".", "./", "pkg/..", "bad\x00name"])
def test_relative_path_refuses_empty_root_and_nul(repo: Path, raw: str):
    with pytest.raises(FileIssue):
        relative_path(repo, raw)


def test_relative_path_is_lexical_reading_is_where_symlinks_are_checked(repo: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    _touch(outside, "secret.py", "TOKEN = 1\n")
    os.symlink(outside / "secret.py", repo / "leak.py")
    os.symlink(outside, repo / "leakdir")
    assert relative_path(repo, "leak.py") == "leak.py"
    assert relative_path(repo, "leakdir/secret.py") == "leakdir/secret.py"
    for rel in ("leak.py", "leakdir/secret.py"):
        with pytest.raises(FileIssue, match="symlink pointing outside the repository") as info:
            read_file(repo, rel, 100)
        assert info.value.status == "error" and not info.value.transient


def test_reading_refuses_a_symlink_chain_leaving_root(repo: Path, tmp_path: Path):
    os.symlink(tmp_path, repo / "up")  # a directory link to the root's parent
    _touch(tmp_path, "elsewhere.py", "SECRET = 1\n")
    with pytest.raises(FileIssue, match="symlink pointing outside"):
        read_file(repo, "up/elsewhere.py", 100)
    assert read_file(repo, "up/repo/a.py", 100) == b"x = 1\n"  # out and back in: the file is the root's
    os.symlink("../../elsewhere.py", repo / "pkg" / "rel_escape.py")  # relative, and out
    with pytest.raises(FileIssue, match="symlink pointing outside"):
        read_file(repo, "pkg/rel_escape.py", 100)


def test_reading_accepts_symlinks_inside_root(repo: Path):
    os.symlink(repo / "pkg" / "mod.py", repo / "alias.py")
    os.symlink("pkg", repo / "pkglink")  # relative target
    os.symlink(repo, repo / "self")  # a link to the root itself stays inside
    expected = (repo / "pkg" / "mod.py").read_bytes()
    assert read_file(repo, "alias.py", 1000) == expected
    assert read_file(repo, "pkglink/mod.py", 1000) == expected
    assert read_file(repo, "self/pkg/mod.py", 1000) == expected


def test_reading_a_symlink_loop_or_a_fifo_is_refused_not_hung(repo: Path):
    os.symlink("loop-b", repo / "loop-a")
    os.symlink("loop-a", repo / "loop-b")
    with pytest.raises(FileIssue, match="unreadable: Too many levels of symbolic links"):
        read_file(repo, "loop-a", 100)
    os.mkfifo(repo / "pipe")
    with pytest.raises(FileIssue, match="not a regular file"):
        read_file(repo, "pipe", 100)


def test_a_symlink_swapped_in_after_the_check_is_not_followed(repo: Path, tmp_path: Path, monkeypatch):
    """The race the check-then-open order leaves: between resolving the path and opening it, a
    directory of the path becomes a symlink to outside. Opening beneath the root without
    following symlinks refuses it."""
    from indexing import paths

    _touch(tmp_path / "outside", "mod.py", "SECRET = 1\n")
    real_resolve = paths.resolve_inside

    def resolve_then_swap(root, rel):
        inner = real_resolve(root, rel)
        (repo / "pkg").rename(repo / "pkg-moved")
        os.symlink(tmp_path / "outside", repo / "pkg")
        return inner

    monkeypatch.setattr(paths, "resolve_inside", resolve_then_swap)
    with pytest.raises(FileIssue, match="changed while being read"):
        read_file(repo, "pkg/mod.py", 100)


def test_is_linked(repo: Path):
    os.symlink(repo / "pkg" / "mod.py", repo / "alias.py")
    os.symlink("pkg", repo / "pkglink")
    assert paths_is_linked(repo, "alias.py") and paths_is_linked(repo, "pkglink/mod.py")
    assert not paths_is_linked(repo, "pkg/mod.py")
    assert paths_is_linked(repo, "./pkglink//mod.py") and not paths_is_linked(repo, "pkg/./mod.py")


def test_is_linked_interns_no_part_of_the_path(repo: Path, monkeypatch):
    # Asked once for each file of a sync: pathlib's parsing interned every part, into a table
    # that never shrinks (docs/performance.md, D).
    import sys

    interned: list[str] = []
    real = sys.intern
    monkeypatch.setattr(sys, "intern", lambda s: interned.append(s) or real(s))
    assert not paths_is_linked(repo, "pkg/mod.py")
    assert interned == []


def test_relative_path_through_symlinked_root(repo: Path, tmp_path: Path):
    link_root = tmp_path / "link-to-repo"
    os.symlink(repo, link_root)
    # absolute paths written through either spelling of the root are inside it
    assert relative_path(link_root, str(repo / "pkg" / "mod.py")) == "pkg/mod.py"
    assert relative_path(link_root, str(link_root / "a.py")) == "a.py"
    assert relative_path(link_root, "a.py") == "a.py"
    with pytest.raises(FileIssue):
        relative_path(link_root, str(tmp_path / "elsewhere.py"))


# --------------------------------------------------------------------------- FileFilter


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    _touch(root, ".gitignore", "*.log\n!keep.log\n# comment\n\n/top-only.txt\n")
    _touch(root, "sub/.gitignore", "build/\n")
    for rel in [
        "a.py",
        "b.txt",
        "debug.log",
        "keep.log",
        "top-only.txt",
        "build/out.py",  # "build/" is ignored only under sub/
        "docs/index.md",
        "docs/top-only.txt",  # "/top-only.txt" is anchored to the root
        "sub/y.py",
        "sub/trace.log",
        "sub/keep.log",
        "sub/build/z.py",
        "sub/build/deep/w.py",
        "sub/deeper/build/v.py",  # "build/" (no leading slash) matches at any depth below sub/
        "sub/deeper/ok.py",
        ".git/config",
        ".git/objects/ab/cdef",
        ".codeindex/state.db",
        "sub/.codeindex/x.py",
        "node/.git/HEAD",
    ]:
        _touch(root, rel)
    (root / "sub" / "build_file").write_text("a file named like the ignored dir\n")
    return root


def test_gitignore_root_patterns_and_negation(tree: Path):
    f = FileFilter(tree)
    assert f.reason_to_skip("debug.log") == "ignored by .gitignore"
    assert f.reason_to_skip("sub/trace.log") == "ignored by .gitignore"
    assert f.reason_to_skip("keep.log") is None
    assert f.reason_to_skip("sub/keep.log") is None
    assert f.reason_to_skip("top-only.txt") == "ignored by .gitignore"
    assert f.reason_to_skip("docs/top-only.txt") is None
    assert f.reason_to_skip("a.py") is None


def test_gitignore_nested_directory_rule(tree: Path):
    f = FileFilter(tree)
    assert f.reason_to_skip("sub/build/z.py") == "ignored by .gitignore"
    assert f.reason_to_skip("sub/build/deep/w.py") == "ignored by .gitignore"
    assert f.reason_to_skip("sub/deeper/build/v.py") == "ignored by .gitignore"
    assert f.reason_to_skip("build/out.py") is None  # sub/.gitignore does not apply at the root
    assert f.reason_to_skip("sub/build_file") is None
    assert f.reason_to_skip("sub/y.py") is None
    assert f.dir_excluded("sub/build")
    assert f.dir_excluded("sub/deeper/build")
    assert not f.dir_excluded("build")
    assert not f.dir_excluded("sub")


def test_gitignore_can_be_turned_off(tree: Path):
    f = FileFilter(tree, use_gitignore=False)
    assert f.reason_to_skip("debug.log") is None
    assert f.reason_to_skip("sub/build/z.py") is None
    assert not f.dir_excluded("sub/build")
    assert f.reason_to_skip(".git/config") == "inside an excluded directory"


@pytest.mark.parametrize("rel", [".git/config", ".git/objects/ab/cdef", ".codeindex/state.db",
                                 "sub/.codeindex/x.py", "node/.git/HEAD", ".hg/store", ".svn/entries"])
def test_always_excluded_dirs(tree: Path, rel: str):
    f = FileFilter(tree, use_gitignore=False)
    assert f.reason_to_skip(rel) == "inside an excluded directory"


def test_always_excluded_dir_names_and_extra(tree: Path):
    assert {".git", ".codeindex"} <= ALWAYS_EXCLUDED_DIRS
    f = FileFilter(tree, extra_excluded_dirs=["docs"])
    assert f.dir_excluded(".git") and f.dir_excluded("sub/.codeindex") and f.dir_excluded("docs")
    assert f.reason_to_skip("docs/index.md") == "inside an excluded directory"
    # a *file* called .git-something or named like an excluded dir inside a path segment is fine
    assert FileFilter(tree).reason_to_skip("a.git/x.py") is None


def test_include_and_exclude_patterns(tree: Path):
    f = FileFilter(tree, include=["*.py", "docs/"], exclude=["sub/deeper/", "y.py"])
    assert f.reason_to_skip("a.py") is None
    assert f.reason_to_skip("build/out.py") is None
    assert f.reason_to_skip("docs/index.md") is None
    assert f.reason_to_skip("b.txt") == "not matched by the include patterns"
    assert f.reason_to_skip("sub/deeper/ok.py") == "excluded by pattern"
    assert f.reason_to_skip("sub/y.py") == "excluded by pattern"  # no slash: any depth
    assert f.dir_excluded("sub/deeper")
    assert not f.dir_excluded("docs")


def test_exclude_wins_over_include(tree: Path):
    f = FileFilter(tree, include=["*.py"], exclude=["a.py"])
    assert f.reason_to_skip("a.py") == "excluded by pattern"
    assert f.reason_to_skip("sub/y.py") is None


def test_walk_yields_indexable_posix_paths_and_prunes(tree: Path, monkeypatch: pytest.MonkeyPatch):
    f = FileFilter(tree)
    seen_dirs: list[str] = []
    original = FileFilter.dir_excluded

    def spy(self, rel_dir):
        seen_dirs.append(rel_dir)
        return original(self, rel_dir)

    checked_files: list[str] = []
    original_skip = FileFilter.reason_to_skip

    def spy_skip(self, rel):
        checked_files.append(rel)
        return original_skip(self, rel)

    monkeypatch.setattr(FileFilter, "dir_excluded", spy)
    monkeypatch.setattr(FileFilter, "reason_to_skip", spy_skip)
    paths = list(walk(tree, f))
    assert sorted(paths) == sorted(
        [
            ".gitignore",
            "a.py",
            "b.txt",
            "keep.log",
            "build/out.py",
            "docs/index.md",
            "docs/top-only.txt",
            "sub/.gitignore",
            "sub/y.py",
            "sub/keep.log",
            "sub/build_file",
            "sub/deeper/ok.py",
        ]
    )
    assert len(paths) == len(set(paths))
    assert all("\\" not in p and not p.startswith("/") for p in paths)
    # pruned directories are never descended into: nothing below them is even looked at
    for pruned in (".git/", ".codeindex/", "sub/build/", "sub/deeper/build/", "sub/.codeindex/", "node/.git/"):
        assert not any(p.startswith(pruned) for p in checked_files), pruned
        assert not any(d.startswith(pruned) for d in seen_dirs), pruned
    assert "sub/build" in seen_dirs and ".git" in seen_dirs


def test_walk_order_is_deterministic_and_sorted_per_directory(tree: Path):
    f = FileFilter(tree)
    first = list(walk(tree, f))
    assert first == list(walk(tree, FileFilter(tree)))
    by_dir: dict[str, list[str]] = {}
    for p in first:
        by_dir.setdefault(p.rpartition("/")[0], []).append(p)
    for names in by_dir.values():
        assert names == sorted(names)


def test_walk_does_not_follow_symlinked_directories(tree: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    _touch(outside, "secret.py")
    os.symlink(outside, tree / "linked")
    paths = list(walk(tree, FileFilter(tree)))
    assert not any(p.startswith("linked/") for p in paths)


def test_walk_with_include_patterns(tree: Path):
    paths = list(walk(tree, FileFilter(tree, include=["*.py"])))
    assert sorted(paths) == ["a.py", "build/out.py", "sub/deeper/ok.py", "sub/y.py"]


# --------------------------------------------------------------------------- decode


def test_decode_utf8():
    assert decode("héllo wörld ✓\n".encode()) == DecodedText("héllo wörld ✓\n", "utf-8")
    assert decode(b"") == DecodedText("", "utf-8")


def test_decode_latin1_fallback():
    result = decode(b"caf\xe9")
    assert result.encoding == "latin-1"
    assert result.text == "café"
    text = "# Grüße aus Köln\nname = 'Ørsted'\n"
    assert decode(text.encode("latin-1")) == DecodedText(text, "latin-1")


def test_decode_binary_is_skipped():
    with pytest.raises(FileIssue) as info:
        decode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert info.value.status == "skipped"
    assert "binary" in info.value.reason
    with pytest.raises(FileIssue) as info:
        decode("valid utf-8 text".encode() + b"\x00")
    assert info.value.status == "skipped"


def test_decode_nul_after_sniff_window_is_not_binary():
    data = b"a" * 8192 + b"\x00"
    assert decode(data).encoding == "utf-8"


def test_decode_control_garbage_is_an_error():
    garbage = bytes([0x01, 0x02, 0x03, 0xFF, 0x1B, 0x7F, 0x04, 0x05]) * 50
    with pytest.raises(FileIssue) as info:
        decode(garbage)
    assert info.value.status == "error"
    assert "undecodable" in info.value.reason


def test_decode_valid_utf8_with_control_chars_is_text():
    # The control-character check applies only to the Latin-1 fallback.
    assert decode(b"\x1b[31mred\x1b[0m\n").encoding == "utf-8"


# --------------------------------------------------------------------------- read_file


def test_read_file_reads_whole_file(tmp_path: Path):
    _touch(tmp_path, "a.py", b"print('hi')\n")
    assert read_file(tmp_path, "a.py", 100) == b"print('hi')\n"
    assert read_file(tmp_path, "a.py", 12) == b"print('hi')\n"  # exactly at the limit


def test_read_file_oversized_is_skipped(tmp_path: Path):
    _touch(tmp_path, "big.txt", b"x" * 101)
    with pytest.raises(FileIssue) as info:
        read_file(tmp_path, "big.txt", 100)
    assert info.value.status == "skipped"
    assert "oversized" in info.value.reason


def test_read_file_missing_is_an_error(tmp_path: Path):
    with pytest.raises(FileIssue) as info:
        read_file(tmp_path, "nope.py", 100)
    assert info.value.status == "error"
    assert "not found" in info.value.reason


def test_read_file_directory_is_an_error(tmp_path: Path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(FileIssue) as info:
        read_file(tmp_path, "adir", 100)
    assert info.value.status == "error"


def test_read_file_dangling_symlink_is_an_error(tmp_path: Path):
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    with pytest.raises(FileIssue) as info:
        read_file(tmp_path, "dangling", 100)
    assert info.value.status == "error"


def test_read_file_permission_denied(tmp_path: Path):
    """As root (CI, containers) the read runs in a child process whose capability bounding
    set lacks DAC override (util-linux ``setpriv``), so the mode-000 file is unreadable to it
    as to any user; otherwise it runs here."""
    path = _touch(tmp_path, "secret.py")
    path.chmod(0)
    try:
        if os.geteuid() != 0:
            with pytest.raises(FileIssue) as info:
                read_file(tmp_path, "secret.py", 100)
            assert (info.value.status, info.value.reason) == ("error", "permission denied")
            return
        code = ("import sys; from indexing.errors import FileIssue; from indexing.scanner import read_file\n"
                "try:\n    read_file(sys.argv[1], 'secret.py', 100)\nexcept FileIssue as e:\n"
                "    print(e.status, e.reason)\n")
        child = subprocess.run(
            ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
             sys.executable, "-c", code, str(tmp_path)],
            capture_output=True, text=True, timeout=60, cwd=str(Path(__file__).resolve().parents[2]))
        assert child.stdout.strip() == "error permission denied", child.stderr
    finally:
        path.chmod(0o644)


# --------------------------------------------------------------------------- against git itself


def test_gitignore_agrees_with_git_check_ignore(tmp_path: Path):
    root = tmp_path / "gi"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True,
                   env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"})
    _touch(root, ".gitignore", "*.log\n!keep.log\ndocs/*\n!docs/keep.md\n/top.txt\n**/gen/\ntmp\n"
                               "a/**/z.py\n*.bak\n!sub/important.bak\nlogs/\n!logs/important.txt\n")
    _touch(root, "sub/.gitignore", "build/\n!keep/\n/local.py\n*.py\n!main.py\n")
    files = [
        "x.log", "keep.log", "sub/x.log", "sub/keep.log", "docs/a.md", "docs/keep.md", "top.txt",
        "sub/top.txt", "sub/gen/x.py", "gen/y.py", "tmp", "x/tmp/f.py", "x/tmpfile", "a/z.py", "a/b/z.py",
        "a/b/c/z.py", "sub/deeper/build/v.py", "sub/local.py", "sub/deeper/local.py", "sub/main.py",
        "sub/x.py", "sub/important.bak", "sub/other.bak", "r.bak", "sub/deeper/main.py", "plain.py",
        "logs/important.txt", "logs/other.txt",  # no re-including a file of an excluded directory
    ]
    for rel in files:
        _touch(root, rel)
    done = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=root, input="\n".join(files),
                          capture_output=True, text=True,
                          env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"})
    git_ignored = set(done.stdout.split())
    assert git_ignored and git_ignored != set(files)  # the case exercises both outcomes
    f = FileFilter(root)
    ours = {rel for rel in files if f.reason_to_skip(rel) == "ignored by .gitignore"}
    assert ours == git_ignored


def test_relative_path_refuses_a_name_that_is_not_utf8(repo: Path):
    """Bytes that are not UTF-8 reach us as surrogates (surrogateescape); ids, messages and the
    state are UTF-8 text, so such a path is refused, and shown with its bytes escaped."""
    from indexing.paths import printable

    raw = b"caf\xe9.py".decode("utf-8", "surrogateescape")
    with pytest.raises(FileIssue, match="not UTF-8"):
        relative_path(repo, raw)
    assert printable(raw) == "caf\\xe9.py" and printable("plain/é.py") == "plain/é.py"
