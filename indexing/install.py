"""Installing an index: a snapshot written into a state and a vector store, and the embedded
mode's atomic switch of a whole index home.

:func:`install_snapshot` writes one repository's snapshot into any state and store, under a
fencing token newer than the store holds (a fleet's live stores, or a staged home's new ones).

:func:`switch_home` replaces ``<home>`` by a staged sibling directory with one atomic
``renameat2(RENAME_EXCHANGE)`` (Linux 3.15; a plain rename when there is no home yet), so a
process killed at any moment leaves either the previous index or the new one, complete. The
previous home's other entries (the embedding cache, clones, objects, the server's files) are
then moved into the new home and the rest removed; :func:`recover` finishes or discards what a
killed install left (a staging directory, a previous home not yet emptied).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from indexing.artifacts import Snapshot
from indexing.errors import StoreError
from indexing.libc import libc
from indexing.state import StateStore
from indexing.store import VectorStore

log = logging.getLogger("codeindex.artifacts")

#: The entries of an index home that an install replaces; every other entry is carried over.
INDEX_ENTRIES = frozenset({"state.sqlite", "state.sqlite-journal", "lancedb"})
#: Written into the staged home before the switch: which install made it.
MARKER = ".install.json"
#: Objects written per upsert: few large calls (when each LanceDB upsert refreshed the full-text
#: index, 7 calls of 1,000 spent 3.2 s of a 7,289-object pull on it; a settle between writes
#: folds only at ``lance_store.FTS_SEGMENT_ROWS``); 20,000 384-d objects are about 31 MB of vectors.
_UPSERT_BATCH = 20_000
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def install_snapshot(snap: Snapshot, state: StateStore, store: VectorStore, *, root: str, collection: str) -> int:
    """Make ``state`` and ``store`` hold exactly ``snap`` for its repository: a new fencing
    token is granted, every object is upserted under it, the repository's other objects are
    deleted, and its files' state is replaced. Returns the fencing token. Raises StoreError (and
    StaleFenceError when a sync committed a newer token meanwhile)."""
    state.set_collection_meta(replace(snap.collection, name=collection))
    if snap.url:
        state.set_source(snap.repo_id, collection, snap.url, snap.branch or "")
    fence = state.grant_fence(snap.repo_id, root, collection)
    objects = [replace(o, fence=fence) for o in snap.objects.values()]
    store.ensure_collection(snap.collection.dimension)
    for start in range(0, len(objects), _UPSERT_BATCH):
        store.upsert(objects[start:start + _UPSERT_BATCH])
        store.settle(final=False)
    stale = [c.id for c in store.inventory(snap.repo_id) if c.id not in snap.objects]
    store.delete(stale, fence)
    store.settle()
    gone = sorted(set(state.indexed_paths(snap.repo_id)) - set(snap.files))
    state.commit_files(snap.repo_id, fence, [replace(f, fence=fence) for f in snap.files.values()], gone,
                       snap.commit, snap.filter_fingerprint)
    return fence


def _sibling(home: Path, kind: str, token: str = "*") -> Path:
    """The hidden sibling of ``home`` an install uses: ``.codeindex`` -> ``.codeindex.staging-<token>``."""
    name = home.name if home.name.startswith(".") else "." + home.name
    return home.parent / f"{name}.{kind}-{token}"


def staging_dir(home: Path) -> Path:
    """A new, empty staging directory beside ``home`` (same file system), ignored by git and by
    the scanner (a ``.gitignore`` of ``*``), with the install's marker."""
    token = secrets.token_hex(6)
    staged = _sibling(home, "staging", token)
    staged.mkdir(parents=True)
    (staged / ".gitignore").write_text("*\n")
    (staged / MARKER).write_text(json.dumps({"token": token, "home": str(home)}))
    return staged


def _exchange(a: Path, b: Path) -> bool:
    """Swap the directories ``a`` and ``b`` atomically (``renameat2`` with ``RENAME_EXCHANGE``);
    False where the system has no such call (then the caller renames twice)."""
    call = getattr(libc(), "renameat2", None)
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the file system cannot exchange
        return False
    raise StoreError(f"cannot switch {a} and {b}: {os.strerror(err)}")


def switch_home(home: Path, staged: Path) -> None:
    """Put the complete ``staged`` home in place of ``home`` atomically, then carry the previous
    home's other entries over (:data:`INDEX_ENTRIES` aside) and remove it. Raises StoreError."""
    try:
        if not home.exists():
            os.rename(staged, home)
        else:
            if not (home / ".gitignore").exists():
                (home / ".gitignore").write_text("*\n")
            if not _exchange(staged, home):
                aside = _sibling(home, "previous", secrets.token_hex(6))
                os.rename(home, aside)  # recover() puts it back if we die before the next line
                os.rename(staged, home)
                staged = aside
            _carry_over(staged, home)
        (home / MARKER).unlink(missing_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot install the index into {home}: {exc}") from exc


def _carry_over(previous: Path, home: Path) -> None:
    """Move ``previous``'s entries that are not part of the index into ``home`` (where absent),
    then remove ``previous``."""
    for entry in previous.iterdir():
        if entry.name in INDEX_ENTRIES or entry.name == MARKER or (home / entry.name).exists():
            continue
        os.rename(entry, home / entry.name)
    shutil.rmtree(previous, ignore_errors=True)


def recover(home: Path) -> list[str]:
    """Finish or discard what a killed install of ``home`` left; what it did, for the log.

    A staging directory whose install had switched (``home`` holds its marker) is the previous
    home: its entries are carried over. Any other staging directory is an unfinished build:
    removed. A previous home set aside by the two-rename fallback is put back when ``home`` is
    missing, else carried over.
    """
    done: list[str] = []
    if not home.parent.is_dir():
        return done
    marker = _marker(home)
    for entry in sorted(home.parent.glob(_sibling(home, "staging").name)):
        if marker and entry.name.endswith(marker):
            _carry_over(entry, home)
            done.append(f"carried over the previous index home's files from {entry.name}")
        else:
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed the unfinished install {entry.name}")
    for entry in sorted(home.parent.glob(_sibling(home, "previous").name)):
        if not home.exists():
            os.rename(entry, home)
            done.append(f"put the previous index home back from {entry.name}")
        else:
            _carry_over(entry, home)
            done.append(f"carried over the previous index home's files from {entry.name}")
    if marker:
        (home / MARKER).unlink(missing_ok=True)
    for line in done:
        log.warning("index home %s: %s", home, line)
    return done


def _marker(home: Path) -> str | None:
    try:
        return json.loads((home / MARKER).read_text())["token"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def other_repositories(state: StateStore, repo_id: str) -> Sequence[str]:
    """The repositories besides ``repo_id`` whose index the home's ``state`` holds."""
    return [s.repo_id for s in state.repo_stats() if s.repo_id != repo_id and s.files]
