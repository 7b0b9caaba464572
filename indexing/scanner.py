"""The file scanner: which files a sync may index, and reading them safely.

Include/exclude globs and ``.gitignore`` files (nested ones too) use gitignore syntax via
pathspec; sizes are checked before reading; binary files (a NUL byte in the first 8 KiB)
are skipped; text is UTF-8 with a Latin-1 fallback, and the encoding is recorded (seed 003,
"File Scanner"; seed 004, "file content reading (UTF-8, Latin-1, binary)").
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pathspec

from indexing.errors import FileIssue
from indexing.paths import open_inside

#: The largest ``.gitignore`` read (bytes); a larger one is ignored as unreadable.
GITIGNORE_MAX_BYTES = 1_048_576

ALWAYS_EXCLUDED_DIRS = frozenset({".git", ".codeindex", ".hg", ".svn"})
BINARY_SNIFF_BYTES = 8192
# Latin-1 decodes any byte string; text that decodes only that way but is full of C0
# control characters is not text, and is reported as undecodable instead.
_CONTROL = frozenset(range(0, 32)) - {9, 10, 12, 13}


class _GitignoreSource(Protocol):
    def gitignore_lines(self, rel_dir: str) -> list[str] | None: ...


class FileFilter:
    """Decides whether a repository-relative path may be indexed.

    ``include``/``exclude`` are gitignore-style patterns (an empty ``include`` admits every
    file); ``.gitignore`` files under ``root`` are honoured when ``use_gitignore``: ``root`` is a
    work tree's directory, or a tree with a ``gitignore_lines(rel_dir)`` method
    (``indexing.tree.SourceTree``, a commit of a clone).
    ``fingerprint`` identifies the rules besides the ``.gitignore`` files themselves: when it
    changes, every indexed file is evaluated again (``indexing.sync.plan_sync``).
    """

    def __init__(
        self,
        root: Path | _GitignoreSource,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        use_gitignore: bool = True,
        extra_excluded_dirs: Sequence[str] = (),
    ) -> None:
        # A work tree's root (its .gitignore files read from disk), or a tree that reads them
        # itself (indexing.tree: a commit of a clone).
        self._source = root if hasattr(root, "gitignore_lines") else None
        self.root = None if self._source is not None else Path(root)
        self._include = pathspec.GitIgnoreSpec.from_lines(include) if include else None
        self._exclude = pathspec.GitIgnoreSpec.from_lines(exclude) if exclude else None
        self._use_gitignore = use_gitignore
        self._ignore_cache: dict[str, pathspec.GitIgnoreSpec | None] = {}
        self._excluded_dirs = set(ALWAYS_EXCLUDED_DIRS) | set(extra_excluded_dirs)
        rules = {"include": list(include), "exclude": list(exclude), "gitignore": use_gitignore,
                 "excluded_dirs": sorted(self._excluded_dirs)}
        self.fingerprint = hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()[:16]

    def reason_to_skip(self, rel: str) -> str | None:
        """Return why ``rel`` (POSIX, relative) is not indexed, or None when it may be."""
        parts = rel.split("/")
        if any(p in self._excluded_dirs for p in parts[:-1]) or rel in self._excluded_dirs:
            return "inside an excluded directory"
        if self._exclude is not None and self._exclude.match_file(rel):
            return "excluded by pattern"
        if self._include is not None and not self._include.match_file(rel):
            return "not matched by the include patterns"
        if self._use_gitignore and self._gitignored(parts):
            return "ignored by .gitignore"
        return None

    def dir_excluded(self, rel_dir: str) -> bool:
        """True when the directory ``rel_dir`` (POSIX, relative) is pruned from a full scan."""
        parts = rel_dir.split("/")
        if parts[-1] in self._excluded_dirs:
            return True
        if self._exclude is not None and self._exclude.match_file(rel_dir + "/"):
            return True
        return self._use_gitignore and self._gitignored(parts, is_dir=True)

    def _spec_for(self, rel_dir: str) -> pathspec.GitIgnoreSpec | None:
        """The rules of ``<rel_dir>/.gitignore``, read through the containment check like any
        file (a ``.gitignore`` symlink pointing outside is not read); None when there is none."""
        if rel_dir not in self._ignore_cache:
            rel = f"{rel_dir}/.gitignore" if rel_dir else ".gitignore"
            try:
                if self._source is not None:
                    lines = self._source.gitignore_lines(rel_dir)
                else:
                    lines = read_file(self.root, rel, GITIGNORE_MAX_BYTES).decode("utf-8", errors="replace").splitlines()
                spec = None if lines is None else pathspec.GitIgnoreSpec.from_lines(lines)
            except (FileIssue, ValueError):
                spec = None
            self._ignore_cache[rel_dir] = spec
        return self._ignore_cache[rel_dir]

    def _gitignored(self, parts: list[str], is_dir: bool = False) -> bool:
        """gitignore semantics: an ignored parent directory hides everything below it;
        for the path itself, the deepest .gitignore with a matching rule decides."""
        for depth in range(1, len(parts)):
            if self._decide("/".join(parts[:depth]), is_dir=True):
                return True
        return self._decide("/".join(parts), is_dir=is_dir)

    def _decide(self, rel: str, is_dir: bool) -> bool:
        parts = rel.split("/")
        verdict: bool | None = None
        for depth in range(len(parts)):
            spec = self._spec_for("/".join(parts[:depth]))
            if spec is None:
                continue
            sub = "/".join(parts[depth:]) + ("/" if is_dir else "")
            result = spec.check_file(sub)
            if result.include is not None:
                verdict = result.include
        return bool(verdict)


def walk(root: Path, file_filter: FileFilter, under: str = "") -> Iterator[str]:
    """Yield every indexable file under ``root`` (or under its directory ``under``, a POSIX path
    relative to it) as a POSIX path relative to ``root``.

    Order: depth first, entries sorted by name within each directory (repeatable).
    Directories excluded by the filter are pruned (never descended into); symlinks to
    directories are not followed; other symlinks are yielded, dangling and looping ones
    too (reading refuses those that leave the root or lead nowhere, and says why). Files the
    filter rejects are not yielded. An unreadable directory is passed over.
    """
    root = Path(root)
    stack = [under.strip("/")]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(root / rel_dir if rel_dir else root), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_dir(follow_symlinks=False):
                if not file_filter.dir_excluded(rel):
                    subdirs.append(rel)
            elif (entry.is_file(follow_symlinks=False) or (entry.is_symlink() and not _links_to_dir(entry))) \
                    and file_filter.reason_to_skip(rel) is None:
                yield rel
        stack.extend(reversed(subdirs))


def _links_to_dir(entry: os.DirEntry) -> bool:
    """True for a symlink to a directory; False for one that loops or leads nowhere."""
    try:
        return entry.is_dir()
    except OSError:  # ELOOP, ENAMETOOLONG: reading it will report why
        return False


@dataclass(frozen=True, slots=True)
class DecodedText:
    """A file's text and the encoding it was decoded with (``utf-8`` or ``latin-1``)."""

    text: str
    encoding: str


