"""Embedding tasks: one chord header task per batch of files (queue ``embed``)."""

from __future__ import annotations

from config.kinds import TaskKind
from indexing.messages import BatchJob, as_message
from indexing.sync import embed_batch
from workers.app import codeindex_task
from workers.runtime import runtime


@codeindex_task("codeindex.embed.batch", kind=TaskKind.EMBED)
def batch(self, job: dict) -> list[dict]:
    """Read, chunk, embed and upsert one :class:`BatchJob`; return its file results
    (:class:`~indexing.messages.FileResult` messages, :func:`~indexing.messages.as_message`)."""
    work = BatchJob.model_validate(job)
    with runtime().running_batch(work.run_id):
        results = embed_batch(work, runtime())
    return [as_message(r) for r in results]
