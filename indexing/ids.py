"""Deterministic object ids: the same chunk gets the same id on every machine.

Rule from DESIGN.md ("The data"): ``uuid5(NAMESPACE_URL, f"{collection}:{repo_id}:{path}#{chunk_index}")``
with ``path`` relative to the repository root and POSIX separators.
"""

from __future__ import annotations

import hashlib
import uuid


def object_id(collection: str, repo_id: str, path: str, chunk_index: int) -> str:
    """Return the id (canonical UUID string) of chunk ``chunk_index`` of ``path``.

    ``path`` must already be relative and POSIX (``src/a.py``); a backslash, a leading
    slash or a ``..`` segment raises ``ValueError`` rather than minting an id that
    another machine could never reproduce.
    """
    if chunk_index < 0:
        raise ValueError(f"chunk_index must be >= 0, got {chunk_index}")
    # str.split, not PurePosixPath(path).parts: pathlib interns every part (sys.intern), once
    # for each chunk of a sync, and the interpreter's table of interned strings never shrinks.
    if "\\" in path or path.startswith("/") or ".." in path.split("/") or not path:
        raise ValueError(f"path must be relative POSIX inside the repository, got {path!r}")
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{collection}:{repo_id}:{path}#{chunk_index}"))


def sha256_hex(data: bytes) -> str:
    """Return the SHA-256 of ``data`` as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()
