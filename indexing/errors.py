"""The error hierarchy of codeindex; each message says what the user can do about it.

The CLI maps each class to an exit code (``exit_code``): 2 for bad input or usage,
3 for a refusal that protects the index, 4 for a dependency that failed.
"""

from __future__ import annotations


class CodeindexError(Exception):
    """Root of every error codeindex raises on purpose."""

    exit_code = 4


class UsageError(CodeindexError):
    """The command or its input is malformed; nothing was changed."""

    exit_code = 2


class ChangeListError(UsageError):
    """A change list (paths, name-status lines or JSON) could not be parsed."""


class RepositoryError(UsageError):
    """The repository root is missing, not a directory, or not a git repository when one is needed."""


class UnknownShardError(UsageError):
    """No shard with that id is registered; the registry's shard list names the known ones."""


class RefusedError(CodeindexError):
    """codeindex refused to act because acting could lose data; a flag can override."""

    exit_code = 3


class MassDeleteError(RefusedError):
    """A sync would delete more than the allowed share of a repository's indexed files.

    Built with :meth:`for_counts`; the message alone is the exception's argument so that it
    survives Celery's JSON serialisation of exceptions.
    """

    @classmethod
    def for_counts(cls, deleting: int, indexed: int, threshold: float) -> MassDeleteError:
        """The error for ``deleting`` of ``indexed`` files against ``threshold`` (a share, 0..1)."""
        return cls(
            f"this sync would delete {deleting} of {indexed} indexed files "
            f"({deleting / max(indexed, 1):.0%}, above the {threshold:.0%} guard); "
            "check the change list, then re-run with --force to proceed"
        )


class ModelMismatchError(RefusedError):
    """The collection was built with another embedding model or dimension."""


class StaleFenceError(RefusedError):
    """A write carried an older fencing token than the state already holds."""


class ArtifactError(UsageError):
    """An index artifact cannot be used: its checksum does not match, a member is unsafe (an
    absolute path, ``..``, a link, a device), its manifest or metadata is wrong, or it is too
    large. Nothing was installed."""


class IncompatibleArtifactError(RefusedError):
    """An index artifact was built with another embedding model, dimension or distance, a newer
    schema, or another chunker than this index uses; installing it would mix incompatible vectors."""


class LockTimeoutError(CodeindexError):
    """The repository lock could not be taken in time (another sync holds it)."""


class StoreError(CodeindexError):
    """The vector store, the state store or the embedding cache failed."""


class DamagedStoreError(CodeindexError):
    """The vector store cannot be read, or holds other objects than the state records: a sync
    would report files unchanged that search cannot find. ``codeindex verify --repair`` mends
    it. Not a StoreError: retrying does not help."""


class DependencyUnavailableError(StoreError):
    """A dependency's circuit breaker is open: calls to it fail fast until it is tried again.

    A :class:`StoreError`, so that tasks which retry on store failures retry later.
    ``retry_after`` is the number of seconds until the breaker lets a trial call through
    (None when unknown): a retry sooner than that fails fast again and only spends the task's
    retry budget, so ``workers.app.CodeindexTask`` waits at least that long.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ObjectNotFoundError(StoreError):
    """The object store holds no object under that key (it was never written, or was deleted).

    A :class:`StoreError`; callers that expect a miss (a cache lookup) catch this class alone.
    """


class BrokerUnavailableError(CodeindexError):
    """Redis (the broker and lock server) could not be reached; nothing was changed."""

    exit_code = 4


class SyncInterrupted(CodeindexError):
    """The sync was interrupted (SIGINT): nothing of the run in progress was committed, and the
    next sync completes its work. Exit code 130, as a shell reports a process ended by SIGINT."""

    exit_code = 130


class SyncFailedError(CodeindexError):
    """A step of the sync failed after its retries; the state is as it was before the sync."""


class FileIssue(Exception):
    """A problem with one file: it is reported and counted, and the sync goes on.

    ``status`` is ``"error"`` (counted in Errors, exit code 1) or ``"skipped"``
    (binary, oversized, ignored: reported, not a failure). ``transient``: the file may be
    readable next time (permission denied, an I/O error), so an indexed file keeps its objects;
    any other problem means its content is no longer indexable, and an indexed file is deleted
    from the index.
    """

    def __init__(self, reason: str, status: str = "error", *, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.status, self.transient = reason, status, transient
