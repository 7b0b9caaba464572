"""A fleet worker's life: register its shard, heartbeat, drain on SIGTERM, go offline at exit.

Seed 002 ("Pod Registration & Heartbeat", "Graceful Shutdown") is the model:

1. **Start** (``worker_ready``): upsert the shard in the registry as active, with its name,
   address and capacity, then heartbeat every ``heartbeat_interval`` seconds (10 s) from a
   thread of the worker's main process, so a worker whose main process dies stops beating.
2. **SIGTERM** (``worker_shutting_down``, warm shutdown): Celery stops consuming and lets the
   running tasks finish; meanwhile the shard is marked draining (no new assignments), its
   repositories go to their next owners on the ring and the messages still queued for it
   are moved to them. A watchdog turns the warm shutdown into a cold one after
   ``grace_period`` seconds (300 s, the seed's terminationGracePeriodSeconds); tasks cut
   short then are redelivered (``acks_late``, ``reject_on_worker_lost``).
3. **Exit** (``worker_shutdown``): the shard is marked offline and the heartbeat stops.

Only a worker in a fleet (``CODEINDEX_STATE_URL`` set) takes part; the embedded mode has no
registry. Forked pool children drop the connections they inherited (``worker_process_init``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from celery import signals

from config.settings import get_settings

log = logging.getLogger("codeindex.lifecycle")


class _Lifecycle:
    """The state of this process's shard membership (one per worker main process)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.heartbeat_thread: threading.Thread | None = None
        self.drain_thread: threading.Thread | None = None
        self.registered = False

    # start

    def register(self, hostname: str) -> None:
        from workers import resources

        settings = get_settings()
        address = settings.shard_address or _own_address()
        shard = resources.registry(settings).register(settings.shard_id, hostname, address, settings.shard_capacity)
        self.registered = True
        log.info("shard %s registered (%s, %s, capacity %d)", shard.shard_id, hostname, address, shard.capacity)
        self.stop.clear()
        self.heartbeat_thread = threading.Thread(target=self._beat, args=(hostname, address), daemon=True,
                                                 name="codeindex-heartbeat")
        self.heartbeat_thread.start()

    def _beat(self, hostname: str, address: str) -> None:
        from workers import metrics, resources

        settings = get_settings()
        registry = resources.registry(settings)
        while not self.stop.wait(settings.heartbeat_interval):
            try:
                shard = registry.get(settings.shard_id)
                if shard is None or shard.status == "offline":
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
        """Mark the shard draining, hand its repositories and queued messages to their next owners."""
        from workers import resources
        from workers.requeue import requeue_from
        from workers.routing import reassign_from, router

        settings = get_settings()
        try:
            registry = resources.registry(settings)
            registry.set_status(settings.shard_id, "draining")
            moved = reassign_from(registry, settings.shard_id)
            router().forget()
            log.info("shard %s draining: %d repositories handed over", settings.shard_id, len(moved))
            count = requeue_from([settings.shard_id])
            log.info("shard %s draining: %d queued messages moved", settings.shard_id, count)
        except Exception:
            log.exception("drain of shard %s failed; beat will reassign it when its heartbeat stops",
                          settings.shard_id)

    def start_drain(self) -> None:
        if self.drain_thread is not None or not self.registered:
            return
        self.drain_thread = threading.Thread(target=self.drain, daemon=True, name="codeindex-drain")
        self.drain_thread.start()
        grace = get_settings().grace_period
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
        from workers import resources

        self.stop.set()
        if self.drain_thread is not None:
            self.drain_thread.join(timeout=30)
        if not self.registered:
            return
        settings = get_settings()
        try:
            resources.registry(settings).set_status(settings.shard_id, "offline")
            log.info("shard %s offline", settings.shard_id)
        except Exception as exc:
            log.warning("could not mark shard %s offline (beat will): %s", settings.shard_id, exc)


def _own_address() -> str:
    """This host's address for the registry; the host name when it does not resolve (a
    failed lookup must not keep the worker from registering)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return socket.gethostname()


_lifecycle = _Lifecycle()


def _in_fleet() -> bool:
    settings = get_settings()
    return bool(settings.state_url) and not settings.eager


@signals.worker_ready.connect
def _on_ready(sender=None, **_) -> None:
    if _in_fleet():
        _lifecycle.register(getattr(sender, "hostname", None) or socket.gethostname())


@signals.worker_shutting_down.connect
def _on_shutting_down(sig=None, how=None, exitcode=None, **_) -> None:
    if _in_fleet() and how == "Warm":
        _lifecycle.start_drain()


@signals.worker_shutdown.connect
def _on_shutdown(**_) -> None:
    if _in_fleet():
        _lifecycle.shutdown()


@signals.worker_process_init.connect
def _on_child(**_) -> None:
    from workers import resources
    from workers.routing import router

    resources.reset()
    router().forget()
    if _in_fleet():
        # Import LanceDB (and pyarrow) now rather than in the first embedding batch: about 3 s
        # here, which bench/fleet.py saw on every worker's first task. Not in the parent:
        # LanceDB's runtime is not fork-safe.
        import lancedb  # noqa: F401
