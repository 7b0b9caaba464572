"""Paths from a change source, made safe: a POSIX path relative to the repository root, and the
one containment check every read goes through.

Two rules (DESIGN.md, "Reliability rules": bad input gets a clear error and loses nothing):

- :func:`relative_path` refuses, lexically, a path that leaves the root or names it;
- :func:`open_inside` is the only way codeindex opens a file of a repository: the path is
  resolved, refused when it resolves outside the root (a symlink, of the file or of a
  directory above it), and then opened one component at a time beneath the root without
  following any symlink (``openat`` with ``O_NOFOLLOW``), so a symlink swapped in between the
  check and the read cannot lead outside either.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePosixPath

from indexing.errors import FileIssue


def relative_path(root: Path, raw: str) -> str:
    """Return ``raw`` as a POSIX path relative to ``root``, lexically.

    ``raw`` may be relative to the root (as git prints paths) or absolute inside it (either
    spelling of a symlinked root). Raises :class:`FileIssue` (status ``error``) when the path
    leaves the root, when it is empty or holds a NUL, when it names the root itself, and when
    it is not UTF-8 (ids, messages and the state are UTF-8 text).
    Symlinks are not followed here: :func:`open_inside` checks where a path really leads when
    the file is read.
    """
    if not raw or "\x00" in raw:
        raise FileIssue("empty or invalid path")
    root_abs = Path(os.path.abspath(root))
    candidate = Path(raw) if os.path.isabs(raw) else root_abs / raw
    normal = Path(os.path.normpath(candidate))
    rel = _inside(normal, root_abs)
    if rel is None:
        rel = _inside(normal, Path(os.path.realpath(root_abs)))
        if rel is None:
            raise FileIssue(f"outside the repository root {root_abs}")
    if rel in ("", "."):
        raise FileIssue("names the repository root, not a file")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, carried as surrogates (surrogateescape)
        raise FileIssue("file name is not UTF-8: codeindex indexes files with UTF-8 names only") from None
    return PurePosixPath(*Path(rel).parts).as_posix()


def printable(path: str) -> str:
    """``path`` as text that can be printed and stored: bytes that are not UTF-8 (surrogates
    from ``surrogateescape``) written as ``\\xNN`` escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _inside(path: Path, root: Path) -> str | None:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return None


def resolve_inside(root: Path, rel: str) -> str:
    """Where ``root/rel`` really leads: its path relative to the root's real path, every symlink
    resolved (``os.sep`` separated).

    Raises :class:`FileIssue`: ``symlink pointing outside the repository`` when it resolves
    outside the root; ``file not found`` (also a dangling symlink); ``unreadable: ...`` for a
    symlink loop or a name too long. None of these is transient.
    """
    root_real = os.path.realpath(root)
    try:
        target = os.path.realpath(os.path.join(root, rel), strict=True)
    except FileNotFoundError:
        raise FileIssue("file not found") from None
    except OSError as exc:
        raise FileIssue(f"unreadable: {exc.strerror or exc}") from None
    if target != root_real and not target.startswith(root_real.rstrip(os.sep) + os.sep):
        raise FileIssue(f"symlink pointing outside the repository ({target})")
    inner = os.path.relpath(target, root_real)
    if inner == ".":
        raise FileIssue("not a regular file")
    return inner


def open_inside(root: Path, rel: str) -> int:
    """Open ``root/rel`` for reading through the containment check; a file descriptor the caller
    closes.

    The path is resolved (:func:`resolve_inside`), then opened from the root's real path one
    component at a time with ``O_NOFOLLOW``, and non-blocking, so a FIFO cannot hang the
    read. Raises :class:`FileIssue`: those of :func:`resolve_inside`; ``changed while being
    read`` when a component became a symlink after the check; ``permission denied`` and other
    ``unreadable: ...`` errors, which are transient (the file may be readable next time).
    """
    parts = resolve_inside(root, rel).split(os.sep)
    try:
        dir_fd = os.open(os.path.realpath(root), os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise _issue(exc) from None
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = inner
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        raise _issue(exc) from None
    finally:
        os.close(dir_fd)


def is_linked(root: Path, rel: str) -> bool:
    """True when ``root/rel`` leads through a symlink (of the file or a directory above it):
    its content can change when the link's target does, without the path being named."""
    real = os.path.realpath(os.path.join(root, rel))
    if rel.startswith("/"):
        return real != os.path.join(os.path.realpath(root), *PurePosixPath(rel).parts)
    # The parts as PurePosixPath(rel).parts has them, without pathlib's sys.intern of each one
    # (a table that never shrinks), once for every file of a sync.
    return real != os.path.join(os.path.realpath(root), *(p for p in rel.split("/") if p and p != "."))


def _issue(exc: OSError) -> FileIssue:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return FileIssue("changed while being read: a symlink or a file replaced a directory of its path")
    if exc.errno == errno.ENOENT:
        return FileIssue("file not found")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FileIssue("permission denied", transient=True)
    return FileIssue(f"unreadable: {exc.strerror or exc}", transient=True)


def tree_size(path: Path) -> int:
    """Bytes of the files under ``path`` (links not followed; a file that vanishes while it is
    walked counts nothing): a cache's or a table's size on disk."""
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total
