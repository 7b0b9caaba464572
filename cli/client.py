"""The ``codeindex`` entry point: a thin client of ``codeindex serve`` when one runs, else the CLI.

``sync``, ``search``, ``status`` and ``export`` go to the local server of their index home when
its socket answers (api/local.py's protocol); every other command, ``--help``, and a home with
no live server run the whole CLI in this process (:func:`cli.main.main`). This module imports
the standard library and :mod:`config.local` only: talking to the server costs no Celery,
LanceDB, pydantic or model import.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cli.transport import connect
from config.local import LocalServer, daemon_on_demand, embedded, local_server, option_value

#: The commands a running server takes.
FORWARDED = frozenset({"sync", "search", "status", "export"})

#: Seconds ``sync --daemon`` waits for the server it started to listen.
START_TIMEOUT = 60.0

#: The exit code when the server stops in the middle of a command (cli.main's "a dependency failed").
SERVER_LOST = 4


def _reads_stdin(argv: Sequence[str]) -> bool:
    """Whether the command reads standard input in-process (so the client must send it):
    ``sync`` without another change source, ``search --queries -``."""
    if argv[0] == "sync":
        return not any(arg in ("--detect-changes", "--all") or arg == "--changes" or arg.startswith("--changes=")
                       for arg in argv)
    return argv[0] == "search" and option_value(argv, "--queries") == "-"


def _isatty(stream) -> bool:
    return stream is None or stream.isatty()


def _command(argv: Sequence[str]) -> dict:
    """The request body of ``codeindex ARGV`` run here (api.local.LocalCommand)."""
    stdin = b""
    if sys.stdin is not None and not sys.stdin.isatty() and _reads_stdin(argv):
        stdin = sys.stdin.buffer.read()
    env = dict(os.environ)
    if sys.stdout.isatty() and "COLUMNS" not in env:
        try:  # so that a table is laid out for this terminal, as in-process
            size = os.get_terminal_size(sys.stdout.fileno())
            env.update(COLUMNS=str(size.columns), LINES=str(size.lines))
        except OSError:
            pass
    return {"argv": list(argv), "cwd": os.getcwd(), "env": env, "stdin": base64.b64encode(stdin).decode("ascii"),
            "stdin_isatty": _isatty(sys.stdin), "stdout_isatty": _isatty(sys.stdout),
            "stderr_isatty": _isatty(sys.stderr)}


class _ReaderGone(Exception):
    """Writing to our own stdout or stderr failed: the reader of the pipe went away."""


def _write(stream, data: bytes) -> None:
    try:
        stream.write(data)
        stream.flush()
    except BrokenPipeError:
        raise _ReaderGone() from None


def run_remote(conn: http.client.HTTPConnection, argv: Sequence[str], local: LocalServer) -> int:
    """Run ``codeindex ARGV`` on the server behind ``conn``, writing its output here as it
    comes; its exit code, or :data:`SERVER_LOST` (with one ``error:`` line) when the server
    stops or falls silent before the command ends."""
    out, err = sys.stdout.buffer, sys.stderr.buffer
    try:
        conn.request("POST", "/v1/local/commands", body=json.dumps(_command(argv)).encode(),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            detail = response.read()[:2000].decode("utf-8", "replace")
            err.write(f"error: codeindex serve ({local.socket}) refused the command: {response.status} {detail}\n".encode())
            return 2
        for line in response:
            frame = json.loads(line)
            if "exit" in frame:
                return int(frame["exit"])
            for name, stream in (("stdout", out), ("stderr", err)):
                if name in frame:
                    _write(stream, base64.b64decode(frame[name]))
    except _ReaderGone:  # our reader went away (`| head`): exit 1 and say nothing, as click does in-process
        return 1
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = "the stream ended without an exit status"
    err.write(f"error: the codeindex server ({local.socket}) stopped during the command ({reason}); nothing "
              "it had not committed is in the index: run the command again (in-process if no server runs)\n"
              .encode())
    return SERVER_LOST


def start_detached(local: LocalServer, argv: Sequence[str]) -> http.client.HTTPConnection | None:
    """Start ``codeindex serve`` for ``local.home`` in its own session (its log in
    ``local.log``) and wait up to :data:`START_TIMEOUT` for it to listen; a connection, or None
    (with a warning) when it did not come up. Two clients starting one at once are fine: one
    server takes the lock, the other exits, and both clients connect to the first."""
    local.home.mkdir(parents=True, exist_ok=True)
    # -P: the client's directory (a repository, which may hold a folder named like a library)
    # must not come first on the server's sys.path, as `-m` would put it.
    command = [sys.executable, "-P", "-m", "cli.main", "serve"]
    root = option_value(argv, "--root")
    if root:
        command += ["--root", root]
    with open(local.log, "ab") as log_file:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True)
    deadline = time.monotonic() + START_TIMEOUT
    exited_at = None
    while time.monotonic() < deadline:
        conn = connect(local.socket)
        if conn is not None:
            return conn
        if process.poll() is not None:
            exited_at = exited_at or time.monotonic()
            if time.monotonic() - exited_at > 2.0:  # not the loser of a race to a live server
                break
        time.sleep(0.05)
    sys.stderr.write(f"warning: codeindex serve did not start for {local.home} (see {local.log}); "
                     "syncing in-process\n")
    return None


def forward(argv: Sequence[str]) -> int | None:
    """Run ``codeindex ARGV`` on the local server when one takes it; its exit code, or None
    when the command runs in this process instead."""
    if not argv or argv[0] not in FORWARDED or "--help" in argv:
        return None
    daemon = argv[0] == "sync" and ("--daemon" in argv or daemon_on_demand()) and embedded()
    args = [arg for arg in argv if arg != "--daemon"] if argv[0] == "sync" else list(argv)
    local = local_server(args, Path.cwd())
    conn = connect(local.socket)
    if conn is None and daemon:
        conn = start_detached(local, args)
    if conn is None:
        return None
    try:
        return run_remote(conn, args, local)
    finally:
        conn.close()


def main() -> None:
    """The ``codeindex`` console script (pyproject's ``[project.scripts]``)."""
    code = forward(sys.argv[1:])
    if code is None:
        from cli.main import main as run_here  # lazy: the whole CLI only when no server takes the command

        run_here()
        return
    sys.exit(code)


if __name__ == "__main__":
    main()
