"""Change sources: what a sync is asked to look at.

Parses the formats of the sync specification (seed 001): one path per line, NUL-separated
paths (``-0``), ``git diff --name-status`` lines (also ``-z``), and the JSON change list with
its ``repositories`` form; and asks git for the changes between two commits.
Every parser returns :class:`Change` records; none touches the file system.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from indexing.errors import ChangeListError, RepositoryError


class ChangeKind(StrEnum):
    """What the source says happened to a path."""

    ADDED = "added"
    MODIFIED = "modified"
    DELETED = "deleted"
    LISTED = "listed"  # a bare path: look at the disk to know


@dataclass(frozen=True, slots=True)
class Change:
    """One path named by a change source; ``path`` is as the source wrote it."""

    path: str
    kind: ChangeKind


_STATUS = re.compile(r"^(?P<code>[ACDMRTUX])(?P<score>\d{0,3})$")
_NAME_STATUS_LINE = re.compile(r"^(?P<code>[ACDMRTUX])(?P<score>\d{0,3})\t(?P<a>[^\t]+)(?:\t(?P<b>[^\t]+))?$")
#: A line shaped like a name-status entry (a capital letter, a score, a tab) whatever its letter.
_STATUS_SHAPED = re.compile(r"^(?P<code>[A-Z])\d{0,3}\t")
_C_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def unquote_git_path(path: str) -> str:
    """Undo git's C-style quoting (``core.quotePath``) of a path in line output.

    ``"a\\tb.py"`` -> ``a<TAB>b.py``; ``"\\303\\251.py"`` -> ``é.py``. Unquoted paths are
    returned unchanged. Raises :class:`ChangeListError` for a malformed escape.
    """
    if len(path) < 2 or not (path.startswith('"') and path.endswith('"')):
        return path
    body, out, i = path[1:-1], bytearray(), 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt in _C_ESCAPES:
            out.append(_C_ESCAPES[nxt])
            i += 2
        elif re.fullmatch(r"[0-7]{3}", body[i + 1 : i + 4]):
            out.append(int(body[i + 1 : i + 4], 8))
            i += 4
        else:
            raise ChangeListError(f"malformed escape in quoted path {path!r}")
    return out.decode("utf-8", errors="surrogateescape")


def _status_changes(code: str, a: str, b: str | None) -> list[Change]:
    """Map one name-status entry to changes: renames become delete + add (exact)."""
    if code in "RC":
        if b is None:
            raise ChangeListError(f"status {code} needs two paths, got only {a!r}")
        return ([Change(a, ChangeKind.DELETED)] if code == "R" else []) + [Change(b, ChangeKind.ADDED)]
    if code == "D":
        return [Change(a, ChangeKind.DELETED)]
    if code == "A":
        return [Change(a, ChangeKind.ADDED)]
    return [Change(a, ChangeKind.MODIFIED)]  # M, T (type change), U (unmerged), X


def parse_lines(lines: Iterable[str]) -> Iterator[Change]:
    """Parse newline-separated input: bare paths or ``git diff --name-status`` lines.

    A line ``<status>[score]<TAB>path[<TAB>path]`` is a name-status entry (``M``, ``A``,
    ``D``, ``R100 old new``, ...); any other non-blank line is a bare path. Quoted paths
    are unquoted. Blank lines are ignored.
    Raises :class:`ChangeListError` for a line shaped like a name-status entry whose letter git
    never prints (``Z<TAB>path``): taken as a file name, it would name a file nobody meant.
    """
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        match = _NAME_STATUS_LINE.match(line)
        if match:
            a = unquote_git_path(match["a"])
            b = unquote_git_path(match["b"]) if match["b"] else None
            yield from _status_changes(match["code"], a, b)
        elif shaped := _STATUS_SHAPED.match(line):
            raise ChangeListError(
                f"line {number}: {shaped['code']!r} is not a git status letter (git diff --name-status prints "
                "A, C, D, M, R, T, U or X); to sync a file whose name starts like this, pass NUL-separated "
                "paths with -0")
        else:
            yield Change(unquote_git_path(line), ChangeKind.LISTED)


def parse_nul(data: str) -> Iterator[Change]:
    """Parse NUL-separated input (``-0``): bare paths, or ``git diff --name-status -z``.

    The ``-z`` name-status stream alternates status tokens and paths (two paths after
    ``R``/``C``); it is recognised by its first token being a status code. Paths are taken
    verbatim: no quoting is applied by git in this mode.
    """
    tokens = data.split("\0")
    if tokens and tokens[-1] == "":
        tokens.pop()
    if len(tokens) >= 2 and _STATUS.match(tokens[0]):
        yield from _parse_name_status_z(tokens)
        return
    for token in tokens:
        if token.strip("\r\n"):
            yield Change(token, ChangeKind.LISTED)


def _parse_name_status_z(tokens: list[str]) -> Iterator[Change]:
    i = 0
    while i < len(tokens):
        match = _STATUS.match(tokens[i])
        if not match:
            raise ChangeListError(f"expected a git status code at item {i + 1}, got {tokens[i]!r}")
        code = match["code"]
        need = 2 if code in "RC" else 1
        paths = tokens[i + 1 : i + 1 + need]
        if len(paths) < need or any(not p for p in paths):
            raise ChangeListError(f"status {tokens[i]!r} at item {i + 1} is missing its path")
        yield from _status_changes(code, paths[0], paths[1] if need == 2 else None)
        i += 1 + need


class RepositoryChanges(BaseModel):
    """One entry of the JSON change list's ``repositories`` array (seed 001)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)
    modified: list[str] = Field(default_factory=list)
    added: list[str] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)

    def changes(self) -> list[Change]:
        """The entry as changes: added, then modified, then deleted."""
        return (
            [Change(p, ChangeKind.ADDED) for p in self.added]
            + [Change(p, ChangeKind.MODIFIED) for p in self.modified]
            + [Change(p, ChangeKind.DELETED) for p in self.deleted]
        )


