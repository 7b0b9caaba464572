"""Runs in flight on a shard declared dead, re-issued at once to their repositories' new owners
instead of waiting for the broker to redeliver what the dead worker held: kombu's Redis
transport gives an unacknowledged message back only after the visibility timeout (2 hours by
default), and the caller of the sync would wait that long.

A run is re-issued when the dead shard planned it (the runs table knows each run's shard) or
held one of its embedding batches (``Runtime.running_batch``). The re-issued run is a new run
of the same request, sent with the old plan's task id, so the caller waiting on that id gets its
summary. What the dead worker held comes back hours later and is a no-op: its plan sees its
run re-issued and stops, its batches see a newer commit of the repository and write nothing,
its commit is refused by the fencing token.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

from celery import Celery

from config.celery import shard_queue
from indexing.messages import SyncRequest
from indexing.state import RunStatus, utcnow
from workers.locks import break_locks_of
from workers.runtime import Runtime, shard_runs_key

log = logging.getLogger("codeindex.reissue")

#: The task a run is re-issued as.
SYNC_TASK = "codeindex.sync.plan"


@dataclass(frozen=True, slots=True)
class Reissue:
    """A run re-issued: the old run, the new one, the plan task id they share, the new owner."""

    old_run_id: str
    new_run_id: str
    task_id: str
    shard_id: str


def reissue_runs(rt: Runtime, app: Celery, shard_id: str) -> list[Reissue]:
    """Break the repository locks of ``shard_id`` (declared offline) and re-issue its runs in
    flight to their repositories' owners. Returns the runs re-issued.

    Raises StoreError (state, registry), ``redis.RedisError``, and broker connection errors.
    """
    client = rt.redis
    if client is not None:
        for repo_id in break_locks_of(client, shard_id):
            log.warning("lock of repository %s broken: its holder, shard %s, is offline", repo_id, shard_id)
    runs = {run.id: run for run in rt.state.running_runs(shard_id=shard_id)}
    if client is not None:
        for run_id in (m.decode() for m in client.smembers(shard_runs_key(shard_id))):
            run = rt.state.get_run(run_id)
            if run is not None and run.status is RunStatus.RUNNING:
                runs.setdefault(run.id, run)
    done = []
    for run in runs.values():
        if not run.request or not run.task_id:  # a run recorded before runs kept their request
            continue
        request = SyncRequest.model_validate(json.loads(run.request))
        again = request.model_copy(update={"run_id": str(uuid.uuid4()), "hops": 0, "trigger": "reissue"})
        owner = rt.place(request.repo_id).shard_id
        run.status, run.finished_at = RunStatus.REISSUED, utcnow()
        run.message = f"re-issued as run {again.run_id} after shard {shard_id} went offline"
        rt.state.finish_run(run)
        app.tasks[SYNC_TASK].apply_async(args=[again.model_dump(mode="json")], task_id=run.task_id,
                                         queue=shard_queue(owner))
        log.warning("run %s of %s re-issued as %s on shard %s: shard %s is offline", run.id, request.repo_id,
                    again.run_id, owner, shard_id)
        done.append(Reissue(run.id, again.run_id, run.task_id, owner))
    if client is not None:
        client.delete(shard_runs_key(shard_id))
    return done
