"""The worker process: the Celery app with the fleet's shard lifecycle and task metrics
installed. ``codeindex worker`` runs it; ``celery -A workers.worker worker`` is the same app.
"""

from __future__ import annotations

from celery import signals

from workers import lifecycle, metrics
from workers.app import app

lifecycle.install()
metrics.count_tasks()


@signals.worker_process_init.connect(weak=False)
def _preload_store(**_) -> None:
    # Import LanceDB (and pyarrow) when a pool process starts rather than in its first
    # embedding batch: about 3 s here, which bench/fleet.py saw on every worker's first task.
    # Not in the parent: LanceDB's runtime is not fork-safe.
    from indexing.lance_store import import_lancedb  # lazy: see above

    import_lancedb()


def run(queues: list[str], *, node: str, concurrency: int, pool: str, loglevel: str) -> None:
    """Run the worker in this process until it shuts down: consume ``queues`` as Celery node
    ``node`` with ``concurrency`` processes or threads of ``pool`` (prefork, solo, threads)."""
    app.worker_main(["worker", "-Q", ",".join(queues), "-n", node, "-c", str(concurrency), "-P", pool,
                     "--loglevel", loglevel, "-E"])
