"""The Celery router (``task_routes``): a task goes to the queue of its kind, and a
repository-bound task to its owner's ``shard.<id>``.

The router reads the task's kind (``config.kinds``), never its name, and reads the stored
owner through the runtime's cache: routing never places a repository, so sending a message
never writes to the registry (placement is explicit, ``workers.placement``). The embedded mode
has one shard (``local``) and no registry; its tasks run in-process anyway.
"""

from __future__ import annotations

from indexing.messages import repo_id_of
from workers.runtime import runtime


def route_task(name, args, kwargs, options, task=None, **kw):
    """Celery router (Celery's "Routing Tasks: Routers"): ``{"queue": ...}`` for a codeindex
    task, None for a task without a kind (Celery's default queue then). An explicit
    ``queue=`` option wins over this. Raises
    :class:`~workers.placement.UnplacedRepositoryError` for a repository no shard owns, and
    :class:`~indexing.errors.StoreError` when the registry cannot be read within its timeout.
    """
    kind = getattr(task, "kind", None)
    if kind is None or (options or {}).get("queue"):
        return None
    return {"queue": runtime().queue_for(kind, repo_id_of(args, kwargs))}
