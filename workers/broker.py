"""What the broker holds: how many messages wait in each queue, and how old the oldest is."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from workers.app import SENT_AT_HEADER, app


def queue_depths(names: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue (Redis ``LLEN`` of kombu's list; 0 for other brokers).

    Raises kombu/redis connection errors when the broker is unreachable.
    """
    depths: dict[str, int] = {}
    with app.connection_for_read() as conn:
        client = getattr(conn.default_channel, "client", None)
        for name in names:
            depths[name] = int(client.llen(name)) if client is not None else 0
    return depths


def oldest_message_ages(names: Iterable[str], now: float | None = None) -> dict[str, float]:
    """Seconds since the oldest message waiting in each queue was published, for the queues
    that hold one stamped with :data:`workers.app.SENT_AT_HEADER` (a message published by
    codeindex); a queue that is empty, or whose oldest message carries no stamp, is absent.

    kombu's Redis transport pushes new messages at the head of a queue's list (``LPUSH``) and
    consumers take them from its tail (``BRPOP``), so the oldest is ``LINDEX name -1``; the
    header is in the JSON envelope kombu stores. Only Redis brokers are read (others: empty).
    ``now``: Unix seconds (default: the clock). Raises kombu/redis connection errors.
    """
    now = time.time() if now is None else now
    ages: dict[str, float] = {}
    with app.connection_for_read() as conn:
        client = getattr(conn.default_channel, "client", None)
        if client is None:
            return ages
        for name in names:
            raw = client.lindex(name, -1)
            try:
                sent = float(json.loads(raw)["headers"][SENT_AT_HEADER]) if raw is not None else None
            except (ValueError, KeyError, TypeError):  # not a codeindex message, or not JSON
                sent = None
            if sent is not None:
                ages[name] = max(0.0, now - sent)
    return ages
