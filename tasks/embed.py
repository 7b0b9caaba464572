"""Embedding tasks: one chord header task per batch of files (queue ``embed``)."""

from __future__ import annotations

from config.settings import get_settings
from indexing.messages import BatchJob
from indexing.sync import index_batch
from workers import resources
from workers.app import codeindex_task


@codeindex_task("codeindex.embed.batch")
def batch(self, job: dict) -> list[dict]:
    """Read, chunk, embed and upsert one :class:`BatchJob`; return its file results."""
    work = BatchJob.model_validate(job)
    settings = get_settings()
    results = index_batch(work, resources.vector_store(settings, work.collection),
                          resources.embedding_cache(settings), resources.embedder(settings), settings.max_file_size)
    resources.state_store(settings).advance_run(work.run_id, len(work.files))
    return [r.model_dump(mode="json") for r in results]
