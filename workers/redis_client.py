"""Redis clients for locks and circuit breakers: every call has a timeout, and connection
errors are retried a few times with backoff (redis-py's own ``Retry``)."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

HEALTH_CHECK_INTERVAL = 30
RETRIES = 3


def redis_client(url: str, *, timeout: float = 5.0) -> redis.Redis:
    """A new client for ``url``; the caller keeps it (``workers.runtime`` keeps one per process,
    so a forked worker never shares a socket with its parent).

    ``timeout`` (seconds) bounds each connect and each reply; a connection or timeout error is
    retried ``RETRIES`` times with jittered exponential backoff. Replies are bytes
    (``decode_responses`` off): pybreaker's ``CircuitRedisStorage`` decodes them itself and
    fails on ``str`` (danielfm/pybreaker#51).
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RETRIES),
    )