def decode(data: bytes) -> DecodedText:
    """Decode file bytes as text.

    Raises :class:`FileIssue` with status ``skipped`` for binary data (a NUL byte in the
    first 8 KiB) and status ``error`` for bytes that are neither UTF-8 nor plausible Latin-1.
    """
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        raise FileIssue("binary file", status="skipped")
    try:
        return DecodedText(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        pass
    sample = data[:BINARY_SNIFF_BYTES]
    if sum(1 for b in sample if b in _CONTROL) > len(sample) // 100:
        raise FileIssue("undecodable: neither UTF-8 nor Latin-1 text")
    return DecodedText(data.decode("latin-1"), "latin-1")


def read_file(root: Path, rel: str, max_size: int) -> bytes:
    """Read ``root/rel`` whole, through the containment check (:func:`indexing.paths.open_inside`:
    a path that resolves outside the root is refused at the moment of reading), refusing
    files above ``max_size`` bytes.

    Raises :class:`FileIssue`: ``error`` for a missing file, a symlink pointing outside, a
    non-regular file, a permission error; ``skipped`` for an oversized one.
    """
    fd = open_inside(root, rel)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FileIssue("is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise FileIssue("not a regular file")
        if st.st_size > max_size:
            raise FileIssue(f"oversized: {st.st_size} bytes > limit {max_size}", status="skipped")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(max_size + 1)
    except OSError as exc:
        raise FileIssue(f"unreadable: {exc.strerror or exc}", transient=True) from None
    finally:
        os.close(fd)
    if len(data) > max_size:
        raise FileIssue(f"oversized: more than {max_size} bytes", status="skipped")
    return data
