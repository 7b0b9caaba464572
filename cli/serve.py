"""``codeindex serve``: the embedded mode's warm local server, on a Unix socket in the index home.

It holds what a one-shot command pays for at every start (the interpreter's imports, LanceDB,
the model's weights) and runs the CLI's own commands for the thin client (:mod:`cli.client`):
``sync``, ``search``, ``status`` and ``export`` give the same output and exit code through it
as in-process, because they are the same code (:func:`cli.main.main`) run with the client's
arguments, directory, environment and input. Like ``dmypy`` and Gradle's daemon: one server
per index home (an ``flock``), started in the foreground or on demand (``sync --daemon``),
exiting after an idle timeout or ``serve --stop``.

Commands run one at a time (they would queue on the index's locks anyway). A server killed
during a sync loses nothing that was committed: the client reports the broken stream and the
next sync, through a new server or in-process, redoes the rest (the sync's own journal).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.transport import connect, request_json
from cli.common import LIBRARIES, JsonOut, LogLevel, RootOpt, log_at, print_json, setup
from config.local import MAX_SOCKET_PATH, LocalServer
from indexing.errors import RefusedError, UsageError

log = logging.getLogger("codeindex.serve")


class _Output(io.RawIOBase):
    """A command's stdout or stderr: what it writes goes to the client as frames."""

    def __init__(self, name: str, put: Callable[[str, bytes], None], tty: bool) -> None:
        super().__init__()
        self._name, self._put, self._tty = name, put, tty

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if data:
            self._put(self._name, bytes(data))
        return len(data)

    def isatty(self) -> bool:
        return self._tty


class _Input(io.BytesIO):
    """A command's stdin: the bytes the client sent, a terminal when the client's stdin is one."""

    def __init__(self, data: bytes, tty: bool) -> None:
        super().__init__(data)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _text(raw: _Output, *, buffered: bool) -> io.TextIOWrapper:
    """A text stream over ``raw`` as the interpreter makes ``sys.stdout`` (UTF-8; undecodable
    path bytes pass through as in the POSIX locale); stderr (``buffered=False``) writes through."""
    return io.TextIOWrapper(io.BufferedWriter(raw, 65536), encoding="utf-8", errors="surrogateescape",
                            write_through=not buffered, line_buffering=not buffered)


class CommandRunner:
    """Runs ``codeindex`` commands in this process, one at a time, as the client would run them.

    ``entry`` is the CLI's entry point (:func:`cli.main.main`: it reads ``sys.argv`` and ends in
    ``SystemExit``). For each command the process's argv, working directory, environment,
    standard streams and logging are the client's, and are restored afterwards.
    """

    def __init__(self, entry: Callable[[], None]) -> None:
        self._entry = entry
        self._lock = threading.Lock()

    def __call__(self, command, put: Callable[[str, bytes], None]) -> int:
        """Run ``command`` (:class:`api.local.LocalCommand`); ``put(stream, bytes)`` receives its
        output; returns its exit code (2 for a command that cannot start here)."""
        try:
            data = command.stdin_bytes()
        except ValueError:
            put("stderr", b"error: the client sent malformed standard input\n")
            return 2
        if not os.path.isdir(command.cwd):
            put("stderr", f"error: the working directory {command.cwd} is gone\n".encode())
            return 2
        with self._lock, self._as_client(command, data, put) as streams:
            try:
                self._entry()
                code = 0
            except SystemExit as exc:
                code = _exit_code(exc.code, streams[1])
            except BaseException as exc:  # noqa: BLE001 - the server outlives the command's bug
                streams[1].write(f"error: unexpected {type(exc).__name__} in codeindex serve: {exc}\n")
                code = 5
        return code

    @contextlib.contextmanager
    def _as_client(self, command, data: bytes, put) -> Iterator[tuple[io.TextIOWrapper, io.TextIOWrapper]]:
        saved_streams = sys.stdin, sys.stdout, sys.stderr
        saved_argv, saved_env = sys.argv, dict(os.environ)
        saved_logging = [(logger, logger.level, logger.handlers[:])
                         for logger in map(logging.getLogger, ("", *LIBRARIES))]
        saved_cwd = os.getcwd()
        out = _text(_Output("stdout", put, command.stdout_isatty), buffered=True)
        err = _text(_Output("stderr", put, command.stderr_isatty), buffered=False)
        os.chdir(command.cwd)
        os.environ.clear()
        os.environ.update(command.env)
        sys.argv = ["codeindex", *command.argv]
        sys.stdin = io.TextIOWrapper(_Input(data, command.stdin_isatty), encoding="utf-8", errors="surrogateescape")
        sys.stdout, sys.stderr = out, err
        try:
            yield out, err
        finally:
            for stream in (out, err):
                with contextlib.suppress(Exception):
                    stream.flush()
            sys.stdin, sys.stdout, sys.stderr = saved_streams
            sys.argv = saved_argv
            os.environ.clear()
            os.environ.update(saved_env)
            for logger, level, handlers in saved_logging:
                logger.setLevel(level)
                logger.handlers[:] = handlers
            os.chdir(saved_cwd)


