"""The runtime of one process: every object built from the settings (state store, shard
registry, owner cache, Redis client, locks, circuit breakers, vector stores, embedding cache,
embedder), made on first use and kept for the life of the settings.

This is the one place where configuration picks the implementations, and the one place that
holds process-wide state. A forked child (Celery's prefork pool, ``multiprocessing``) starts
with none of it (:func:`os.register_at_fork`), so it never shares its parent's sockets.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from config.celery import shard_queue
from config.kinds import TaskKind, TaskPolicy, task_policy
from config.settings import Settings, get_settings
from indexing.embed_cache import EmbeddingCache, SQLiteEmbeddingCache
from indexing.embedders import Embedder, embedder_kind_for_model, make_embedder
from indexing.errors import RepositoryError, StoreError, UsageError
from indexing.messages import SyncRequest
from indexing.scanner import FileFilter
from indexing.state import SQLiteStateStore, StateStore
from indexing.store import VectorStore
from indexing.sync import PlanLimits
from indexing.tree import CommitTree, SourceTree, WorkTree
from workers import locks

if TYPE_CHECKING:
    import pybreaker
    import redis

    from indexing.content import ContentEncoder, ContentReader
    from indexing.git_source import GitCredentials, GitMirror
    from indexing.objects import ObjectStore

    from indexing.postgres import PgDatabase
    from workers.breakers import Dependency
    from workers.placement import OwnerCache, Placement
    from workers.registry import ShardRegistry

log = logging.getLogger("codeindex.runtime")

T = TypeVar("T")

#: A plan delivered to a shard that no longer owns its repository is sent on at most this often.
MAX_HOPS = 3


class Runtime:
    """Everything one process talks to, built lazily from ``settings`` and kept.

    It satisfies :class:`indexing.sync.SyncEnvironment`, so the sync's domain functions take it
    as their environment. Thread-safe: objects are made once under a lock.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._made: dict[tuple, object] = {}
        self._closing: list = []
        self._policies = {kind: task_policy(kind, settings) for kind in TaskKind}
        self._queues = {kind: p.queue.value if p.queue else None for kind, p in self._policies.items()}

    def close(self) -> None:
        """Close what holds connections (the PostgreSQL pools, the Redis clients); the runtime
        is not used after this."""
        with self._lock:
            closing, self._closing, self._made = self._closing, [], {}
        for thing in closing:
            thing.close()

    def _once(self, key: tuple, make: Callable[[], T], *, closes: bool = False) -> T:
        """The object made once for ``key``; ``closes``: :meth:`close` closes it."""
        with self._lock:
            if key not in self._made:
                self._made[key] = made = make()
                if closes:
                    self._closing.append(made)
            return self._made[key]  # type: ignore[return-value]

    # what the settings describe

    @property
    def in_fleet(self) -> bool:
        """True for a fleet worker or publisher: a real broker and PostgreSQL state."""
        return self.settings.in_fleet

    @property
    def home(self) -> Path:
        """The index directory (``CODEINDEX_HOME``). Raises UsageError when it is not set (the CLI
        sets it to ``<repository>/.codeindex``)."""
        if self.settings.home is None:
            raise UsageError("no index home: set CODEINDEX_HOME, or run codeindex inside a repository")
        return Path(self.settings.home)

    @property
    def shard_id(self) -> str:
        """The shard this process runs as (``local`` in the embedded mode)."""
        return self.settings.shard_id

    @property
    def limits(self) -> PlanLimits:
        """The planner's limits from the settings."""
        s = self.settings
        return PlanLimits(s.max_file_size, s.batch_files, s.batch_bytes, s.delete_threshold)

    def task_policy(self, kind: TaskKind) -> TaskPolicy:
        """The policy of tasks of ``kind`` under these settings (``config.kinds``)."""
        return self._policies[kind]

    # state, registry, placement

    @property
    def state(self) -> StateStore:
        """The state store: PostgreSQL at ``CODEINDEX_STATE_URL`` when set, else the SQLite file
        ``state.sqlite`` in the index home."""
        if self.settings.state_url:
            from indexing.pg_state import PostgresStateStore  # lazy: psycopg_pool only in a fleet

            return self._once(("state",), lambda: PostgresStateStore(self.postgres()))
        return self._once(("state",), lambda: SQLiteStateStore(self.home / "state.sqlite"))

    def readonly_state(self) -> StateStore:
        """The state store opened read-only (dry runs, status): nothing is ever written, not even
        a missing SQLite file, which is therefore never cached (a later writer may create it)."""
        if self.settings.state_url:
            from indexing.pg_state import PostgresStateStore  # lazy: psycopg_pool only in a fleet

            return self._once(("readonly-state",), lambda: PostgresStateStore(self.postgres(readonly=True)))
        return SQLiteStateStore(self.home / "state.sqlite", readonly=True)

    def postgres(self, readonly: bool = False) -> PgDatabase:
        """The pool of connections to ``CODEINDEX_STATE_URL``, shared by the state store and the registry."""
        from indexing.postgres import PgDatabase  # lazy: psycopg_pool only in a fleet

        if not self.settings.state_url:
            raise UsageError("no PostgreSQL configured: set CODEINDEX_STATE_URL=postgresql://...")
        what = "state store (read-only)" if readonly else "state store and shard registry"
        return self._once(("postgres", readonly),
                          lambda: PgDatabase(self.settings.state_url, what=what, readonly=readonly), closes=True)

    @property
    def registry(self) -> ShardRegistry:
        """The shard registry in PostgreSQL. Raises :class:`UsageError` in the embedded mode,
        which has one shard and no registry."""
        from workers.registry import ShardRegistry  # lazy: a fleet's (psycopg)

        if not self.settings.state_url:
            raise UsageError("the shard registry lives in PostgreSQL: set CODEINDEX_STATE_URL=postgresql://... "
                             "(and a Redis broker) to run a fleet")
        return self._once(("registry",), lambda: ShardRegistry(self.postgres()))

    @property
    def owners(self) -> OwnerCache:
        """The repositories' stored owners, cached for ``route_cache_seconds`` (reads only)."""
        from workers.placement import OwnerCache  # lazy: a fleet's (tenacity, the ring)

        return self._once(("owners",), lambda: OwnerCache(self.registry, self.settings.route_cache_seconds))

    def place(self, repo_id: str, *, dry_run: bool = False) -> Placement:
        """Place ``repo_id`` explicitly (``repo add``, a sync of a repository new to the fleet):
        keep its assignment to an active shard, else let the ring pick and store the choice.
        ``dry_run``: say where it would go and write nothing. The embedded mode has one shard
        and writes nothing. Raises :class:`~workers.placement.NoActiveShardError`,
        :class:`~indexing.errors.StoreError`."""
        from workers.placement import Placement, place, preview_place  # lazy: a fleet's

        if not self.in_fleet:
            return Placement(repo_id, self.shard_id, self.shard_id, False)
        if dry_run:
            return preview_place(self.registry, repo_id)
        placement = place(self.registry, repo_id)
        self.owners.remember(repo_id, placement.shard_id)
        return placement

    def queue_for(self, kind: TaskKind, repo_id: str | None) -> str:
        """The queue a task of ``kind`` goes to: its kind's queue, or for a repository-bound task
        the owner's ``shard.<id>`` (read, never written: placement happened before the send).
        Raises UsageError for a repository-bound task without a repository,
        :class:`~workers.placement.UnplacedRepositoryError`, StoreError."""
        queue = self._queues[kind]
        if queue is not None:
            return queue
        if repo_id is None:
            raise UsageError(f"a task of kind {kind} must carry a repo_id to be routed")
        return shard_queue(self.owners.owner(repo_id) if self.in_fleet else self.shard_id)

    def owner_elsewhere(self, repo_id: str, hops: int) -> str | None:
        """The shard a repository-bound task that reached this one should go on to, or None to
        run it here. Publishers cache owners: a plan that reaches a shard which stopped owning
        the repository (drained, rebalanced) is forwarded, at most :data:`MAX_HOPS` times."""
        if not self.in_fleet or hops >= MAX_HOPS:
            return None
        owner = self.owners.fresh_owner(repo_id)
        if owner == self.shard_id:
            return None
        log.info("task for %s reached shard %s, which does not own it: forwarded to shard %s",
                 repo_id, self.shard_id, owner)
        return owner

    # Redis, locks, breakers

    @property
    def redis(self) -> redis.Redis | None:
        """The Redis client for locks (``CODEINDEX_REDIS_URL`` or a Redis broker), or None in the
        embedded mode."""
        from workers.redis_client import redis_client  # lazy: a fleet's

        url = self.settings.lock_redis_url
        return None if url is None else self._once(("redis",), lambda: redis_client(url), closes=True)

    def repo_lock(self, repo_id: str) -> AbstractContextManager:
        """The lock that serialises planning and commits of ``repo_id``: a Redis lock (renewed while
        held) in a fleet, a file lock under the index home otherwise.
        Raises LockTimeoutError after ``settings.lock_timeout`` seconds of waiting."""
        client = self.redis
        if client is None:
            return locks.repo_lock(self.home, repo_id, self.settings.lock_timeout)
        return locks.redis_repo_lock(client, repo_id, ttl=self.settings.lock_ttl, timeout=self.settings.lock_timeout,
                                     holder=self.shard_id)

    @contextmanager
    def running_batch(self, run_id: str) -> Iterator[None]:
        """Record, while the block runs, that this shard holds an embedding batch of ``run_id``
        (a Redis set, kept no longer than task results): were the shard to die holding it,
        beat re-issues the run at once (``workers.reissue``). Nothing to record when embedded."""
        client = self.redis if self.in_fleet else None
        key = shard_runs_key(self.shard_id)
        if client is not None:
            client.pipeline().sadd(key, run_id).expire(key, self.settings.result_expires).execute()
        try:
            yield
        finally:
            if client is not None:
                client.srem(key, run_id)

    def breaker(self, dependency: Dependency) -> pybreaker.CircuitBreaker:
        """The circuit breaker of ``dependency``, its state in Redis in a fleet, in memory otherwise.

        When Redis cannot be reached to set it up, a closed in-memory breaker is returned and
        not kept, so the next call tries Redis again (pybreaker likewise assumes a closed
        breaker when its storage fails)."""
        import redis  # lazy: a fleet's

        from workers.breakers import BREAKER_REDIS_TIMEOUT, make_breaker  # lazy: a fleet's (pybreaker)
        from workers.redis_client import redis_client  # lazy: a fleet's

        url = self.settings.lock_redis_url
        key = ("breaker", dependency)
        with self._lock:
            if key in self._made:
                return self._made[key]  # type: ignore[return-value]
        s = self.settings
        client = None if url is None else self._once(
            ("breaker-redis",), lambda: redis_client(url, timeout=BREAKER_REDIS_TIMEOUT), closes=True)
        try:
            made = make_breaker(dependency, client, fail_max=s.breaker_fail_max, reset_timeout=s.breaker_reset_timeout)
        except redis.RedisError as exc:
            log.warning("circuit breaker state unreachable dependency=%s error=%s; using a closed in-memory "
                        "breaker", dependency, exc)
            return make_breaker(dependency, None, fail_max=s.breaker_fail_max, reset_timeout=s.breaker_reset_timeout)
        return self._once(key, lambda: made)

    # the sync's dependencies (indexing.sync.SyncEnvironment)

    def vector_store(self, collection: str) -> VectorStore:
        """The vector store of ``collection``: LanceDB at ``CODEINDEX_STORE_URI`` (default
        ``<home>/lancedb``), one table per collection; in a fleet behind the shared
        ``vector_store`` circuit breaker."""
        from indexing.lance_store import LanceDBStore  # lazy: its module pulls pyarrow (0.3 s)

        uri = self.settings.store_uri or str(self.home / "lancedb")
        remote = "://" in uri and not uri.startswith("file://")
        store: VectorStore = self._once(("lancedb", uri, collection), lambda: LanceDBStore(
            uri, collection, storage_options=self.s3_storage_options() if uri.startswith("s3://") else None,
            write_lock=self._table_lock(uri, collection) if remote else None))
        if self.settings.lock_redis_url is None:
            return store
        from workers.breakers import Dependency, GuardedVectorStore  # lazy: a fleet's (pybreaker)

        return self._once(("guarded-lancedb", uri, collection),
                          lambda: GuardedVectorStore(store, lambda: self.breaker(Dependency.VECTOR_STORE)))

    def s3_storage_options(self) -> dict[str, str]:
        """LanceDB's storage options for S3 from the settings (LanceDB's object-store names);
        the standard AWS chain supplies what is not set. Every request has a timeout (5 s to
        connect, 60 s in all, as :class:`indexing.s3_objects.S3ObjectStore`'s), and Lance's own
        retries stop after 3 or 30 s, so that an S3 outage, or an endpoint that accepts and
        never answers, fails the call within a task's time limit; the breaker and Celery's
        retries handle the rest."""
        client = self.s3_client_options()
        endpoint = client["endpoint_url"]
        options = {"aws_endpoint": endpoint, "aws_region": client["region"],
                   "connect_timeout": "5s", "timeout": "60s", "client_max_retries": "3", "client_retry_timeout": "30",
                   "aws_access_key_id": client["access_key"], "aws_secret_access_key": client["secret_key"],
                   "allow_http": "true" if endpoint and endpoint.startswith("http://") else None}
        return {k: v for k, v in options.items() if v}

    def _table_lock(self, uri: str, collection: str) -> Callable[[], AbstractContextManager] | None:
        """The write lock of a table that several machines write: a Redis lock per table (a
        file lock cannot cross machines); None without Redis (one writer, the embedded mode)."""
        if self.redis is None:
            return None
        key = table_lock_key(uri, collection)
        s = self.settings
        return lambda: locks.redis_lock(self.redis, key, what=f"table {collection} at {uri}", ttl=s.lock_ttl,
                                        timeout=s.lock_timeout, holder=self.shard_id)

    @property
    def embedding_cache(self) -> EmbeddingCache:
        """The embedding cache: in PostgreSQL when the state is (a fleet's workers share it),
        else the SQLite file ``embeddings.sqlite`` in the index home."""
        if self.settings.state_url:
            from indexing.pg_cache import PostgresEmbeddingCache  # lazy: psycopg_pool only in a fleet

            return self._once(("embedding-cache",), lambda: PostgresEmbeddingCache(self.postgres()))
        path = self.home / "embeddings.sqlite"
        return self._once(("embedding-cache", str(path)), lambda: SQLiteEmbeddingCache(path))

    @property
    def embedder(self) -> Embedder:
        """The configured embedder (``CODEINDEX_EMBEDDER``), loaded once; in a fleet behind the
        shared ``embedder`` circuit breaker."""
        s = self.settings
        model = self._model(s.embedder, s.hashing_dimension)
        if s.lock_redis_url is None:
            return model
        from workers.breakers import Dependency, GuardedEmbedder  # lazy: a fleet's (pybreaker)

        return self._once(("guarded-embedder", model.model_id),
                          lambda: GuardedEmbedder(model, lambda: self.breaker(Dependency.EMBEDDER)))

    def embedder_for_model(self, model_id: str) -> Embedder:
        """The embedder that produced vectors of ``model_id`` (a search must use the collection's).
        Raises CodeindexError for a model this installation cannot load."""
        kind, dimension = embedder_kind_for_model(model_id)
        return self._model(kind, dimension)

    def _model(self, kind: str, dimension: int) -> Embedder:
        """The process's embedder of ``kind``: kept across runtimes (settings replaced, as each
        command does in ``codeindex serve``), so the model's weights load once per process."""
        batch = self.settings.model_batch_size
        key = (kind, dimension, batch)
        with _models_lock:
            if key not in _models:
                _models[key] = make_embedder(kind, hashing_dimension=dimension, batch_size=batch)
            return _models[key]

    def file_filter(self, tree: SourceTree | Path) -> FileFilter:
        """The include/exclude/.gitignore filter for ``tree`` (a work tree's root, or a tree of
        ``indexing.tree``); an index home inside a work tree is excluded."""
        s = self.settings
        if isinstance(tree, WorkTree):
            tree = tree.root
        extra = []
        if isinstance(tree, Path):
            try:
                extra.append(self.home.resolve().relative_to(Path(tree).resolve()).parts[0])
            except (ValueError, IndexError, UsageError):
                pass
        return FileFilter(tree, s.include, s.exclude, s.use_gitignore, extra_excluded_dirs=extra)

    # repositories by URL, object storage, content strategies

    @property
    def data_dir(self) -> Path:
        """Where this worker keeps its repositories' clones and its caches (``CODEINDEX_DATA_DIR``;
        default ``/data/repos`` in a fleet, seed 002's volume per pod, ``<home>/repos`` embedded)."""
        if self.settings.data_dir is not None:
            return Path(self.settings.data_dir)
        return Path("/data/repos") if self.in_fleet else self.home / "repos"

    @property
    def git_credentials(self) -> GitCredentials | None:
        """The git credentials of the settings, read once: an HTTPS token from
        ``CODEINDEX_GIT_TOKEN_FILE`` or ``CODEINDEX_GIT_TOKEN`` (one of them), an SSH key at
        ``CODEINDEX_GIT_SSH_KEY``; None without. Raises UsageError for both token settings or
        an empty token, RepositoryError for a file that cannot be read."""
        from indexing.git_source import GitCredentials  # lazy: only for repositories by URL

        s = self.settings
        if not (s.git_token_file or s.git_token or s.git_ssh_key):
            return None
        if s.git_token_file and s.git_token:
            raise UsageError("set CODEINDEX_GIT_TOKEN_FILE or CODEINDEX_GIT_TOKEN, not both")

        def read() -> GitCredentials:
            credentials = GitCredentials.from_files(s.git_token_file, s.git_ssh_key)
            if s.git_token is None:
                return credentials
            token = s.git_token.get_secret_value().strip()
            if not token:
                raise UsageError("CODEINDEX_GIT_TOKEN is empty")
            return GitCredentials(token=token, ssh_key_path=credentials.ssh_key_path)

        return self._once(("git-credentials",), read)

    def mirror(self, repo_id: str, url: str, branch: str) -> GitMirror:
        """The owner's clone of ``repo_id`` (``<data_dir>/<name>.git``)."""
        from indexing.git_source import GitMirror, repo_dir_name  # lazy: only for repositories by URL

        return GitMirror(self.data_dir / f"{repo_dir_name(repo_id)}.git", url, branch=branch,
                         credentials=self.git_credentials, timeout_s=self.settings.clone_timeout)

    def open_tree(self, request: SyncRequest) -> AbstractContextManager[SourceTree]:
        """The files ``request`` syncs (``indexing.sync.SyncEnvironment.open_tree``): the work tree
        at its root, or for a repository added by URL the owner's clone, fetched (cloned the first
        time) and read at the branch's head. Raises RepositoryError, StoreError (from git)."""
        if not request.url:
            return nullcontext(WorkTree(Path(request.root)))
        from indexing.git_source import GitTree  # lazy: only for repositories by URL

        mirror = self.mirror(request.repo_id, request.url, request.branch or "main")
        restored = self._restore_missing_clone(mirror, request.repo_id)
        try:
            head = mirror.fetch()
        except (StoreError, RepositoryError) as exc:  # the code host is unreachable or gone: the restored clone is what there is
            head = mirror.head() if restored else None
            if head is None:
                raise
            log.warning("repository %s: the fetch from %s failed after the restore (%s); syncing the restored "
                        "head %s", request.repo_id, mirror.url, exc, head)
        return CommitTree(GitTree(mirror.path, head))

    def _restore_missing_clone(self, mirror: GitMirror, repo_id: str) -> bool:
        """A worker without a clone of ``repo_id`` (a new owner after a failover or a drain)
        restores it from the newest bundle that passes its checks before it fetches from the
        code host (seed 002: "New pods will restore from cold storage"); True when it did. No
        object store, no bundle or none passing: False, and the fetch clones. Called under the
        repository lock (the sync's plan)."""
        from indexing.bundles import record_restore, restore_bundle  # lazy: only a clone's first sync

        store = self.object_store
        if store is None or mirror.head() is not None or mirror.path.exists() and any(mirror.path.iterdir()):
            return False
        try:
            result = restore_bundle(store, repo_id, mirror.path, self.data_dir / ".cache" / "bundles",
                                    branch=mirror.branch)
            if result.record is None and not result.refused:
                return False  # never backed up: nothing to say
            record_restore(store, result, shard_id=self.shard_id, reason="no clone on this worker")
        except StoreError as exc:
            log.warning("repository %s: no restore from object storage (%s); cloning", repo_id, exc)
            return False
        if result.record is None:
            log.warning("repository %s: no bundle passed its checks (%s); cloning from %s", repo_id,
                        "; ".join(f"{k}: {r}" for k, r in result.refused), mirror.url)
            return False
        log.warning("repository %s restored from bundle %s (head %s, %.1f s%s), then fetching from the code host",
                    repo_id, result.record.key, result.record.head[:12], result.seconds,
                    f", after refusing {len(result.refused)}" if result.refused else "")
        return True

    @property
    def object_store(self) -> ObjectStore | None:
        """The object store: ``CODEINDEX_OBJECT_STORE_URI`` (``s3://bucket/prefix`` or a directory),
        in the embedded mode by default ``<home>/objects``; None in a fleet without one (no disk
        is shared, so a local default would serve no other worker)."""
        from indexing.objects import LocalObjectStore  # lazy: only where content travels

        s = self.settings
        uri = s.object_store_uri
        if uri is None:
            if self.in_fleet:
                return None
            return self._once(("objects", "local"), lambda: LocalObjectStore(self.home / "objects"))
        from indexing.s3_objects import object_store_from_uri  # lazy: boto3 (0.15 s), for a configured store only

        return self._once(("objects", uri), lambda: object_store_from_uri(uri, **self.s3_client_options()))

    def s3_client_options(self) -> dict[str, str | None]:
        """The S3 client's settings (``indexing.s3_objects.S3ObjectStore``'s keywords)."""
        s = self.settings
        return {"endpoint_url": s.s3_endpoint_url, "region": s.s3_region, "access_key": s.s3_access_key_id,
                "secret_key": s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else None}

    def _object_guard(self) -> Callable:
        """Runs an object-storage call through the ``object_storage`` breaker (a fleet's)."""
        if self.settings.lock_redis_url is None:
            return lambda call: call()
        from workers.breakers import Dependency, call_through  # lazy: a fleet's (pybreaker)

        return lambda call: call_through(self.breaker(Dependency.OBJECT_STORAGE), call)

    def content_encoder(self, request: SyncRequest) -> ContentEncoder | None:
        """The owner's content encoder for ``request`` (``indexing.content``), or None for schema v1
        batches: a repository added by path in the embedded mode (the reader is this process), or
        ``CODEINDEX_CONTENT_STRATEGY=path`` (a fleet sharing the repositories' disk)."""
        from indexing.content import ContentEncoder, ContentPolicy  # lazy: boto3, git

        s = self.settings
        if not request.url and (s.content_strategy == "path" or not self.in_fleet):
            return None
        policy = ContentPolicy(s.content_strategy, s.inline_max_file_bytes, s.inline_max_batch_bytes, s.presign_expiry)
        return ContentEncoder(policy, self.object_store, repo_id=request.repo_id, git_url=request.url,
                              branch=request.branch, guard=self._object_guard())

    @property
    def content_reader(self) -> ContentReader:
        """The reader's side of the content strategies: this worker's object store client, its
        download cache (``<data_dir>/.cache/downloads``) and clone cache (``<data_dir>/.cache/clones``)."""
        from indexing.content import CloneCache, ContentReader, DownloadCache  # lazy: boto3, git

        s = self.settings

        def make() -> ContentReader:
            cache = self.data_dir / ".cache"
            return ContentReader(objects=self.object_store, downloads=DownloadCache(cache / "downloads",
                                                                                    s.download_cache_bytes),
                                 clones=CloneCache(cache / "clones", s.clone_cache_bytes,
                                                   credentials=self.git_credentials, timeout_s=s.clone_timeout),
                                 guard=self._object_guard(), timeout_s=s.download_timeout)

        return self._once(("content-reader",), make, closes=True)