class ChangeList(BaseModel):
    """The JSON change list of the sync specification: ``{"repositories": [...]}``."""

    model_config = ConfigDict(extra="forbid")

    repositories: list[RepositoryChanges]


def parse_json_changes(text: str) -> ChangeList:
    """Parse and validate a JSON change list.

    Raises :class:`ChangeListError` naming the line/column of invalid JSON, or the field
    of a document that does not have the sync spec's shape.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChangeListError(f"change list is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    try:
        return ChangeList.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise ChangeListError(f"change list does not match the sync spec's format at {where}: {first['msg']}") from None


GIT_TIMEOUT_SECONDS = 120


def commit_time(repo_dir: Path, sha: str) -> float | None:
    """The committer time of commit ``sha`` of the repository (a work tree or a bare clone) at
    ``repo_dir``, in Unix seconds (``git show -s --format=%ct``); None when git cannot say
    (no such commit, not a repository, no answer within :data:`GIT_TIMEOUT_SECONDS`)."""
    try:
        done = subprocess.run(["git", "-C", str(repo_dir), "show", "-s", "--format=%ct", sha, "--"],
                              capture_output=True, timeout=GIT_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = done.stdout.strip()
    return float(out) if done.returncode == 0 and out.isdigit() else None


def git_changes(root: Path, since: str, until: str = "HEAD") -> list[Change]:
    """Return the changes between commits ``since`` and ``until`` of the repository at ``root``.

    Uses GitPython to run ``git diff --name-status -z -M since until`` (renames as delete +
    add), killed after :data:`GIT_TIMEOUT_SECONDS`. Raises :class:`RepositoryError` when
    ``root`` is not a git repository, a commit is unknown (history rewritten since the last
    sync) or git does not answer in time.
    """
    import git  # lazy: GitPython (0.07 s) only when git is asked; the parsers stay light

    try:
        repo = git.Repo(root)
        out = repo.git.diff("--name-status", "-z", "-M", "--no-color", since, until,
                            kill_after_timeout=GIT_TIMEOUT_SECONDS)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise RepositoryError(f"{root} is not a git repository; --detect-changes needs one") from None
    except git.GitCommandError as exc:
        raise RepositoryError(f"git diff {since}..{until} failed in {root}: {exc.stderr.strip()}") from None
    return list(parse_nul(out)) if out else []


def listed_repository(path: str, base: Path, allowed: Sequence[Path]) -> Path:
    """Resolve and check a repository named by the JSON change list (its ``path``).

    The rule (README, "Safety"): a listed repository is the top level of a git work tree, lying
    inside an allowed directory: the parent of the repository the command runs in (``base``:
    repositories side by side), or one of ``allowed`` (``CODEINDEX_ALLOWED_ROOTS``). A
    relative ``path`` is taken from ``base``. Anything else is refused, before anything runs.
    Returns the resolved root. Raises :class:`RepositoryError` (a usage error, exit 2).
    """
    import git  # lazy: see git_changes

    candidate = Path(path) if Path(path).is_absolute() else base / path
    root = Path(os.path.realpath(candidate))
    bases = [Path(os.path.realpath(base)).parent, *(Path(os.path.realpath(a)) for a in allowed)]
    if not any(root != b and root.is_relative_to(b) for b in bases):
        raise RepositoryError(
            f"repository {path!r} of the change list is outside the allowed directories "
            f"({', '.join(str(b) for b in bases)}); list repositories beside this one, or add their parent "
            "to CODEINDEX_ALLOWED_ROOTS")
    if not root.is_dir():
        raise RepositoryError(f"repository {path!r} of the change list is not a directory")
    try:
        top = git.Repo(root).working_tree_dir
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        top = None
    if top is None or Path(os.path.realpath(top)) != root:
        raise RepositoryError(f"repository {path!r} of the change list is not the top of a git work tree")
    return root


def head_commit(root: Path) -> str | None:
    """Return the HEAD commit sha of ``root``, or None when it is not a git repository or has no commit."""
    import git  # lazy: see git_changes

    try:
        return git.Repo(root).head.commit.hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return None


def commit_exists(root: Path, sha: str) -> bool:
    """True when commit ``sha`` exists in the repository at ``root``."""
    import git  # lazy: see git_changes

    try:
        git.Repo(root).commit(sha)
        return True
    except (git.BadName, ValueError, git.InvalidGitRepositoryError, git.NoSuchPathError):
        return False
