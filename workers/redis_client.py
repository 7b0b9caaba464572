"""Redis clients for locks and circuit breakers: every call has a timeout, connection errors
are retried a few times with backoff, and each process has its own client, so a forked
worker never shares a socket with its parent.
"""

from __future__ import annotations

import os
import threading

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

HEALTH_CHECK_INTERVAL = 30
RETRIES = 3

_lock = threading.Lock()
_clients: dict[tuple[str, float, int], redis.Redis] = {}


def redis_client(url: str, *, timeout: float = 5.0) -> redis.Redis:
    """The client of this process for ``url``, made on first use.

    ``timeout`` bounds each connect and each reply; a connection or timeout error is retried
    ``RETRIES`` times with jittered exponential backoff. Replies are bytes
    (``decode_responses`` off): pybreaker's ``CircuitRedisStorage`` decodes them itself and
    fails on ``str`` (danielfm/pybreaker#51). Cached per ``(url, timeout, pid)``.
    """
    key = (url, timeout, os.getpid())
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                health_check_interval=HEALTH_CHECK_INTERVAL,
                retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RETRIES),
            )
            _clients[key] = client
        return client


def _after_fork_in_child() -> None:
    # The parent's lock may have been held by another thread at fork time, and its clients'
    # sockets belong to the parent: forget both without closing the sockets.
    global _lock
    _lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
