"""The messages tasks exchange, as pydantic models serialised to JSON-safe dicts.

Nothing here holds file content or secrets: Flower shows task arguments, so paths, hashes
and counts travel, and content is read where the work runs (DESIGN.md, "Reliability rules").
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from indexing.state import RunStatus


class Action(StrEnum):
    """The decision the planner takes for one path (the sync spec's output tags)."""

    ADD = "ADD"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    UNCHANGED = "UNCHANGED"
    SKIP = "SKIP"
    ERROR = "ERROR"


class SyncRequest(BaseModel):
    """What a user asked to sync. ``changes`` holds ``(path, kind)`` pairs for listed sources."""

    run_id: str
    repo_id: str = Field(min_length=1, max_length=200)
    root: str
    collection: str
    source: Literal["paths", "all", "detect"]
    changes: list[tuple[str, str]] = Field(default_factory=list)
    delete_missing: bool = False
    dry_run: bool = False
    force: bool = False
    trigger: str = "cli"
    hops: int = Field(default=0, ge=0, description="Times a plan was forwarded to a new owner.")
    reindex: bool = Field(default=False, description="Embed and write the named files again even when "
                          "unchanged, and ask the store which chunks exist (`verify --repair`).")

    def forwarded(self) -> SyncRequest:
        """This request, counted as forwarded once more to another shard."""
        return self.model_copy(update={"hops": self.hops + 1})


class PlannedFile(BaseModel):
    """One path and what the plan decided; ``old_chunks`` is the chunk count in the state."""

    path: str
    action: Action
    size: int = 0
    sha256: str = ""
    old_chunks: int = 0
    reason: str = ""


class RunContext(BaseModel):
    """What every task of one sync run carries: the run, the repository, where its writes go,
    the fencing token they carry and the commit they index."""

    run_id: str
    repo_id: str
    root: str
    collection: str
    fence: int
    commit: str


class BatchJob(RunContext):
    """One chord header task: files to read, chunk, embed and upsert."""

    files: list[PlannedFile]


class FileResult(BaseModel):
    """The outcome of indexing one file in a batch."""

    path: str
    ok: bool
    sha256: str = ""
    size: int = 0
    chunk_count: int = 0
    encoding: str = ""
    language: str = ""
    reason: str = ""
    skipped: bool = False
    linked: bool = False
    embedded: int = 0
    reused: int = 0


class CommitJob(RunContext):
    """The chord body's context: the plan minus what the header tasks report.

    ``verify_store``: an earlier sync of the repository did not commit, so the store may hold
    chunks the state does not count; the commit then asks the store which chunks exist.
    """

    advance_commit: bool
    verify_store: bool = False
    trigger: str
    started_at: str
    files_total: int = Field(default=0, ge=0, description="Files sent to the embedding batches.")
    filter_fingerprint: str = Field(default="", description="The filter settings the plan was made under.")
    files: list[PlannedFile]


class SyncSummary(BaseModel):
    """What a sync did: counts, bytes, time in seconds, and each path's final action."""

    run_id: str
    repo_id: str
    collection: str
    status: RunStatus
    dry_run: bool = False
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: int = 0
    errors: int = 0
    bytes_added: int = 0
    bytes_updated: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    seconds: float = 0.0
    commit: str = ""
    message: str = ""
    files: list[PlannedFile] = Field(default_factory=list)


def _field_of(name: str, args, kwargs) -> str | None:
    for value in [*(args or ()), *((kwargs or {}).values())]:
        if isinstance(value, dict) and isinstance(value.get(name), str):
            return value[name]
    return None


def repo_id_of(args: list | tuple | None, kwargs: dict | None) -> str | None:
    """The ``repo_id`` a task's JSON arguments carry (a SyncRequest, CommitJob or BatchJob), or None."""
    return _field_of("repo_id", args, kwargs)


def run_id_of(args: list | tuple | None, kwargs: dict | None) -> str | None:
    """The ``run_id`` a task's JSON arguments carry, or None."""
    return _field_of("run_id", args, kwargs)
