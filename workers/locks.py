"""Per-repository locks that serialise planning and commits.

The embedded mode uses an advisory file lock (filelock's ``flock`` lock) under the index home:
it is released by the kernel when the holder dies, so a crash never leaves it held.
The fleet uses a Redis lock with a time-to-live that a thread renews while it is held;
a holder that stalls past the ttl loses it, and the fencing token refuses its late writes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock
import redis
from redis.exceptions import LockError
from redis.lock import Lock

from indexing.errors import BrokerUnavailableError, LockTimeoutError, StoreError

log = logging.getLogger("codeindex.locks")


@contextmanager
def repo_lock(home: Path, repo_id: str, timeout: float) -> Iterator[None]:
    """Hold the lock of ``repo_id`` (a file under ``<home>/locks``) for the ``with`` block.

    Waits up to ``timeout`` seconds; raises :class:`LockTimeoutError` when another process
    keeps it longer, :class:`StoreError` when the lock file cannot be made (a read-only or full
    index directory). Released on every exit path, and by the kernel if the holder dies.
    """
    locks = Path(home) / "locks"
    name = hashlib.sha256(repo_id.encode()).hexdigest()[:32]
    try:
        locks.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(locks / f"{name}.lock", timeout=timeout, mode=0o644)
        lock.acquire()
    except filelock.Timeout:
        raise LockTimeoutError(
            f"repository {repo_id} is locked by another sync (waited {timeout:.0f}s); retry later") from None
    except OSError as exc:  # a read-only or full index directory
        raise StoreError(f"cannot lock repository {repo_id} under {locks}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        lock.release()


def redis_lock_key(repo_id: str) -> str:
    """The Redis key of the lock of ``repo_id``."""
    return f"codeindex:lock:repo:{repo_id}"


#: Which shard holds each repository lock (lock key -> shard id), so that the locks of a shard
#: declared dead can be broken at once instead of when their ttl runs out.
LOCK_HOLDERS = "codeindex:lock:holders"

# Delete the locks a dead shard holds: each still named as its in the holders' hash.
_BREAK_LOCKS = """
local broken = {}
local entries = redis.call('hgetall', KEYS[1])
for i = 1, #entries, 2 do
  if entries[i + 1] == ARGV[1] then
    redis.call('del', entries[i])
    redis.call('hdel', KEYS[1], entries[i])
    table.insert(broken, entries[i])
  end
