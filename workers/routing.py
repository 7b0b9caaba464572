"""Shard routing: which shard owns a repository, and the Celery router that sends every
repository-bound task to its owner's queue.

The rules (DESIGN.md "Sharding", seed 002's ShardRouter):

- An existing assignment to an *active* shard stands (assignments are sticky: the clone lives
  on that worker's disk).
- Otherwise the consistent-hash ring over the active shards picks, walking the ring's
  preference list past shards that are at capacity, and the choice is stored with a
  compare-and-set, so two publishers racing for a new repository agree on one owner.
- Embedding batches go to the shared ``embed`` queue, beat's jobs to ``maintenance``.

The embedded mode has one shard (``local``) and no registry; everything routes to
``shard.local`` and runs in-process anyway.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from config.celery import Queue, shard_queue
from config.settings import Settings, get_settings
from indexing.errors import CodeindexError
from workers.ring import HashRing

log = logging.getLogger("codeindex.routing")

#: Tasks bound to one repository: they run on the owner's ``shard.<id>`` queue.
REPO_TASK_PREFIXES = ("codeindex.sync.plan", "codeindex.sync.commit", "codeindex.backup.",
                      "codeindex.restore.", "codeindex.artifact.")
#: Tasks any worker may run.
EMBED_TASK_PREFIXES = ("codeindex.embed.",)
MAINTENANCE_TASK_PREFIXES = ("codeindex.shards.", "codeindex.cleanup.", "codeindex.sync.fail")


class NoActiveShardError(CodeindexError):
    """No shard is active (or every active one is at capacity): start a worker."""

    exit_code = 4


def task_queue_kind(name: str) -> str:
    """``repo``, ``embed``, ``maintenance`` or ``other`` for task ``name``."""
    if name.startswith(REPO_TASK_PREFIXES):
        return "repo"
    if name.startswith(EMBED_TASK_PREFIXES):
        return "embed"
    if name.startswith(MAINTENANCE_TASK_PREFIXES):
        return "maintenance"
    return "other"


def repo_id_of(args: Sequence | None, kwargs: Mapping | None) -> str | None:
    """The ``repo_id`` a task's arguments carry (a SyncRequest, CommitJob or BatchJob dict), or None."""
    for value in [*(args or ()), *((kwargs or {}).values())]:
        if isinstance(value, Mapping) and isinstance(value.get("repo_id"), str):
            return value["repo_id"]
    return None


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


@functools.lru_cache(maxsize=64)
def _ring(members: frozenset[tuple[str, int]]) -> HashRing:
    return HashRing(dict(members), vnodes=RING_VNODES)


def _ring_for(shards: Iterable) -> HashRing:
    return _ring(frozenset((s.shard_id, s.capacity) for s in shards))


def choose_owner(repo_id: str, shards: Sequence, exclude: Iterable[str] = ()) -> str:
    """Pick the owner of ``repo_id`` among ``shards`` (registry :class:`~workers.registry.Shard`
    records): the ring over the active ones, walking its preference list past shards at capacity.

    Raises :class:`NoActiveShardError` when no active shard has room.
    """
    excluded = set(exclude)
    active = [s for s in shards if s.status == "active" and s.shard_id not in excluded]
    if not active:
        raise NoActiveShardError("no active shard: start a worker with `codeindex worker --shard-id ...`")
    by_id = {s.shard_id: s for s in active}
    for shard_id in _ring_for(active).preference(repo_id):
        if by_id[shard_id].load < by_id[shard_id].capacity:
            return shard_id
    raise NoActiveShardError(f"every active shard is at capacity ({len(active)} shards); add a worker")


