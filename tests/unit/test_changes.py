"""Change sources: line, NUL and JSON parsers, and git history (indexing/changes.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.changes import (
    Change,
    ChangeKind,
    ChangeList,
    git_changes,
    head_commit,
    commit_exists,
    parse_json_changes,
    parse_lines,
    parse_nul,
    unquote_git_path,
)
from indexing.errors import ChangeListError, RepositoryError, UsageError

A, M, D, L = ChangeKind.ADDED, ChangeKind.MODIFIED, ChangeKind.DELETED, ChangeKind.LISTED
PROPS = settings(max_examples=75, deadline=None, database=None)


# --------------------------------------------------------------------------- parse_lines


def test_parse_lines_bare_paths_are_listed():
    assert list(parse_lines(["src/a.py", "b.txt", "dir with space/c.md"])) == [
        Change("src/a.py", L),
        Change("b.txt", L),
        Change("dir with space/c.md", L),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("M\tsrc/a.py", [Change("src/a.py", M)]),
        ("A\tnew.py", [Change("new.py", A)]),
        ("D\tgone.py", [Change("gone.py", D)]),
        ("T\tlink", [Change("link", M)]),  # type change: re-read it
        ("U\tconflict.py", [Change("conflict.py", M)]),
        ("R100\told.py\tnew.py", [Change("old.py", D), Change("new.py", A)]),
        ("R075\tpkg/old.py\tpkg2/new.py", [Change("pkg/old.py", D), Change("pkg2/new.py", A)]),
        ("C75\ta.py\tb.py", [Change("b.py", A)]),  # copy: the source is untouched
        ("M100\tscored.py", [Change("scored.py", M)]),
    ],
)
def test_parse_lines_name_status(line, expected):
    assert list(parse_lines([line])) == expected


def test_parse_lines_rename_without_second_path_is_an_error():
    # "R100<TAB>only-one" has the name-status shape but lacks the new path.
    with pytest.raises(ChangeListError, match="two paths"):
        list(parse_lines(["R100\tonly-one.py"]))


def test_parse_lines_mixed_stream_keeps_order():
    text = "M\ta.py\nplain.py\nR100\tx.py\ty.py\nD\tz.py\n"
    assert list(parse_lines(text.splitlines(keepends=True))) == [
        Change("a.py", M),
        Change("plain.py", L),
        Change("x.py", D),
        Change("y.py", A),
        Change("z.py", D),
    ]


def test_parse_lines_quoted_paths_are_unquoted():
    assert list(parse_lines(['"a\\tb.py"'])) == [Change("a\tb.py", L)]
    assert list(parse_lines(['"\\303\\251.py"'])) == [Change("é.py", L)]
    assert list(parse_lines(['M\t"\\303\\251t\\303\\251.py"'])) == [Change("été.py", M)]
    assert list(parse_lines(['R100\t"old\\"q.py"\t"new\\\\b.py"'])) == [
        Change('old"q.py', D),
        Change("new\\b.py", A),
    ]
    assert list(parse_lines(['"line\\nbreak.py"'])) == [Change("line\nbreak.py", L)]


def test_unquote_git_path():
    assert unquote_git_path("plain.py") == "plain.py"
    assert unquote_git_path('"a\\tb.py"') == "a\tb.py"
    assert unquote_git_path('"\\303\\251.py"') == "é.py"
    assert unquote_git_path('"\\a\\b\\v\\f\\r"') == "\a\b\v\f\r"
    assert unquote_git_path('"') == '"'  # too short to be quoted
    assert unquote_git_path('"only-start') == '"only-start'


@pytest.mark.parametrize("bad", ['"bad\\q.py"', '"trailing\\"', '"\\30x.py"'])
def test_unquote_git_path_malformed_escape(bad):
    with pytest.raises(ChangeListError, match="malformed escape"):
        unquote_git_path(bad)


def test_parse_lines_ignores_blank_lines_and_strips_crlf():
    text = "a.py\r\n\r\n   \r\nM\tb.py\r\n\nc.py\r\n"
    assert list(parse_lines(text.split("\n"))) == [
        Change("a.py", L),
        Change("b.py", M),
        Change("c.py", L),
    ]


def test_parse_lines_empty_input():
    assert list(parse_lines([])) == []
    assert list(parse_lines(["", "\n", "\r\n"])) == []


def test_parse_lines_status_letters_without_tab_are_bare_paths():
    # A file literally named "M" or "R100" is a bare path when no TAB follows.
    assert list(parse_lines(["M", "R100", "A b.py"])) == [
        Change("M", L),
        Change("R100", L),
        Change("A b.py", L),
    ]


# --------------------------------------------------------------------------- parse_nul


def test_parse_nul_plain_paths():
    data = "a.py\0dir with space/b.py\0multi\nline.py\0"
    assert list(parse_nul(data)) == [
        Change("a.py", L),
        Change("dir with space/b.py", L),
        Change("multi\nline.py", L),
    ]


def test_parse_nul_without_trailing_nul_and_empty_items():
    assert list(parse_nul("a.py\0\0b.py")) == [Change("a.py", L), Change("b.py", L)]
    assert list(parse_nul("")) == []
    assert list(parse_nul("\0")) == []


def test_parse_nul_paths_are_verbatim():
    # -z output is never quoted: quotes and backslashes are part of the name.
    assert list(parse_nul('"a\\tb.py"\0x\0')) == [Change('"a\\tb.py"', L), Change("x", L)]


def test_parse_nul_name_status_stream():
    data = "M\0a.py\0R100\0old.py\0new.py\0D\0gone.py\0"
    assert list(parse_nul(data)) == [
        Change("a.py", M),
        Change("old.py", D),
        Change("new.py", A),
        Change("gone.py", D),
    ]


def test_parse_nul_name_status_paths_may_look_like_codes():
    # Positional parsing: a file called "A" after "M" is a path, not a status.
    assert list(parse_nul("M\0A\0C050\0D\0R\0A\0name with\ttab\0")) == [
        Change("A", M),
        Change("R", A),  # copy D -> R: only the destination
        Change("name with\ttab", A),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("M\0a.py\0R100\0old.py\0", "missing its path"),
        ("M\0a.py\0bogus\0x.py\0", "expected a git status code at item 3"),
        ("M\0\0", "missing its path"),
        ("A\0a.py\0D\0", "missing its path"),
        ("C100\0a.py\0", "missing its path"),
    ],
)
def test_parse_nul_malformed_name_status_stream(data, message):
    with pytest.raises(ChangeListError, match=re.escape(message)):
        list(parse_nul(data))


# --------------------------------------------------------------------------- parse_json_changes


def test_parse_json_changes_sync_spec_form():
    doc = {
        "repositories": [
            {"path": "/srv/repo", "modified": ["m.py"], "added": ["a.py", "b.py"], "deleted": ["d.py"]},
            {"path": "other"},
        ]
    }
    result = parse_json_changes(json.dumps(doc))
    assert isinstance(result, ChangeList)
    assert [r.path for r in result.repositories] == ["/srv/repo", "other"]
    assert result.repositories[0].changes() == [
        Change("a.py", A),
        Change("b.py", A),
        Change("m.py", M),
        Change("d.py", D),
    ]
    assert result.repositories[1].changes() == []


def test_parse_json_changes_invalid_json_names_the_position():
    with pytest.raises(ChangeListError) as info:
        parse_json_changes('{"repositories": [\n  {"path": "x",}\n]}')
    message = str(info.value)
    assert "not valid JSON" in message
    assert "line 2" in message and "column" in message


def test_change_list_error_is_a_usage_error():
    with pytest.raises(UsageError) as info:
        parse_json_changes("nope")
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ([], "document"),
        ({}, "repositories"),
        ({"repositories": {}}, "repositories"),
        ({"repositories": [{"modified": ["a"]}]}, "repositories.0.path"),
        ({"repositories": [{"path": ""}]}, "repositories.0.path"),
        ({"repositories": [{"path": "r", "modified": "a.py"}]}, "repositories.0.modified"),
        ({"repositories": [{"path": "r", "deleted": [1]}]}, "repositories.0.deleted.0"),
        ({"repositories": [{"path": "r"}, {"path": "s", "added": None}]}, "repositories.1.added"),
    ],
)
def test_parse_json_changes_wrong_shapes(doc, where):
    with pytest.raises(ChangeListError) as info:
        parse_json_changes(json.dumps(doc))
    message = str(info.value)
    assert "sync spec" in message
    assert f"at {where}:" in message


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"repositories": [], "extra": 1}, "extra"),
        ({"repositories": [{"path": "r", "renamed": ["a"]}]}, "repositories.0.renamed"),
    ],
)
def test_parse_json_changes_extra_keys_forbidden(doc, where):
    with pytest.raises(ChangeListError) as info:
        parse_json_changes(json.dumps(doc))
    assert f"at {where}:" in str(info.value)
    assert "xtra" in str(info.value)  # pydantic: "Extra inputs are not permitted"


# --------------------------------------------------------------------------- properties

_STATUS_LIKE = re.compile(r"[ACDMRTUX]\d{0,3}")

# Names without NUL, newline, CR or tab; not blank; not wrapped in quotes; not a bare status code.
_name_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\n\r\t")
safe_names = st.text(_name_chars, min_size=1, max_size=30).filter(
    lambda s: s.strip() != ""
    and not (s.startswith('"') and s.endswith('"') and len(s) >= 2)
    and not _STATUS_LIKE.fullmatch(s)
)


@PROPS
@given(st.lists(safe_names, max_size=20))
def test_property_parse_lines_round_trip(names):
    # split("\n"), not str.splitlines(): names may hold \x0c, \x85, \u2028 (not line breaks here).
    changes = list(parse_lines("\n".join(names).split("\n")))
    assert changes == [Change(n, L) for n in names]


@PROPS
@given(st.lists(safe_names, max_size=20), st.booleans())
def test_property_parse_lines_round_trip_crlf(names, trailing):
    text = "\r\n".join(names) + ("\r\n" if trailing else "")
    assert [c.path for c in parse_lines(text.split("\n"))] == names


# NUL-separated names may contain newlines and tabs; only NUL is excluded (and names that
# are nothing but line breaks, which the parser treats as blank).
_nul_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")
nul_names = st.text(_nul_chars, min_size=1, max_size=30).filter(
    lambda s: s.strip("\r\n") != "" and not _STATUS_LIKE.fullmatch(s)
)


@PROPS
@given(st.lists(nul_names, max_size=20), st.booleans())
def test_property_parse_nul_round_trip(names, trailing):
    data = "\0".join(names) + ("\0" if trailing and names else "")
    assert list(parse_nul(data)) == [Change(n, L) for n in names]


z_paths = st.text(_nul_chars, min_size=1, max_size=20)
z_entries = st.one_of(
    st.tuples(st.sampled_from(["M", "A", "D", "T", "U", "X"]), z_paths),
    st.tuples(
        st.sampled_from(["R", "C"]).flatmap(
            lambda c: st.integers(0, 100).map(lambda n, c=c: f"{c}{n:03d}" if n % 2 else f"{c}{n}")
        ),
        z_paths,
        z_paths,
    ),
)


def _expected(entry) -> list[Change]:
    code = entry[0][0]
    if code == "R":
        return [Change(entry[1], D), Change(entry[2], A)]
    if code == "C":
        return [Change(entry[2], A)]
    return [Change(entry[1], {"A": A, "D": D}.get(code, M))]


@PROPS
@given(st.lists(z_entries, min_size=1, max_size=15))
def test_property_parse_nul_name_status_stream(entries):
    data = "".join("\0".join(entry) + "\0" for entry in entries)
    expected = [c for entry in entries for c in _expected(entry)]
    assert list(parse_nul(data)) == expected


@PROPS
@given(st.lists(z_entries, min_size=1, max_size=10), st.data())
def test_property_truncated_name_status_stream_raises(entries, data):
    tokens = [t for entry in entries for t in entry]
    # Drop the final path (keeping at least the first status token): the last entry is incomplete.
    cut = data.draw(st.integers(1, len(entries[-1]) - 1), label="paths dropped")
    truncated = tokens[: len(tokens) - cut]
    if len(truncated) < 2:
        truncated = truncated + [""]  # "M\0\0": a status with an empty path
    with pytest.raises(ChangeListError):
        list(parse_nul("\0".join(truncated) + "\0"))


# --------------------------------------------------------------------------- git history


def _git(root: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    done = subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def _body(name: str) -> str:
    return "".join(f"def {name}_{i}(x):\n    return x * {i} + {len(name)}\n\n" for i in range(12))


@pytest.fixture()
def git_repo(tmp_path: Path):
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    for name in ("alpha", "bravo", "charlie", "delta"):
        (root / f"{name}.py").write_text(_body(name))
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "first")
    first = _git(root, "rev-parse", "HEAD")
    (root / "pkg").mkdir()
    _git(root, "mv", "alpha.py", "pkg/alpha_renamed.py")
    _git(root, "rm", "-q", "bravo.py")
    (root / "charlie.py").write_text(_body("charlie") + "VALUE = 42\n")
    (root / "echo.py").write_text(_body("echo"))
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "second")
    second = _git(root, "rev-parse", "HEAD")
    return root, first, second


def test_git_changes_rename_is_delete_plus_add(git_repo):
    root, first, second = git_repo
    changes = git_changes(root, first, second)
    assert sorted(changes, key=lambda c: (c.path, c.kind)) == sorted(
        [
            Change("alpha.py", D),
            Change("pkg/alpha_renamed.py", A),
            Change("bravo.py", D),
            Change("charlie.py", M),
            Change("echo.py", A),
        ],
        key=lambda c: (c.path, c.kind),
    )
    # The rename's two halves are adjacent, delete first.
    i = changes.index(Change("alpha.py", D))
    assert changes[i + 1] == Change("pkg/alpha_renamed.py", A)


def test_git_changes_defaults_to_head_and_empty_diff(git_repo):
    root, first, second = git_repo
    assert git_changes(root, first) == git_changes(root, first, second)
    assert git_changes(root, second, second) == []


def test_git_changes_errors(git_repo, tmp_path: Path):
    root, first, _ = git_repo
    with pytest.raises(RepositoryError, match="not a git repository"):
        git_changes(tmp_path / "nowhere", first)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RepositoryError, match="not a git repository"):
        git_changes(plain, "HEAD~1")
    with pytest.raises(RepositoryError, match="failed"):
        git_changes(root, "0" * 40)


def test_head_commit(git_repo, tmp_path: Path):
    root, first, second = git_repo
    assert head_commit(root) == second
    assert re.fullmatch(r"[0-9a-f]{40}", second)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert head_commit(plain) is None
    assert head_commit(tmp_path / "missing") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")
    assert head_commit(empty) is None


def test_commit_exists(git_repo, tmp_path: Path):
    root, first, second = git_repo
    assert commit_exists(root, first)
    assert commit_exists(root, second)
    assert not commit_exists(root, "0123456789abcdef0123456789abcdef01234567")
    assert not commit_exists(tmp_path / "missing", first)


def test_git_changes_unusual_names(tmp_path: Path):
    root = tmp_path / "odd"
    root.mkdir()
    _git(root, "init", "-q")
    _git(root, "commit", "-q", "--allow-empty", "-m", "empty")
    names = ["é.py", "new\nline.py", "sp ace.py", "tab\there.py", 'quote"d.py', "trailing "]
    for name in names:
        (root / name).write_text(f"# {name!r}\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "odd names")
    # -z output is never quoted: the names come back exactly
    assert sorted(git_changes(root, "HEAD~1"), key=lambda c: c.path) == sorted(
        (Change(n, A) for n in names), key=lambda c: c.path)