_lock = threading.Lock()
_current: Runtime | None = None
#: Runtimes a forked child inherited. They are kept, never used: letting them be collected
#: would run their connection pools' finalisers on the parent's sockets and threads.
_inherited: list[Runtime] = []
#: The embedders of this process (see :meth:`Runtime._model`), by kind, dimension and batch size.
_models: dict[tuple, Embedder] = {}
_models_lock = threading.Lock()


def table_lock_key(uri: str, collection: str) -> str:
    """The Redis key of the write lock of table ``collection`` of the store at ``uri`` (a
    store that several machines write, LanceDB on S3): every upsert and delete holds it."""
    return f"codeindex:lock:table:{hashlib.sha256(uri.encode()).hexdigest()[:16]}:{collection}"


def shard_runs_key(shard_id: str) -> str:
    """The Redis set of the runs whose embedding batches shard ``shard_id`` took."""
    return f"codeindex:shard:{shard_id}:runs"


def runtime() -> Runtime:
    """The runtime of this process for the current settings (``config.get_settings()``); a new
    one when the settings were replaced (``config.configure``)."""
    global _current
    settings = get_settings()
    current = _current
    if current is not None and current.settings is settings:
        return current  # the common case, without the lock (every routed message asks)
    with _lock:
        if _current is None or _current.settings is not settings:
            _current = Runtime(settings)
        return _current


def reset() -> None:
    """Close and forget the runtime (tests, and the CLI after changing settings); the next
    :func:`runtime` builds a new one."""
    global _current
    with _lock:
        old, _current = _current, None
    if old is not None:
        old.close()


def _after_fork_in_child() -> None:
    # The parent's lock may have been held by another thread at fork time, and its objects'
    # sockets belong to the parent: start afresh, keeping the parent's objects out of reach.
    global _lock, _current, _models, _models_lock
    _lock = threading.Lock()
    _models_lock = threading.Lock()
    if _current is not None:
        _inherited.append(_current)
    _current = None
    _models = {}  # a model's runtime (torch's threads) is not safe to use across a fork


os.register_at_fork(after_in_child=_after_fork_in_child)
