"""Per-repository locks that serialise planning and commits.

The embedded mode uses an advisory file lock (``fcntl.flock``) under the index home:
it is released by the kernel when the holder dies, so a crash never leaves it held.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from indexing.errors import LockTimeoutError


@contextmanager
def repo_lock(home: Path, repo_id: str, timeout: float) -> Iterator[None]:
    """Hold the lock of ``repo_id`` for the ``with`` block.

    Waits up to ``timeout`` seconds, polling every 50 ms; raises :class:`LockTimeoutError`
    when another process keeps it longer. Released on every exit path.
    """
    locks = Path(home) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(repo_id.encode()).hexdigest()[:32]
    fd = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"repository {repo_id} is locked by another sync (waited {timeout:.0f}s); retry later"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
