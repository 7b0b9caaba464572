"""HTTP/1.1 over the local server's Unix socket (the standard library only: the thin client's)."""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path

from config.local import MAX_SOCKET_PATH

#: Seconds to connect to the socket, and the longest silence of a live server (it sends a
#: keepalive frame every 5 s, api/local.py).
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a connected Unix socket."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__("localhost", timeout=READ_TIMEOUT)
        self._unix = sock

    def connect(self) -> None:
        self.sock = self._unix


def connect(path: Path) -> http.client.HTTPConnection | None:
    """A connection to the server listening at ``path``; None when no socket is there, it is
    stale (its server died: nobody accepts) or its path is too long to be one."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH or not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(os.fspath(path))
    except OSError:
        sock.close()
        return None
    sock.settimeout(READ_TIMEOUT)
    return _UnixConnection(sock)


def request_json(conn: http.client.HTTPConnection, method: str, route: str, body: object = None) -> dict:
    """One JSON request and its JSON answer. Raises OSError or http.client.HTTPException."""
    payload = json.dumps(body).encode() if body is not None else b""
    conn.request(method, route, body=payload, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return json.loads(response.read() or b"{}")
