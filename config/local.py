"""Where the embedded mode's local server (``codeindex serve``) lives, read without pydantic.

The thin client (:mod:`cli.client`) decides from this alone whether a command goes to a
running server, so it must not pay for the settings model's import (pydantic-settings, about
0.1 s). The names and defaults are :class:`config.settings.Settings`' (``home``, ``daemon``,
``broker_url``); tests/unit/test_local_server.py checks that they agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The server's files inside the index home: its socket (mode 0600), the lock that keeps one
#: server per home (holding the server's pid), and the log of a server started detached.
SOCKET_NAME = "serve.sock"
LOCK_NAME = "serve.lock"
LOG_NAME = "serve.log"

#: The longest path a Unix socket address holds on Linux (``sun_path`` is 108 bytes, NUL included).
MAX_SOCKET_PATH = 107

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class LocalServer:
    """The local server's files for one index home (absolute paths)."""

    home: Path

    @property
    def socket(self) -> Path:
        """The Unix socket the server listens on."""
        return self.home / SOCKET_NAME

    @property
    def lock(self) -> Path:
        """The file whose ``flock`` one server holds while it runs (its pid inside)."""
        return self.home / LOCK_NAME

    @property
    def log(self) -> Path:
        """Where a server started detached (``sync --daemon``) writes its log."""
        return self.home / LOG_NAME


def option_value(argv: Sequence[str], name: str) -> str | None:
    """The value of the long option ``name`` (``--root X`` or ``--root=X``) in ``argv``, the last
    one when repeated (click's rule for a single-valued option); None when absent."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value


def work_tree_root(start: Path) -> Path:
    """The git work tree around ``start`` (the nearest parent holding ``.git``, a directory or
    a worktree's file, as ``git rev-parse --show-toplevel`` finds it), else ``start``."""
    for directory in (start, *start.parents):
        if (directory / ".git").exists():
            return directory
    return start


def local_server(argv: Sequence[str], cwd: Path, env: Mapping[str, str] = os.environ) -> LocalServer:
    """The local server of the index home that ``codeindex ARGV`` run in ``cwd`` would use:
    ``CODEINDEX_HOME`` when set, else ``<root>/.codeindex`` with the root from ``--root`` or the
    work tree around ``cwd`` (the rule of :meth:`config.settings.Settings.home_for` and
    :func:`cli.common.setup` in the embedded mode)."""
    home = env.get("CODEINDEX_HOME")
    if home:
        return LocalServer(Path(os.path.realpath(cwd / home)))
    root = option_value(argv, "--root")
    base = Path(os.path.realpath(cwd / root)) if root else work_tree_root(cwd)
    return LocalServer(Path(os.path.realpath(base / ".codeindex")))


def embedded(env: Mapping[str, str] = os.environ) -> bool:
    """True in the embedded mode (``CODEINDEX_BROKER_URL`` unset or ``memory://``, the rule of
    :attr:`config.settings.Settings.eager`): the only mode a local server serves."""
    return env.get("CODEINDEX_BROKER_URL", "memory://").startswith("memory://")


def daemon_on_demand(env: Mapping[str, str] = os.environ) -> bool:
    """``CODEINDEX_DAEMON``: every ``codeindex sync`` behaves as ``sync --daemon``."""
    return env.get("CODEINDEX_DAEMON", "").strip().lower() in _TRUE
