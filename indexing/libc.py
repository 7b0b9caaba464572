"""The C library through ctypes, for the calls Python does not wrap: ``renameat2`` (an index
home's atomic switch, ``indexing.install``) and glibc's ``malloc_trim`` and ``mallopt``
(``indexing.lance_store``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The process's C library with ``errno`` kept for ``ctypes.get_errno``, loaded once; None
    off Linux or where it cannot be found (the callers then do without)."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