def _exit_code(code: object, err: io.TextIOWrapper) -> int:
    """The process exit status ``sys.exit(code)`` would give (a message goes to stderr, 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    err.write(f"{code}\n")
    return 1


@contextlib.contextmanager
def server_lock(local: LocalServer) -> Iterator[None]:
    """Hold ``local.lock`` (``flock``, released by the kernel if the server dies) with this pid
    in it. Raises :class:`RefusedError` naming the pid when another server holds it."""
    local.home.mkdir(parents=True, exist_ok=True)
    fd = os.open(local.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise RefusedError(f"a codeindex server already serves {local.home} (pid {other}); "
                               "`codeindex serve --stop` stops it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def bind_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 from its creation (the umask, then chmod);
    a file left there by a server that died is replaced (the caller holds the server lock).
    Raises :class:`UsageError` for a path longer than a socket address holds."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise UsageError(f"the index home's socket path {path} is longer than {MAX_SOCKET_PATH} bytes, "
                         "the most a Unix socket address holds: set CODEINDEX_HOME to a shorter directory")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # stale: the lock is ours, so no live server listens there
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(os.fspath(path))
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def run_server(local: LocalServer, entry: Callable[[], None], idle_timeout: float, loglevel: LogLevel,
               warm: Callable[[], None] | None = None) -> None:
    """Serve ``local.home`` until stopped (SIGTERM, SIGINT, ``/v1/local/stop``) or idle for
    ``idle_timeout`` seconds (0: never). ``warm()`` runs in the background once listening (the
    model's load). Raises RefusedError when another server holds the home, UsageError for a
    socket path too long."""
    import uvicorn  # lazy: only the server needs it

    from api.local import Activity, create_local_app  # lazy: FastAPI, only for the server

    with server_lock(local):
        sock = bind_socket(local.socket)
        inode = os.stat(local.socket).st_ino
        activity = Activity()
        holder: dict[str, uvicorn.Server] = {}

        def stop() -> None:
            holder["server"].should_exit = True

        about = {"home": str(local.home), "pid": os.getpid(), "socket": str(local.socket)}
        app = create_local_app(CommandRunner(entry), activity, stop, about)
        server = holder["server"] = uvicorn.Server(uvicorn.Config(
            app, log_level=loglevel.value.lower(), access_log=loglevel is LogLevel.DEBUG, log_config=None,
            lifespan="off", timeout_keep_alive=5))
        if idle_timeout:
            threading.Thread(target=_watch_idle, args=(server, activity, idle_timeout), daemon=True).start()
        if warm is not None:
            threading.Thread(target=_warm, args=(warm,), daemon=True).start()
        log.warning("codeindex serve: %s on %s (pid %d), idle timeout %s", local.home, local.socket, os.getpid(),
                    f"{idle_timeout:g} s" if idle_timeout else "none")
        for signum in (signal.SIGTERM, signal.SIGINT):
            # uvicorn shuts down on these, then raises them again under the handler it found:
            # this one, so that the socket is removed below and the exit status is 0.
            signal.signal(signum, _exit_quietly)
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                if os.stat(local.socket).st_ino == inode:
                    local.socket.unlink()
            log.warning("codeindex serve: stopped (%s)", local.home)


def _exit_quietly(signum, frame) -> None:
    raise SystemExit(0)


def _watch_idle(server, activity, idle_timeout: float) -> None:
    while not server.should_exit:
        if activity.idle_for() >= idle_timeout:
            log.warning("codeindex serve: idle for %g s, exiting", idle_timeout)
            server.should_exit = True
            return
        time.sleep(min(1.0, idle_timeout / 4))


def _warm(warm: Callable[[], None]) -> None:
    try:
        warm()
    except Exception as exc:  # noqa: BLE001 - the first command loads what it needs and says why
        log.warning("codeindex serve: warming up failed: %s", exc)


def _warm_up() -> None:
    """Load what the first command would: LanceDB, the embedder's tokenizer and weights."""
    from indexing.lance_store import import_lancedb  # lazy: the point is to load it here, ahead of use
    from workers.runtime import runtime  # lazy: likewise

    import_lancedb()
    embedder = runtime().embedder
    embedder.count_tokens(["warm up"])
    embedder.embed(["warm up"])


def stop_server(local: LocalServer, timeout: float = 60.0) -> dict:
    """Ask the server of ``local.home`` to exit and wait up to ``timeout`` seconds for its
    socket to go; ``{"stopped": bool, "pid": ...}``; a stale socket is removed."""
    conn = connect(local.socket)
    if conn is None:
        with contextlib.suppress(FileNotFoundError):
            if not _lock_held(local):
                local.socket.unlink()
        return {"stopped": False, "running": False, "home": str(local.home)}
    try:
        answer = request_json(conn, "POST", "/v1/local/stop")
    finally:
        conn.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _lock_held(local):
        time.sleep(0.05)
    return {"stopped": not _lock_held(local), "running": _lock_held(local), "pid": answer.get("pid"),
            "home": str(local.home)}


def _lock_held(local: LocalServer) -> bool:
    """True while a server holds ``local.lock``."""
    try:
        fd = os.open(local.lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    finally:
        os.close(fd)
    return False


def register(app: typer.Typer, entry: Callable[[], None]) -> None:
    """Add ``codeindex serve`` to the ``codeindex`` app; ``entry`` is the CLI's entry point."""

    @app.command()
    def serve(
        stop: Annotated[bool, typer.Option("--stop", help="Stop the server of this index home (it finishes the command it runs).")] = False,
        idle_timeout: Annotated[Optional[float], typer.Option(
            "--idle-timeout", min=0, help="Exit after this many seconds without a command; 0 never "
                                          "(default CODEINDEX_SERVE_IDLE_TIMEOUT, 900).")] = None,
        loglevel: Annotated[LogLevel, typer.Option("--loglevel", "-l", help="Log level.")] = LogLevel.WARNING,
        json_out: JsonOut = False,
        root: RootOpt = None,
    ) -> None:
        """Keep the embedded mode warm: serve this index home's sync, search, status and export
        on a Unix socket (<home>/serve.sock, mode 0600), in the foreground until SIGTERM,
        `serve --stop` or the idle timeout.

        `codeindex sync`, `search`, `status` and `export` go through it while it runs (the
        same output and exit codes) and run in-process otherwise; `codeindex sync --daemon`
        (or CODEINDEX_DAEMON=1) starts one detached when none runs, for git hooks.
        """
        _, settings = setup(root, None)
        local = LocalServer(settings.home or settings.home_for(Path.cwd()))
        if stop:
            answer = stop_server(local)
            if json_out:
                return print_json(answer)
            sys.stdout.write(f"stopped the server of {local.home} (pid {answer['pid']})\n" if answer["stopped"]
                             else f"no server runs for {local.home}\n" if not answer["running"]
                             else f"the server of {local.home} did not stop within 60 s\n")
            if answer["running"]:
                raise typer.Exit(4)
            return None
        if not settings.eager:
            raise UsageError("codeindex serve keeps the embedded mode warm; a fleet's HTTP entry point is `codeindex api`")
        log_at(loglevel)
        run_server(local, entry, settings.serve_idle_timeout if idle_timeout is None else idle_timeout,
                   loglevel, warm=_warm_up)
        return None

