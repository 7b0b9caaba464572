"""A fleet worker's life: register its shard, heartbeat, drain on SIGTERM, go offline at exit.

Seed 002 ("Pod Registration & Heartbeat", "Graceful Shutdown") is the model:

1. **Start** (``worker_ready``): upsert the shard in the registry as active, with its name,
   address and capacity, then heartbeat every ``heartbeat_interval`` seconds (10 s) from a
   thread of the worker's main process, so a worker whose main process dies stops beating.
2. **SIGTERM** (``worker_shutting_down``, warm shutdown): Celery stops consuming and lets the
   running tasks finish; meanwhile the shard is handed over (``workers.handover``: marked
   draining, its repositories given to their next owners on the ring, the messages still
   queued for it moved to them). A watchdog turns the warm shutdown into a cold one after
   ``grace_period`` seconds (300 s, the seed's terminationGracePeriodSeconds); tasks cut
   short then are redelivered (``acks_late``, ``reject_on_worker_lost``).
3. **Exit** (``worker_shutdown``): the shard is marked offline and the heartbeat stops.

One :class:`ShardLifecycle` object per worker main process holds all of it; :func:`install`
connects it to Celery's signals. Only a worker in a fleet (``CODEINDEX_STATE_URL`` set and a
real broker) takes part; the embedded mode has no registry.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from celery import signals

from workers import metrics
from workers.backups import backup_before_hand_over
from workers.handover import hand_over
from workers.placement import NoActiveShardError
from workers.registry import ShardStatus
from workers.runtime import runtime

log = logging.getLogger("codeindex.lifecycle")


class ShardLifecycle:
    """This worker's shard membership: registration, the heartbeat thread, the drain and its
    grace-period watchdog, and going offline."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.heartbeat_thread: threading.Thread | None = None
        self.drain_thread: threading.Thread | None = None
        self.registered = False

    # start

    def register(self, hostname: str) -> None:
        """Register the shard as active and start heartbeating."""
        rt = runtime()
        settings = rt.settings
        address = settings.shard_address or own_address()
        shard = rt.registry.register(settings.shard_id, hostname, address, settings.shard_capacity)
        self.registered = True
        log.info("shard %s registered (%s, %s, capacity %d)", shard.shard_id, hostname, address, shard.capacity)
        self.stop.clear()
        self.heartbeat_thread = threading.Thread(target=self._beat, args=(hostname, address), daemon=True,
                                                 name="codeindex-heartbeat")
        self.heartbeat_thread.start()

    def _beat(self, hostname: str, address: str) -> None:
        rt = runtime()
        settings, registry = rt.settings, rt.registry
        while not self.stop.wait(settings.heartbeat_interval):
            try:
                shard = registry.get(settings.shard_id)
                if shard is None or shard.status is ShardStatus.OFFLINE:
                    # Declared dead while alive (a long pause, a partition): join again; the ring
                    # gives it new work, and rebalancing brings back its share over time.
                    log.warning("shard %s was %s; registering again", settings.shard_id,
                                "unknown" if shard is None else "offline")
                    registry.register(settings.shard_id, hostname, address, settings.shard_capacity)
                else:
                    registry.heartbeat(settings.shard_id)
                metrics.HEARTBEATS.labels(shard=settings.shard_id).inc()
            except Exception as exc:  # a missed beat is logged; beat decides when it is too many
                log.warning("heartbeat of shard %s failed: %s", settings.shard_id, exc)

    # SIGTERM

    def drain(self) -> None:
        """Seed 002's order: mark the shard draining (no new repositories land here), back up
        every owned repository that changed since its last bundle within ``drain_backup_share``
        of the grace period, then hand the repositories and queued messages to their next owners."""
        rt = runtime()
        shard_id = rt.settings.shard_id
        try:
            rt.registry.set_status(shard_id, ShardStatus.DRAINING)
            self._backup_owned(rt, shard_id)
            done = hand_over(rt, shard_id)
            log.info("shard %s draining: %d repositories handed over, %d queued messages moved",
                     shard_id, len(done.moved), done.messages)
        except NoActiveShardError as exc:
            log.warning("shard %s draining: its repositories stay assigned to it until a shard is active (%s)",
                        shard_id, exc)
        except Exception:
            log.exception("drain of shard %s failed; beat will reassign it when its heartbeat stops", shard_id)

    @staticmethod
    def _backup_owned(rt, shard_id: str) -> None:
        if rt.object_store is None:
            return
        s = rt.settings
        owned = sorted(rt.registry.assignments(shard_id))
        deadline = time.monotonic() + s.grace_period * s.drain_backup_share
        try:
            report = backup_before_hand_over(rt, owned, deadline, incremental=s.backup_incremental)
        except Exception:  # the hand-over matters more: the next owner restores the older bundle
            log.exception("shard %s draining: backups before the hand-over failed", shard_id)
            return
        log.info("shard %s draining: %d repositories backed up, %d unchanged, %d left, %d failed", shard_id,
                 len(report["backed_up"]), len(report["unchanged"]), len(report["left"]), len(report["failed"]))

    def start_drain(self) -> None:
        """Drain in a thread while Celery finishes the running tasks; force a cold shutdown
        after the grace period."""
        if self.drain_thread is not None or not self.registered:
            return
        self.drain_thread = threading.Thread(target=self.drain, daemon=True, name="codeindex-drain")
        self.drain_thread.start()
        grace = runtime().settings.grace_period
        watchdog = threading.Timer(grace, self._grace_expired, args=(grace,))
        watchdog.daemon = True
        watchdog.start()

    @staticmethod
    def _grace_expired(grace: float) -> None:
        log.error("grace period of %.0fs over with tasks still running: cold shutdown; they will be redelivered",
                  grace)
        os.kill(os.getpid(), signal.SIGQUIT)

    # exit

    def shutdown(self) -> None:
        """Stop heartbeating and mark the shard offline."""
        self.stop.set()
        if self.drain_thread is not None:  # its backups and hand-over, within the grace period
            self.drain_thread.join(timeout=runtime().settings.grace_period)
        if not self.registered:
            return
        rt = runtime()
        try:
            rt.registry.set_status(rt.settings.shard_id, ShardStatus.OFFLINE)
            log.info("shard %s offline", rt.settings.shard_id)
        except Exception as exc:
            log.warning("could not mark shard %s offline (beat will): %s", rt.settings.shard_id, exc)

    # Celery's signals

    def on_ready(self, sender=None, **_) -> None:
        if runtime().in_fleet:
            self.register(getattr(sender, "hostname", None) or socket.gethostname())

    def on_shutting_down(self, sig=None, how=None, exitcode=None, **_) -> None:
        if how == "Warm" and runtime().in_fleet:
            self.start_drain()

    def on_shutdown(self, **_) -> None:
        if runtime().in_fleet:
            self.shutdown()


def own_address() -> str:
    """This host's address for the registry; the host name when it does not resolve (a
    failed lookup must not keep the worker from registering)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return socket.gethostname()


def install() -> ShardLifecycle:
    """Make this process's shard lifecycle and connect it to Celery's worker signals."""
    lifecycle = ShardLifecycle()
    signals.worker_ready.connect(lifecycle.on_ready, weak=False)
    signals.worker_shutting_down.connect(lifecycle.on_shutting_down, weak=False)
    signals.worker_shutdown.connect(lifecycle.on_shutdown, weak=False)
    return lifecycle
