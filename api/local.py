"""The embedded mode's local server: the API served on a Unix socket by ``codeindex serve``.

It runs CLI commands for the thin client (:mod:`cli.client`) in a process that keeps the model,
the stores and the state warm: ``POST /v1/local/commands`` takes a command line with its
working directory, environment and standard input, and answers with the command's output as
it is written, one JSON frame a line (``application/x-ndjson``):

    {"stdout": "<base64>"}   {"stderr": "<base64>"}   {"alive": true}   {"exit": 0}

``alive`` comes every :data:`KEEPALIVE_SECONDS` while the command writes nothing, so a client
can tell a long sync from a dead server; ``exit`` is the last frame. The socket's mode (0600,
set by ``codeindex serve``) is the authentication, as for Docker's socket: only its owner can
connect. The fleet's routes (api/app.py) need a broker and PostgreSQL and are not served here.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable

import anyio
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

log = logging.getLogger("codeindex.serve")

#: Seconds without output after which the stream carries an ``alive`` frame.
KEEPALIVE_SECONDS = 5.0


class LocalCommand(BaseModel):
    """One CLI command to run: ``codeindex ARGV`` in ``cwd`` with ``env`` (the client's whole
    environment, as Mercurial's command server takes it), standard input (base64, sent only
    when the command reads it) and whether the client's streams are terminals."""

    argv: list[str] = Field(max_length=10_000)
    cwd: str
    env: dict[str, str]
    stdin: str = ""
    stdin_isatty: bool = False
    stdout_isatty: bool = False
    stderr_isatty: bool = False

    def stdin_bytes(self) -> bytes:
        """The decoded standard input. Raises ValueError for malformed base64."""
        return base64.b64decode(self.stdin, validate=True)


#: Runs one command, passing what it writes as ``(stream name, bytes)``; returns its exit code.
Runner = Callable[[LocalCommand, Callable[[str, bytes], None]], int]


class Activity:
    """When the server last finished a command, how many run now (the idle timeout's clock) and
    how many it has served."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.served = 0
        self.last = time.monotonic()

    def begin(self) -> None:
        """A command started."""
        with self._lock:
            self.running += 1

    def end(self) -> None:
        """A command ended (its exit frame is queued)."""
        with self._lock:
            self.running -= 1
            self.served += 1
            self.last = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the last command ended; 0 while one runs."""
        with self._lock:
            return 0.0 if self.running else time.monotonic() - self.last


class _Frames:
    """The frames of one command, from the thread that runs it to the response that sends them.

    Bounded, so a client that reads slowly slows the command down (as a pipe would); once the
    client is gone (:meth:`detach`) the command's output is dropped and the command runs on.
    """

    def __init__(self, size: int = 256) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue(size)
        self._detached = threading.Event()

    def put(self, stream: str, data: bytes) -> None:
        """Queue ``data`` written to ``stream`` (``stdout`` or ``stderr``)."""
        self._put({stream: base64.b64encode(data).decode("ascii")})

    def exit(self, code: int) -> None:
        """Queue the last frame."""
        self._put({"exit": code})

    def _put(self, frame: dict) -> None:
        line = (json.dumps(frame) + "\n").encode("ascii")
        while not self._detached.is_set():
            try:
                self._queue.put(line, timeout=0.5)
                return
            except queue.Full:
                continue

    def detach(self) -> None:
        """The client is gone: drop what is queued and what comes."""
        self._detached.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    async def stream(self) -> AsyncIterator[bytes]:
        """The frames as the response sends them, an ``alive`` frame in every silence."""
        quiet_since = time.monotonic()
        try:
            while True:
                try:
                    line = await anyio.to_thread.run_sync(self._queue.get, True, 0.5)
                except queue.Empty:
                    if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                        quiet_since = time.monotonic()
                        yield b'{"alive": true}\n'
                    continue
                quiet_since = time.monotonic()
                yield line
                if line.startswith(b'{"exit"'):
                    return
        finally:
            self.detach()


def create_local_app(runner: Runner, activity: Activity, stop: Callable[[], None], about: dict) -> FastAPI:
    """The local server's application.

    ``runner`` runs a command (:class:`cli.serve.CommandRunner`); ``activity`` is told when
    commands begin and end; ``stop()`` asks the server to exit once the running command ends;
    ``about`` (home, pid, socket) is what ``GET /healthz`` answers with.
    """
    app = FastAPI(title="codeindex local server", version="1", description=__doc__)

    @app.get("/healthz")
    def healthz() -> dict:
        """The server lives: its home, pid, socket, and the commands it has served and runs now."""
        return {"status": "ok", **about, "served": activity.served, "running": activity.running}

    @app.post("/v1/local/commands")
    async def commands(command: LocalCommand) -> StreamingResponse:
        """Run ``codeindex ARGV`` here and stream its output (the module's frames)."""
        frames = _Frames()
        activity.begin()

        def work() -> None:
            code = 5
            try:
                code = runner(command, frames.put)
            except Exception as exc:  # noqa: BLE001 - the client gets one line, the server lives on
                log.exception("codeindex serve: the command %s failed", command.argv[:1])
                frames.put("stderr", f"error: unexpected {type(exc).__name__} in codeindex serve: {exc}\n".encode())
            finally:
                frames.exit(code)
                activity.end()

        threading.Thread(target=work, name=f"command-{command.argv[:1]}", daemon=True).start()
        return StreamingResponse(frames.stream(), media_type="application/x-ndjson")

    @app.post("/v1/local/stop")
    def stop_server() -> dict:
        """Exit once the running command (if any) has ended; the socket is removed."""
        stop()
        return {"stopping": True, "pid": os.getpid()}

    return app