def place(registry, repo_id: str, exclude: Iterable[str] = ()) -> Placement:
    """Return the owner of ``repo_id``, assigning (or re-assigning) it when needed.

    An assignment to an active shard outside ``exclude`` stands. Otherwise :func:`choose_owner`
    picks and the choice is stored by compare-and-set against what was read, retried a few
    times when another process changed it meanwhile.
    Raises :class:`NoActiveShardError`, :class:`~indexing.errors.StoreError`.
    """
    excluded = set(exclude)
    for _ in range(5):
        shards = registry.shards()
        current = registry.assignment(repo_id)
        statuses = {s.shard_id: s.status for s in shards}
        if current is not None and statuses.get(current) == "active" and current not in excluded:
            return Placement(repo_id, current, current, False)
        owner = choose_owner(repo_id, shards, excluded)
        if registry.assign(repo_id, owner, expected=current):
            if current is not None:
                log.info("repository %s moved from shard %s to %s", repo_id, current, owner)
            return Placement(repo_id, owner, current, current is not None)
    raise NoActiveShardError(f"could not assign repository {repo_id}: the registry kept changing")


def reassign_from(registry, shard_id: str) -> list[Placement]:
    """Move every repository of ``shard_id`` (draining or offline) to its next owner; the moves."""
    moved = []
    for repo_id in sorted(registry.assignments(shard_id)):
        placement = place(registry, repo_id, exclude=[shard_id])
        if placement.moved:
            moved.append(placement)
    return moved


def rebalance(registry, max_moves: int) -> list[Placement]:
    """Move at most ``max_moves`` repositories whose ring owner is no longer their shard.

    Only repositories on active shards are considered (the others are moved by the heartbeat
    check); a move is a compare-and-set, so a concurrent drain wins. Returns the moves made.
    """
    shards = registry.shards()
    active = [s for s in shards if s.status == "active"]
    if len(active) < 1:
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


class Router:
    """Answers "which queue?" for a task, caching owners for ``settings.route_cache_seconds``.

    A stale cached owner costs little: a message published to a shard that stopped owning the
    repository is moved by beat (:mod:`workers.requeue`), and the plan task re-routes itself.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._owners: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def owner(self, repo_id: str) -> str:
        """The shard that owns ``repo_id`` (assigning it if new). Raises NoActiveShardError, StoreError."""
        if self.settings.state_url is None:
            return self.settings.shard_id
        now = time.monotonic()
        cached = self._owners.get(repo_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        from workers import resources

        shard = place(resources.registry(self.settings), repo_id).shard_id
        with self._lock:
            self._owners[repo_id] = (shard, now + self.settings.route_cache_seconds)
        return shard

    def forget(self, repo_id: str | None = None) -> None:
        """Drop cached owners (one repository, or all)."""
        with self._lock:
            if repo_id is None:
                self._owners.clear()
            else:
                self._owners.pop(repo_id, None)

    def queue_for(self, name: str, args: Sequence | None, kwargs: Mapping | None) -> str | None:
        """The queue of task ``name`` with these arguments, or None to leave Celery's default."""
        kind = task_queue_kind(name)
        if kind == "embed":
            return Queue.EMBED.value
        if kind == "maintenance":
            return Queue.MAINTENANCE.value
        if kind == "repo":
            repo_id = repo_id_of(args, kwargs)
            if repo_id is not None:
                return shard_queue(self.owner(repo_id))
        return None


_router: Router | None = None
_router_lock = threading.Lock()


def router() -> Router:
    """The process's router for the current settings (rebuilt when the settings object changes)."""
    global _router
    settings = get_settings()
    with _router_lock:
        if _router is None or _router.settings is not settings:
            _router = Router(settings)
        return _router


def route_task(name, args, kwargs, options, task=None, **kw):
    """Celery router (``task_routes``): the owner's ``shard.<id>`` for repository-bound tasks,
    ``embed`` for embedding batches, ``maintenance`` for beat's jobs.

    See Celery's "Routing Tasks: Routers". An explicit ``queue=`` option wins over this.
    """
    queue = router().queue_for(name, args, kwargs)
    return {"queue": queue} if queue else None