end
return broken
"""


def break_locks_of(client: redis.Redis, holder: str) -> list[str]:
    """Break every repository lock ``holder`` (a shard declared dead) holds; the repository ids.

    Safe because every write is fenced: were the holder still alive, its late writes would be
    refused (DESIGN.md, "Reliability rules"). Raises ``redis.RedisError`` when Redis cannot be
    reached."""
    prefix = redis_lock_key("")
    return [key.decode().removeprefix(prefix) for key in client.eval(_BREAK_LOCKS, 1, LOCK_HOLDERS, holder)]


class RedisLockHandle:
    """What the holder of a Redis lock can see while it holds it (``name``: what is locked).

    ``lost`` turns true (with ``lost_reason``) when a renewal finds the lock gone or owned by
    another holder, or when no renewal succeeded for a whole ttl; work done after that is
    protected only by the fencing token. ``renewals`` counts successful renewals.
    """

    def __init__(self, name: str, ttl: float) -> None:
        self.name, self.ttl = name, ttl
        self.lost = False
        self.lost_reason: str | None = None
        self.renewals = 0
        self._stop = threading.Event()

    def _mark_lost(self, reason: str) -> None:
        self.lost, self.lost_reason = True, reason
        log.warning("redis lock lost of %s reason=%s", self.name, reason)


def _renew(lock: Lock, handle: RedisLockHandle, every: float) -> None:
    """Renew ``lock`` every ``every`` seconds until the handle is stopped or the lock is lost.

    Runs in a daemon thread, so it never raises: outcomes are recorded on the handle.
    """
    last_renewed = time.monotonic()
    while not handle._stop.wait(every):
        try:
            lock.extend(handle.ttl, replace_ttl=True)
        except LockError as exc:  # LockNotOwnedError included: expired, or another holder's now
            if not handle._stop.is_set():  # not the release racing a late renewal
                handle._mark_lost(f"renewal refused: {exc}")
            return
        except redis.RedisError as exc:
            # Redis unreachable: the lock may still be ours until its ttl runs out.
            if time.monotonic() - last_renewed >= handle.ttl:
                handle._mark_lost(f"not renewed for {handle.ttl:.1f}s (ttl): {exc}")
                return
            log.warning("redis lock renewal of %s failed error=%s; retrying", handle.name, exc)
        except Exception as exc:  # noqa: BLE001 - escaping, it would end the thread unseen
            handle._mark_lost(f"renewal crashed: {exc!r}")
            return
        else:
            handle.renewals += 1
            last_renewed = time.monotonic()


def redis_repo_lock(client: redis.Redis, repo_id: str, *, ttl: float, timeout: float,
                    renew_every: float | None = None, holder: str | None = None):
    """Hold the Redis lock of repository ``repo_id`` (:func:`redis_lock` on :func:`redis_lock_key`)."""
    return redis_lock(client, redis_lock_key(repo_id), what=f"repository {repo_id}", ttl=ttl, timeout=timeout,
                      renew_every=renew_every, holder=holder)


@contextmanager
def redis_lock(client: redis.Redis, key: str, *, what: str, ttl: float, timeout: float,
               renew_every: float | None = None, holder: str | None = None) -> Iterator[RedisLockHandle]:
    """Hold the Redis lock ``key`` (``what`` names it in messages) for the ``with`` block,
    renewed while held.

    The lock lives ``ttl`` seconds unless renewed; a daemon thread renews it every
    ``renew_every`` seconds (default ``ttl / 3``). ``holder`` (a shard id) is recorded in
    :data:`LOCK_HOLDERS` while held, for :func:`break_locks_of`. Waits up to ``timeout`` seconds for it:
    raises :class:`LockTimeoutError` when another holder keeps it, and
    :class:`BrokerUnavailableError` when Redis cannot be reached. Released on every exit
    path; releasing a lock already lost logs a warning and does not raise, since redis-py's
    token check keeps it from deleting another holder's lock.
    """
    if ttl <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
    every = ttl / 3 if renew_every is None else renew_every
    if not 0 < every < ttl:
        raise ValueError(f"renew_every must be between 0 and ttl ({ttl}), got {every}")
    # thread_local=False: the renewal thread must see the token the acquiring thread got.
    lock = Lock(client, key, timeout=ttl, sleep=0.05, blocking=True, blocking_timeout=timeout, thread_local=False)
    try:
        acquired = lock.acquire()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailableError(f"cannot reach Redis to lock {what}: {exc}; retry when Redis is back") from exc
    if not acquired:
        raise LockTimeoutError(f"{what} is locked by another writer (waited {timeout:g}s); retry later")
    if holder is not None:
        _note_holder(client, key, holder)
    handle = RedisLockHandle(what, ttl)
    renewer = threading.Thread(target=_renew, args=(lock, handle, every), daemon=True, name=f"lock-renewer:{key}")
    renewer.start()
    try:
        yield handle
    finally:
        handle._stop.set()
        renewer.join(timeout=every)
        _release(lock, handle)
        if holder is not None and not handle.lost:
            _note_holder(client, key, None)


def _note_holder(client: redis.Redis, key: str, holder: str | None) -> None:
    """Record (or, with None, forget) who holds the lock ``key``; a failure only delays a dead
    holder's lock to its ttl, so it is logged, never raised."""
    try:
        if holder is None:
            client.hdel(LOCK_HOLDERS, key)
        else:
            client.hset(LOCK_HOLDERS, key, holder)
    except redis.RedisError as exc:
        log.warning("redis lock holder not recorded lock=%s error=%s", key, exc)


def _release(lock: Lock, handle: RedisLockHandle) -> None:
    """Release ``lock``; a lost lock or an unreachable Redis is logged, never raised."""
    try:
        lock.release()
    except LockError as exc:
        if not handle.lost:
            handle.lost, handle.lost_reason = True, f"expired before release: {exc}"
        log.warning("redis lock of %s was lost before release reason=%s; the fencing token "
                    "guards the writes made since", handle.name, handle.lost_reason)
    except redis.RedisError as exc:
        log.warning("redis lock release of %s failed error=%s; it expires after %.1fs",
                    handle.name, exc, handle.ttl)
