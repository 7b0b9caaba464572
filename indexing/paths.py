"""Turning a path from a change source into a safe path relative to the repository root.

Paths outside the root, and symlinks whose target leaves it, are refused (DESIGN.md,
"Reliability rules": bad input gets a clear error and loses nothing).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from indexing.errors import FileIssue


def relative_path(root: Path, raw: str) -> str:
    """Return ``raw`` as a POSIX path relative to ``root``.

    ``raw`` may be relative to the root (as git prints paths) or absolute inside it.
    Raises :class:`FileIssue` (status ``error``) when the path leaves the root, lexically
    or through a symlink, and when it is empty or names the root itself.
    """
    if not raw or "\x00" in raw:
        raise FileIssue("empty or invalid path")
    root_abs = Path(os.path.abspath(root))
    candidate = Path(raw) if os.path.isabs(raw) else root_abs / raw
    normal = Path(os.path.normpath(candidate))
    rel = _inside(normal, root_abs)
    if rel is None:
        root_real = Path(os.path.realpath(root_abs))
        rel = _inside(normal, root_real)
        if rel is None:
            raise FileIssue(f"outside the repository root {root_abs}")
        root_abs = root_real
    if rel in ("", "."):
        raise FileIssue("names the repository root, not a file")
    _refuse_escaping_symlink(root_abs, rel)
    return PurePosixPath(*Path(rel).parts).as_posix()


def _inside(path: Path, root: Path) -> str | None:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return None


def _refuse_escaping_symlink(root: Path, rel: str) -> None:
    """Raise FileIssue when ``rel`` or one of its parents is a symlink leading outside ``root``."""
    current = root
    root_real = os.path.realpath(root)
    for part in Path(rel).parts:
        current = current / part
        if current.is_symlink():
            target = os.path.realpath(current)
            if target != root_real and not target.startswith(root_real + os.sep):
                raise FileIssue(f"symlink pointing outside the repository ({target})")
