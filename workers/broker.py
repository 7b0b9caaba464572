"""What the broker holds: how many messages wait in each queue."""

from __future__ import annotations

from collections.abc import Iterable

from workers.app import app


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
