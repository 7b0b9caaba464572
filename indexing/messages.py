"""The messages tasks exchange, as pydantic models serialised to JSON-safe dicts.

Nothing here holds a secret: Flower shows task arguments. An embedding batch of schema v1
names paths only, read by the batch from a work tree every worker sees (the embedded mode, a
shared-disk fleet); a batch of schema v2 says for each file how its content reaches the worker
(seed 004's content strategies: inline, object storage, git reference), so workers that share
no disk can run it. docs/events.md documents both.

The embedding chord's messages leave out every field at its default (:func:`as_message`): a
default is part of the schema, and changing one is a change of schema.
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
    """What a user asked to sync. ``changes`` holds ``(path, kind)`` pairs for listed sources.

    A repository added by path has its work tree at ``root``; one added by git URL has ``url``
    and ``branch`` instead (``root`` empty), and its owner syncs its own clone of it, reading
    the files at the fetched head of the branch."""

    run_id: str
    repo_id: str = Field(min_length=1, max_length=200)
    root: str
    url: str | None = Field(default=None, description="The git URL of a repository added by URL (no secret).")
    branch: str | None = None
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


class ContentStrategy(StrEnum):
    """How a file's content reaches the worker that embeds it (seed 004)."""

    INLINE = "inline"  # in the message, up to 100 KB a file and 5 MB a batch
    OBJECT_STORAGE = "object_storage"  # uploaded by the owner; the message has the key and a presigned URL
    GIT_REFERENCE = "git_reference"  # the reader fetches the blob from its own clone of the git URL
    PATH = "path"  # schema v1: read from a work tree the reader sees at ``root``


class FileContent(BaseModel):
    """Where one file's content is, and the SHA-256 it must have: content that does not match it
    is refused, never indexed."""

    strategy: ContentStrategy
    checksum: str = Field(pattern=r"^([0-9a-f]{64})?$", description="SHA-256 of the content (hex).")
    size: int = Field(ge=0, description="Bytes.")
    linked: bool = Field(default=False, description="The path leads through a symlink.")
    content: str | None = None  # inline: the bytes, as text or base64
    content_encoding: Literal["utf-8", "base64"] | None = None
    object_key: str | None = None  # object_storage
    url: str | None = None  # object_storage: presigned GET, valid 24 h
    git_url: str | None = None  # git_reference: no credentials, ever
    branch: str | None = None
    commit: str | None = None
    path: str | None = None  # git_reference, path: the file's path in the tree
    problem: str | None = Field(default=None, description="The owner could not read the file any more: "
                                "the reader reports this reason as the file's (no content, no checksum).")
    skipped: bool = False  # the problem is a skip (binary, oversized), not an error


class BatchJob(RunContext):
    """One chord header task: files to read, chunk, embed and upsert. ``schema_version`` 1: the
    files are read from ``root``; 2: ``contents`` says where each file's content is (by path)."""

    schema_version: Literal[1, 2] = 1
    files: list[PlannedFile]
    contents: dict[str, FileContent] = Field(default_factory=dict)


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
    note: str = Field(default="", description="What the planner has to say (a full scan instead of a diff).")
    commit_time: float | None = Field(default=None, description="The committer time of ``commit`` (Unix "
                                      "seconds), for the freshness metric; None when metrics are off.")
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


def as_message(model: BaseModel) -> dict:
    """``model`` as a chord message: a JSON-safe dict without the fields at their defaults, which
    the receiver's ``model_validate`` fills in again.

    A 10,000-path sync holds its chord's messages until its commit (a batch's files, the
    commit's plan, the batches' results: one dict a path each); leaving the defaults out takes
    3.7 of their 11 MB (docs/performance.md, D), and makes Flower's view of them shorter.
    Fields required by the model are always present."""
    return model.model_dump(mode="json", exclude_defaults=True)


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
