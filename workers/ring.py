"""The hash ring that places repositories on shards: consistent hashing (Karger et al., 1997)
with virtual nodes weighted by capacity, on top of uhashring's md5 continuum.

Lookups hash with md5, never Python's ``hash()``, so every process and machine agrees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from uhashring import HashRing as _Continuum

from indexing.errors import CodeindexError

# A shard of this capacity gets exactly ``vnodes`` virtual nodes; it is the default
# ``shard_capacity`` of config/settings.py, so a fleet left at the defaults gets ``vnodes`` each.
REFERENCE_CAPACITY = 100


class EmptyRingError(CodeindexError, LookupError):
    """A lookup was made on a ring without shards: no worker is registered and live."""


def virtual_nodes(capacity: int, vnodes: int) -> int:
    """Return the number of virtual nodes of a shard of ``capacity``.

    ``vnodes * capacity / REFERENCE_CAPACITY`` rounded half up, at least 1. The count depends on
    the shard's own capacity only, never on the other shards', so adding or removing a shard
    leaves every other shard's points where they were: that is what makes the ring monotone
    (Karger et al.), for any mix of capacities. Scaling by the fleet's mean capacity would not:
    a new shard of unusual capacity would shift the mean and with it every shard's points.
    """
    return max(1, (vnodes * capacity + REFERENCE_CAPACITY // 2) // REFERENCE_CAPACITY)


class HashRing:
    """An immutable consistent-hash ring of shards; build a new one when the fleet changes.

    ``shards`` maps shard id to capacity (an int >= 1, the most repositories the shard may own);
    a shard's weight is its capacity, carried by its number of virtual nodes
    (:func:`virtual_nodes`), so each shard owns about ``capacity / total capacity`` of the keys.
    ``vnodes`` (>= 1) is the count for a shard of ``REFERENCE_CAPACITY``; more gives a more even
    spread (a shard's share deviates by about ``1 / sqrt(its virtual nodes)``) and costs about
    2 µs per virtual node to build.

    Virtual node ``i`` of shard ``s`` is the md5 of ``"s-i"`` as a 128-bit integer, and a key is
    owned by the first virtual node after md5(key) going round the ring: uhashring's default
    (non-ketama) continuum (its README, ``ring.py``, ``ring_meta.py``) given ``vnodes`` per node and
    weight 1. uhashring's own weighting is not used. Its default ring makes ``vnodes * weight``
    points (4,000 per shard of capacity 100, about 75 ms to build ten); its ketama mode divides by
    the total weight (not monotone, and floors a light shard to zero points), hashes to 32 bits
    (points can collide) and inserts points one by one (quadratic build time).

    Raises ``ValueError`` for a shard id that is empty or holds whitespace (it could not name the
    queue ``shard.<id>``, see ``config.celery.shard_queue``), a capacity that is not an int >= 1,
    or ``vnodes`` < 1.
    """

    def __init__(self, shards: Mapping[str, int], vnodes: int = 40) -> None:
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ValueError(f"vnodes must be an int >= 1, got {vnodes!r}")
        for shard_id, capacity in shards.items():
            if not isinstance(shard_id, str) or not shard_id or any(c.isspace() for c in shard_id):
                raise ValueError(f"invalid shard id {shard_id!r}: it must be non-empty, without whitespace")
            if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
                raise ValueError(f"shard {shard_id!r}: capacity must be an int >= 1, got {capacity!r}")
        self._shards = {shard_id: shards[shard_id] for shard_id in sorted(shards)}
        self._vnodes = vnodes
        self._continuum = _Continuum(
            {s: {"vnodes": virtual_nodes(c, vnodes), "weight": 1} for s, c in self._shards.items()}
        )

    @property
    def shards(self) -> dict[str, int]:
        """A copy of the ring's shard id -> capacity mapping, in id order."""
        return dict(self._shards)

    def owner(self, key: str) -> str:
        """Return the id of the shard that owns ``key`` (a repository id).

        Raises :class:`EmptyRingError` when the ring has no shards.
        """
        self._require_shards()
        return self._continuum.get_node(key)

    def preference(self, key: str) -> list[str]:
        """Return every shard id once, in ring order from ``key``: the owner first, then the
        shards that take ``key`` over, in turn, when those before them are skipped (draining,
        offline or full).

        ``preference(key)[1]`` is the owner of ``key`` on the ring without ``preference(key)[0]``,
        since removing a shard moves none of the others' points. Raises :class:`EmptyRingError`
        when the ring has no shards.
        """
        self._require_shards()
        return [conf["nodename"] for conf in self._continuum.range(key, unique=True)]

    def __len__(self) -> int:
        return len(self._shards)

    def __contains__(self, shard_id: object) -> bool:
        return shard_id in self._shards

    def __repr__(self) -> str:
        return f"HashRing({self._shards!r}, vnodes={self._vnodes})"

    def _require_shards(self) -> None:
        if not self._shards:
            raise EmptyRingError(
                "no shard is on the ring: start a worker, or wait for one to register and heartbeat"
            )


def moved_fraction(before: HashRing, after: HashRing, keys: Sequence[str]) -> float:
    """Return the share (0..1) of ``keys`` whose owner on ``after`` differs from that on ``before``.

    Raises ``ValueError`` when ``keys`` is empty and :class:`EmptyRingError` when either ring
    has no shards.
    """
    if not keys:
        raise ValueError("moved_fraction needs at least one key")
    moved = sum(1 for key in keys if before.owner(key) != after.owner(key))
    return moved / len(keys)
