"""Index artifact tasks (seed 000): pack and install one repository's index on its owner.

``push`` and ``pull`` are bound to the repository (kind ``artifact``: its owner's queue); in
the embedded mode the CLI runs them in-process. The message is a dict carrying ``repo_id``, as
every repository-bound message does (the router reads it).
"""

from __future__ import annotations

from pathlib import Path

from config.celery import shard_queue
from config.kinds import TaskKind
from workers.app import codeindex_task
from workers.artifacts import pull_artifact, push_artifact
from workers.runtime import runtime


@codeindex_task("codeindex.artifact.push", kind=TaskKind.ARTIFACT)
def push(self, job: dict) -> dict:
    """Pack ``job["repo_id"]``'s index (``branch``, ``delta``, ``with_embeddings``) and upload it; its record."""
    if (owner := runtime().owner_elsewhere(job["repo_id"], job.get("hops", 0))) is not None:
        return self.replace(push.s({**job, "hops": job.get("hops", 0) + 1}).set(queue=shard_queue(owner)))
    return push_artifact(runtime(), job["repo_id"], branch=job["branch"], as_delta=bool(job.get("delta")),
                         with_embeddings=bool(job.get("with_embeddings")))


@codeindex_task("codeindex.artifact.pull", kind=TaskKind.ARTIFACT)
def pull(self, job: dict) -> dict:
    """Install the artifact ``job["ref"]`` (or the newest of ``branch``) for ``job["repo_id"]``."""
    if (owner := runtime().owner_elsewhere(job["repo_id"], job.get("hops", 0))) is not None:
        return self.replace(pull.s({**job, "hops": job.get("hops", 0) + 1}).set(queue=shard_queue(owner)))
    return pull_artifact(runtime(), job.get("ref"), repo_id=job["repo_id"], branch=job.get("branch"),
                         root=Path(job["root"]) if job.get("root") else None, force=bool(job.get("force")))


def send(task, job: dict):
    """Place ``job["repo_id"]`` and send ``task`` (push or pull) to its owner; the AsyncResult."""
    owner = runtime().place(job["repo_id"]).shard_id
    return task.apply_async(args=[job], queue=shard_queue(owner))
