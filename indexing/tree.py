"""A repository's files as a sync reads them, from one of two places behind one interface
(:class:`SourceTree`): a work tree on disk (:class:`WorkTree`, a repository added by path) or
one commit of a git clone (:class:`CommitTree`, a repository added by URL, read from git objects
so that an index always corresponds to exactly one commit).

The planner (``indexing.sync.plan_sync``), the filter's ``.gitignore`` rules
(``indexing.scanner.FileFilter``) and the owner's content encoding (``indexing.content``) read
through it; neither knows which kind of tree it has.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from indexing.changes import Change, commit_exists, commit_time, git_changes, head_commit
from indexing.errors import FileIssue
from indexing.git_source import GitTree
from indexing.paths import is_linked, relative_path
from indexing.scanner import GITIGNORE_MAX_BYTES, FileFilter, read_file, walk


class SourceTree(Protocol):
    """The files of one repository, by POSIX paths relative to its root.

    ``commit`` is the commit the tree stands for ("" for a work tree without history);
    reads raise :class:`FileIssue` for a path that cannot be indexed, with the reasons of
    ``indexing.scanner.read_file``.
    """

    @property
    def commit(self) -> str: ...

    #: True when the tree is a whole commit: a file a full scan does not find is gone from the
    #: repository, not missing from a work tree by accident (so the plan deletes it).
    complete: bool

    def describe(self) -> str:
        """Where the files come from, for messages (a directory, or a clone and a commit)."""
        ...

    def relative(self, raw: str) -> str:
        """``raw`` (as a change source wrote it) as a path relative to the root, lexically;
        FileIssue when it leaves the root or is not a file name."""
        ...

    def lexists(self, rel: str) -> bool:
        """True when ``rel`` names anything (a dangling symlink too), as ``os.path.lexists``."""
        ...

    def read(self, rel: str, max_size: int) -> bytes:
        """The content of ``rel``, refused above ``max_size`` bytes (FileIssue ``skipped``)."""
        ...

    def walk(self, file_filter: FileFilter, under: str = "") -> Iterator[str]:
        """Every file ``file_filter`` admits (under the directory ``under``), sorted depth first."""
        ...

    def is_linked(self, rel: str) -> bool:
        """True when ``rel`` leads through a symlink (its content can change unnamed)."""
        ...

    def gitignore_lines(self, rel_dir: str) -> list[str] | None:
        """The lines of ``<rel_dir>/.gitignore``; None when there is none or it is unreadable."""
        ...

    def commit_time(self) -> float | None:
        """The committer time of :attr:`commit` in Unix seconds; None without a commit."""

    def has_commit(self, sha: str) -> bool:
        """True when ``sha`` is a commit of the repository's history as this tree sees it."""
        ...

    def changes_since(self, sha: str) -> list[Change]:
        """The paths changed from commit ``sha`` to :attr:`commit` (renames as delete + add)."""
        ...


class WorkTree:
    """A work tree on disk at ``root``: every read goes through the containment check
    (``indexing.paths.open_inside``); the commit is the work tree's ``HEAD``, read once."""

    complete = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._commit: str | None = None

    @property
    def commit(self) -> str:
        if self._commit is None:
            self._commit = head_commit(self.root) or ""
        return self._commit

    def describe(self) -> str:
        return str(self.root)

    def relative(self, raw: str) -> str:
        return relative_path(self.root, raw)

    def lexists(self, rel: str) -> bool:
        """As ``os.lstat``; an OSError other than "not there" (permission, name too long) is raised."""
        try:
            os.lstat(self.root / rel)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def read(self, rel: str, max_size: int) -> bytes:
        return read_file(self.root, rel, max_size)

    def walk(self, file_filter: FileFilter, under: str = "") -> Iterator[str]:
        return walk(self.root, file_filter, under)

    def is_linked(self, rel: str) -> bool:
        return is_linked(self.root, rel)

    def gitignore_lines(self, rel_dir: str) -> list[str] | None:
        rel = f"{rel_dir}/.gitignore" if rel_dir else ".gitignore"
        try:
            return read_file(self.root, rel, GITIGNORE_MAX_BYTES).decode("utf-8", errors="replace").splitlines()
        except FileIssue:
            return None

    def commit_time(self) -> float | None:
        return commit_time(self.root, self.commit) if self.commit else None

    def has_commit(self, sha: str) -> bool:
        return commit_exists(self.root, sha)

    def changes_since(self, sha: str) -> list[Change]:
        return git_changes(self.root, sha, self.commit)


class CommitTree:
    """One commit of a clone, read from git objects (``indexing.git_source.GitTree``): what a
    checkout of that commit would hold, symlinks followed inside the tree, never out of it.

    A full scan prunes directories as :func:`indexing.scanner.walk` does on a checkout, so both
    kinds of tree admit the same files under the same rules. Close it (or use ``with``) to stop
    its ``git cat-file`` process.
    """

    complete = True

    def __init__(self, tree: GitTree) -> None:
        self.tree = tree

    def __enter__(self) -> CommitTree:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the tree's ``git cat-file`` process."""
        self.tree.close()

    @property
    def commit(self) -> str:
        return self.tree.commit

    def describe(self) -> str:
        return f"{self.tree.repo_dir} at {self.tree.commit[:12]}"

    def relative(self, raw: str) -> str:
        rel = GitTree.lexical(raw)
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            raise FileIssue("file name is not UTF-8: codeindex indexes files with UTF-8 names only") from None
        return rel

    def lexists(self, rel: str) -> bool:
        return self.tree.exists(rel)

    def read(self, rel: str, max_size: int) -> bytes:
        return self.tree.read(rel, max_size)

    def walk(self, file_filter: FileFilter, under: str = "") -> Iterator[str]:
        under = under.strip("/")
        prefix = f"{under}/" if under else ""
        pruned: dict[str, bool] = {}

        def excluded(rel_dir: str) -> bool:  # a directory whose ancestors and itself pass, as walk descends
            if rel_dir not in pruned:
                parent = rel_dir.rpartition("/")[0]
                pruned[rel_dir] = bool(parent and excluded(parent)) or file_filter.dir_excluded(rel_dir)
            return pruned[rel_dir]

        for rel in self.tree.files():
            if prefix and not rel.startswith(prefix):
                continue
            parent = rel.rpartition("/")[0]
            if parent and excluded(parent):
                continue
            if file_filter.reason_to_skip(rel) is None:
                yield rel

    def is_linked(self, rel: str) -> bool:
        return self.tree.is_linked(rel)

    def gitignore_lines(self, rel_dir: str) -> list[str] | None:
        return self.tree.gitignore_rules(rel_dir)

    def commit_time(self) -> float | None:
        return commit_time(self.tree.repo_dir, self.commit)

    def has_commit(self, sha: str) -> bool:
        return self.tree.has_commit(sha)

    def changes_since(self, sha: str) -> list[Change]:
        return self.tree.changes_since(sha)
