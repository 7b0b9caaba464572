"""Which shard owns a repository: placing it (the only writer of assignments) and reading the
owner for routing (never a writer).

The rules (DESIGN.md "Sharding", seed 002's ShardRouter):

- An existing assignment to an *active* shard stands (assignments are sticky: the clone lives
  on that worker's disk).
- Otherwise the consistent-hash ring over the active shards picks, walking the ring's
  preference list past shards that are at capacity, and the choice is stored with a
  compare-and-set, so two callers racing for a new repository agree on one owner.

Placement happens explicitly: ``repo add`` and the first sync of a repository place it
(:func:`place`), beat and drains move repositories off shards that left (:func:`reassign_from`)
and rebalance (:func:`rebalance`). Publishing a message only reads the stored assignment
(:class:`OwnerCache`), so sending can never write to the registry.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tenacity import Retrying, retry_if_result, stop_after_attempt

from indexing.errors import CodeindexError, UsageError
from workers.registry import Shard, ShardRegistry, ShardStatus
from workers.ring import HashRing

log = logging.getLogger("codeindex.placement")


class NoActiveShardError(CodeindexError):
    """No shard is active (or every active one is at capacity): start a worker."""

    exit_code = 4


class UnplacedRepositoryError(UsageError):
    """A repository-bound task names a repository that no shard owns yet: place it first
    (``codeindex repo add``, or ``codeindex sync``, which places a new repository)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a repository lives now: its shard, and whether this call moved it there."""

    repo_id: str
    shard_id: str
    previous: str | None
    moved: bool


#: Virtual nodes per 100 units of capacity. 40 leaves each shard's share ~16 % off its fair
#: share; 400 keeps the moved fraction of a join or leave within a few % of 1/N for about
#: 2-6 ms per ring build, and rings are cached per set of shards (tests/unit/test_ring.py).
RING_VNODES = 400

#: Compare-and-set attempts of one placement before it gives up (another process kept
#: changing the assignment in between).
PLACE_ATTEMPTS = 5


@functools.lru_cache(maxsize=64)
def _ring(members: frozenset[tuple[str, int]]) -> HashRing:
    return HashRing(dict(members), vnodes=RING_VNODES)


def _ring_for(shards: Iterable[Shard]) -> HashRing:
    return _ring(frozenset((s.shard_id, s.capacity) for s in shards))


def choose_owner(repo_id: str, shards: Sequence[Shard], exclude: Iterable[str] = ()) -> str:
    """Pick the owner of ``repo_id`` among ``shards``: the ring over the active ones, walking
    its preference list past shards at capacity.

    Raises :class:`NoActiveShardError` when no active shard has room.
    """
    excluded = set(exclude)
    active = [s for s in shards if s.status is ShardStatus.ACTIVE and s.shard_id not in excluded]
    if not active:
        raise NoActiveShardError("no active shard: start a worker with `codeindex worker --shard-id ...`")
    by_id = {s.shard_id: s for s in active}
    for shard_id in _ring_for(active).preference(repo_id):
        if by_id[shard_id].load < by_id[shard_id].capacity:
            return shard_id
    raise NoActiveShardError(f"every active shard is at capacity ({len(active)} shards); add a worker")


def _place_once(registry: ShardRegistry, repo_id: str, excluded: set[str]) -> Placement | None:
    """One compare-and-set attempt; None when another process changed the assignment meanwhile."""
    shards = registry.shards()
    current = registry.assignment(repo_id)
    statuses = {s.shard_id: s.status for s in shards}
    if current is not None and statuses.get(current) is ShardStatus.ACTIVE and current not in excluded:
        return Placement(repo_id, current, current, False)
    owner = choose_owner(repo_id, shards, excluded)
    if not registry.assign(repo_id, owner, expected=current):
        return None
    if current is not None:
        log.info("repository %s moved from shard %s to %s", repo_id, current, owner)
    return Placement(repo_id, owner, current, current is not None)


def place(registry: ShardRegistry, repo_id: str, exclude: Iterable[str] = ()) -> Placement:
    """Return the owner of ``repo_id``, assigning (or re-assigning) it when needed.

    An assignment to an active shard outside ``exclude`` stands. Otherwise :func:`choose_owner`
    picks and the choice is stored by compare-and-set against what was read, tried up to
    :data:`PLACE_ATTEMPTS` times when another process changed it meanwhile.
    Raises :class:`NoActiveShardError`, :class:`~indexing.errors.StoreError`.
    """
    excluded = set(exclude)
    attempts = Retrying(retry=retry_if_result(lambda placed: placed is None),
                        stop=stop_after_attempt(PLACE_ATTEMPTS), retry_error_callback=lambda state: None)
    placement = attempts(_place_once, registry, repo_id, excluded)
    if placement is None:
        raise NoActiveShardError(f"could not assign repository {repo_id}: the registry kept changing")
    return placement


def preview_place(registry: ShardRegistry, repo_id: str) -> Placement:
    """Where :func:`place` would put ``repo_id`` now, without writing anything (dry runs).
    Raises :class:`NoActiveShardError`, :class:`~indexing.errors.StoreError`."""
    shards = registry.shards()
    current = registry.assignment(repo_id)
    if current is not None and any(s.shard_id == current and s.status is ShardStatus.ACTIVE for s in shards):
        return Placement(repo_id, current, current, False)
    owner = choose_owner(repo_id, shards)
    return Placement(repo_id, owner, current, current is not None)


def reassign_from(registry: ShardRegistry, shard_id: str) -> list[Placement]:
    """Move every repository of ``shard_id`` (draining or offline) to its next owner; the moves."""
    moved = []
    for repo_id in sorted(registry.assignments(shard_id)):
        placement = place(registry, repo_id, exclude=[shard_id])
        if placement.moved:
            moved.append(placement)
    return moved


def rebalance(registry: ShardRegistry, max_moves: int) -> list[Placement]:
    """Move at most ``max_moves`` repositories whose ring owner is no longer their shard.

    Only repositories on active shards are considered (the others are moved by the heartbeat
    check); a move is a compare-and-set, so a concurrent drain wins. Returns the moves made.
    """
    shards = registry.shards()
    active = [s for s in shards if s.status is ShardStatus.ACTIVE]
    if not active:
        return []
    ring = _ring_for(active)
    load = {s.shard_id: s.load for s in active}
    capacity = {s.shard_id: s.capacity for s in active}
    moves: list[Placement] = []
    for repo_id, current in sorted(registry.assignments().items()):
        if len(moves) >= max_moves:
            break
        if current not in load:
            continue
        target = ring.owner(repo_id)
        if target == current or load[target] >= capacity[target]:
            continue
        if registry.assign(repo_id, target, expected=current):
            load[current] -= 1
            load[target] += 1
            moves.append(Placement(repo_id, target, current, True))
    if moves:
        log.info("rebalancing moved %d repositories: %s", len(moves),
                 ", ".join(f"{m.repo_id} {m.previous}->{m.shard_id}" for m in moves))
    return moves


class OwnerCache:
    """The stored owner of each repository, read from the registry and cached for ``ttl``
    seconds; it never writes.

    A stale cached owner costs little: a message published to a shard that stopped owning the
    repository is moved by beat (``workers.requeue``), and the plan task forwards itself.
    """

    def __init__(self, registry: ShardRegistry, ttl: float) -> None:
        self.registry, self.ttl = registry, ttl
        self._owners: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def owner(self, repo_id: str) -> str:
        """The shard assigned ``repo_id``. Raises :class:`UnplacedRepositoryError` when none is,
        :class:`~indexing.errors.StoreError` when the registry cannot be read in time."""
        now = time.monotonic()
        cached = self._owners.get(repo_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        shard = self.registry.assignment(repo_id)
        if shard is None:
            raise UnplacedRepositoryError(
                f"repository {repo_id} is not placed on any shard: add it with `codeindex repo add` "
                "or sync it with `codeindex sync --repo ...`, which places it")
        self.remember(repo_id, shard, now)
        return shard

    def fresh_owner(self, repo_id: str) -> str:
        """The owner read from the registry now, bypassing (and refreshing) the cache."""
        self.forget(repo_id)
        return self.owner(repo_id)

    def remember(self, repo_id: str, shard_id: str, now: float | None = None) -> None:
        """Cache ``shard_id`` as the owner of ``repo_id`` (an explicit placement's answer)."""
        with self._lock:
            self._owners[repo_id] = (shard_id, (time.monotonic() if now is None else now) + self.ttl)

    def forget(self, repo_id: str | None = None) -> None:
        """Drop cached owners (one repository, or all)."""
        with self._lock:
            if repo_id is None:
                self._owners.clear()
            else:
                self._owners.pop(repo_id, None)
