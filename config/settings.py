"""Settings of codeindex, read once from the environment with the ``CODEINDEX_`` prefix.

This is the only module that reads environment variables (pydantic-settings does the
reading); everything else asks :func:`get_settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EmbedderKind = Literal["minilm", "hashing"]
SearchModeName = Literal["vector", "lexical", "hybrid"]
ContentStrategy = Literal["auto", "inline", "object_storage", "git_reference", "path"]
ArtifactCompression = Literal["zstd", "tar.gz"]


def _split_globs(value: object) -> object:
    """Accept a comma-separated string as well as a list for glob settings."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every tunable of codeindex.

    Each field is read from ``CODEINDEX_<FIELD>`` (for example ``CODEINDEX_EMBEDDER=hashing``).
    Sizes are in bytes, times in seconds.
    """

    model_config = SettingsConfigDict(env_prefix="CODEINDEX_", extra="ignore", populate_by_name=True)

    home: Path | None = Field(
        default=None,
        description="Directory of the embedded index (state, vectors, cache). "
        "Default: .codeindex/ at the repository root.",
    )
    store_uri: str | None = Field(
        default=None,
        description="Where the LanceDB vector store lives: a directory or a URI LanceDB accepts. "
        "Default: <home>/lancedb.",
    )
    collection: str = Field(default="codeindex", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,127}$")
    embedder: EmbedderKind = Field(
        default="minilm",
        description="minilm: all-MiniLM-L6-v2 (384-d, cosine); hashing: feature hashing, no model.",
    )
    hashing_dimension: int = Field(default=384, ge=16, le=8192)
    max_file_size: int = Field(default=1_048_576, ge=1, description="Larger files are skipped.")
    include: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Glob patterns (gitignore syntax); empty: every file."
    )
    exclude: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Glob patterns (gitignore syntax) never indexed."
    )
    use_gitignore: bool = True
    allowed_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated directories the JSON change list may name repositories in, besides "
        "the parent of the repository the command runs in.",
    )
    debug: bool = Field(default=False, description="Show the traceback of an error (also `--verbose` on sync).")
    batch_files: int = Field(default=64, ge=1, description="Files per embedding task (chord header).")
    batch_bytes: int = Field(default=1_048_576, ge=1024, description="Bytes per embedding task.")
    model_batch_size: int = Field(default=32, ge=1, description="Texts per model forward pass.")
    search_mode: SearchModeName = Field(
        default="vector",
        description="codeindex search's default mode: vector (embeddings), lexical (BM25 over code-aware "
        "terms) or hybrid (both, reciprocal rank fusion, exact identifier matches first). vector, because "
        "hybrid did not beat it on natural-language queries (bench/search.py, docs/search.md).",
    )
    search_lexical_weight: float = Field(
        default=1.0, ge=0.0, le=10.0,
        description="The lexical list's weight in hybrid search's rank fusion (1.0: equal to the vector list's).",
    )
    search_name_weight: float = Field(
        default=0.3, ge=0.0, le=10.0,
        description="How much a chunk's name vector counts in vector and hybrid search: the nearest "
        "chunks are re-ranked by cosine(query, chunk) + this x cosine(query, the names it defines). "
        "0 turns it off. 0.3 was chosen on half of click's benchmark queries (bench/search.py, docs/search.md).",
    )
    delete_threshold: float = Field(
        default=0.2, ge=0.0, le=1.0,
        description="A sync deleting more than this share of a repository's files needs --force.",
    )
    broker_url: str = Field(
        default="memory://localhost/",
        description="Celery broker. memory:// runs every task in-process (the embedded mode); "
        "redis://host:6379/0 makes a fleet.",
    )
    result_backend: str = Field(default="cache+memory://", description="Celery result backend (redis:// in a fleet).")
    state_url: str | None = Field(
        default=None,
        description="postgresql://... keeps state, shard registry and assignments in PostgreSQL; "
        "default: SQLite state.sqlite in the index home.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for repository locks and circuit-breaker state; default: the broker when it "
        "is Redis, else local file locks and in-process breakers.",
    )
    task_time_limit: int = Field(default=3600, ge=10, description="Hard time limit of a task (seconds).")
    task_soft_time_limit: int = Field(default=3300, ge=5, description="Soft time limit (SoftTimeLimitExceeded).")
    visibility_timeout: int = Field(
        default=7200, ge=10,
        description="Redis broker: an unacknowledged message is redelivered after this many seconds. "
        "Must exceed the hard time limit and every retry delay.",
    )
    result_expires: int = Field(default=86_400, ge=60, description="Seconds task results (and chord state) are kept.")
    lock_timeout: float = Field(default=600.0, gt=0, description="Seconds to wait for a repository lock.")
    lock_ttl: float = Field(default=60.0, ge=1, description="Redis lock lifetime; renewed every third of it while held.")
    retry_backoff_max: int = Field(default=300, ge=1, description="Longest retry delay (seconds).")
    max_retries: int = Field(default=5, ge=0, description="Retries of a failing task before its failure record.")
    breaker_fail_max: int = Field(default=5, ge=1, description="Consecutive failures that open a circuit breaker.")
    breaker_reset_timeout: float = Field(default=30.0, gt=0, description="Seconds a breaker stays open.")

    # The fleet: this worker's shard, and beat's maintenance (seed 002: heartbeat 10 s, offline
    # after 30 s, StatefulSet terminationGracePeriodSeconds 300).
    shard_id: str = Field(
        default="local", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        validation_alias=AliasChoices("CODEINDEX_SHARD_ID", "SHARD_ID", "POD_NAME", "shard_id"),
        description="The shard this worker owns (also SHARD_ID or POD_NAME, as a StatefulSet sets it).",
    )
    shard_address: str = Field(
        default="", validation_alias=AliasChoices("CODEINDEX_SHARD_ADDRESS", "POD_IP", "shard_address"),
        description="The worker's address, shown by `codeindex shards` (also POD_IP).",
    )
    shard_capacity: int = Field(default=100, ge=1, description="Repositories this shard may own.")
    heartbeat_interval: float = Field(default=10.0, gt=0, description="Seconds between a worker's heartbeats.")
    offline_after: float = Field(default=30.0, gt=0, description="A shard silent this long is marked offline.")
    heartbeat_check_interval: float = Field(default=10.0, gt=0, description="Beat: how often shards are checked.")
    grace_period: float = Field(default=300.0, gt=0, description="SIGTERM: seconds to drain before a hard exit.")
    rebalance_interval: float = Field(default=60.0, gt=0, description="Beat: seconds between rebalancing passes.")
    rebalance_max_moves: int = Field(default=10, ge=1, description="Repositories one rebalancing pass may move.")
    run_retention_days: float = Field(default=30.0, gt=0, description="Finished sync runs older than this are deleted.")
    backup_keep: int = Field(default=5, ge=1, description="Bundle retention: the newest N bundles of a repository "
                             "are kept (and every bundle younger than backup_keep_days).")
    backup_keep_days: float = Field(default=7.0, ge=0, description="Bundle retention: bundles younger than this "
                                    "many days are kept.")
    backup_interval: float = Field(default=900.0, gt=0, description="Seconds between beat's passes that back up "
                                   "repositories whose head moved since their last bundle.")
    backup_quiet_seconds: float = Field(default=600.0, ge=0, description="Seed 002's 'inactive repositories': a "
                                        "repository is backed up by beat once its index has not changed for this long.")
    backup_max_per_pass: int = Field(default=20, ge=1, description="At most this many backups sent, and this many "
                                     "repositories' bundles pruned, per beat pass.")
    backup_incremental: bool = Field(default=False, description="Beat's and a drain's backups are incremental "
                                     "(--all ^<last bundled head>) when a full bundle exists.")
    drain_backup_share: float = Field(default=0.6, gt=0, lt=1, description="SIGTERM: the share of grace_period "
                                      "spent backing up changed repositories before the hand-over.")
    route_cache_seconds: float = Field(default=5.0, ge=0, description="How long a publisher caches a repository's owner.")

    # A fleet that shares no disk: S3 (any S3-compatible endpoint), the owners' clones, and how
    # file content reaches the embedding workers (seed 004's content strategies).
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, moto); "
                                        "default: AWS's, from the region.")
    s3_region: str | None = Field(default=None, description="S3 region; default: the AWS chain's.")
    s3_access_key_id: str | None = Field(default=None, description="S3 access key; default: the AWS chain's.")
    s3_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret key (never logged).")
    object_store_uri: str | None = Field(
        default=None, description="Object storage: s3://bucket/prefix, or a directory. Default: <home>/objects.")
    data_dir: Path | None = Field(
        default=None, description="Where an owner keeps its repositories' clones. Default: /data/repos in a fleet "
        "(seed 002's volume per pod), <home>/repos in the embedded mode.")
    content_strategy: ContentStrategy = Field(
        default="auto", description="How file content reaches the embedding workers: inline (in the message), "
        "object_storage (S3, presigned), git_reference (the reader's own clone), auto (inline when small, else "
        "object storage when configured, else git reference); the one named is tried first, then auto's order. "
        "path: schema v1 batches naming work-tree paths (a fleet whose workers share the repositories' disk).")
    inline_max_file_bytes: int = Field(default=100 * 1024, ge=1, description="Largest file sent inline (bytes).")
    inline_max_batch_bytes: int = Field(default=5 * 1024 * 1024, ge=1, description="Inline content per batch message.")
    presign_expiry: int = Field(default=86_400, ge=60, description="Seconds a presigned object URL is valid (24 h).")
    download_timeout: float = Field(default=60.0, gt=0, description="Seconds for one object download.")
    download_cache_bytes: int = Field(default=10 * 1024**3, ge=0, description="Downloaded objects kept (LRU).")
    clone_cache_bytes: int = Field(default=50 * 1024**3, ge=0, description="Readers' clones kept (LRU).")
    clone_timeout: float = Field(default=300.0, gt=0, description="Seconds for one clone or fetch.")
    git_token_file: Path | None = Field(default=None, description="File holding an HTTPS token for git (a secret).")
    git_token: SecretStr | None = Field(default=None, description="An HTTPS token for git (never logged); "
                                        "CODEINDEX_GIT_TOKEN_FILE is safer: an environment is easier to leak.")
    git_ssh_key: Path | None = Field(default=None, description="SSH private key for git URLs.")
    # The HTTP trigger (`codeindex api`, api/): seed 002's port 8080, on loopback unless told otherwise.
    serve_idle_timeout: float = Field(
        default=900.0, ge=0, description="`codeindex serve` exits after this many seconds without a "
        "command (0: never).")
    daemon: bool = Field(
        default=False, description="Every `codeindex sync` behaves as `sync --daemon`: it starts "
        "`codeindex serve` for its index home when none runs, and syncs through it (read by the "
        "thin client, config/local.py).")
    api_host: str = Field(default="127.0.0.1", description="Address `codeindex api` listens on.")
    api_port: int = Field(default=8080, ge=1, le=65535, description="Port `codeindex api` listens on.")
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="API bearer tokens, stored hashed: comma-separated "
        "`SCOPE:SHA256HEX` entries (scope read or write; `codeindex api token` makes one).")
    api_tokens_file: Path | None = Field(
        default=None, description="A file of API tokens, one `SCOPE SHA256HEX [name]` line each (# comments).")
    api_max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024,
                                    description="Largest request body the API reads (413 above it).")
    api_ready_timeout: float = Field(default=3.0, gt=0, description="Seconds /readyz waits for each dependency.")
    github_webhook_secret: SecretStr | None = Field(
        default=None, description="The secret GitHub signs push webhooks with (X-Hub-Signature-256).")
    github_webhook_secret_file: Path | None = Field(default=None, description="A file holding that secret.")
    gitlab_webhook_token: SecretStr | None = Field(
        default=None, description="The token GitLab sends with webhooks (X-Gitlab-Token).")
    gitlab_webhook_token_file: Path | None = Field(default=None, description="A file holding that token.")
    webhook_dedup_seconds: int = Field(default=7 * 86_400, ge=60,
                                       description="How long a webhook delivery id is remembered (duplicates ignored).")

    # `codeindex flower`: who may look (Flower's own --basic-auth and --auth/OAuth options, from
    # Flower's docs, "Authentication"); each also read from Flower's FLOWER_* name, so that an
    # operator's Flower environment counts as configured authentication.
    flower_basic_auth: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("CODEINDEX_FLOWER_BASIC_AUTH", "FLOWER_BASIC_AUTH",
                                                    "flower_basic_auth"),
        description="Flower's HTTP basic auth: user:password[,user2:password2] (never logged; also "
        "FLOWER_BASIC_AUTH). CODEINDEX_FLOWER_BASIC_AUTH_FILE is safer: an environment is easier to leak.")
    flower_basic_auth_file: Path | None = Field(
        default=None, description="File of Flower's basic-auth users, one user:password a line (a secret).")
    flower_auth: str | None = Field(
        default=None, validation_alias=AliasChoices("CODEINDEX_FLOWER_AUTH", "FLOWER_AUTH", "flower_auth"),
        description="Flower's OAuth: the e-mail addresses allowed in (a regular expression: Flower's --auth; "
        "also FLOWER_AUTH).")
    flower_auth_provider: str | None = Field(
        default=None, validation_alias=AliasChoices("CODEINDEX_FLOWER_AUTH_PROVIDER", "FLOWER_AUTH_PROVIDER",
                                                    "flower_auth_provider"),
        description="Flower's OAuth login handler, e.g. flower.views.auth.GithubLoginHandler (also "
        "FLOWER_AUTH_PROVIDER).")
    flower_oauth2_key: str | None = Field(
        default=None, validation_alias=AliasChoices("CODEINDEX_FLOWER_OAUTH2_KEY", "FLOWER_OAUTH2_KEY",
                                                    "flower_oauth2_key"),
        description="Flower's OAuth client id (also FLOWER_OAUTH2_KEY).")
    flower_oauth2_secret: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("CODEINDEX_FLOWER_OAUTH2_SECRET", "FLOWER_OAUTH2_SECRET",
                                                    "flower_oauth2_secret"),
        description="Flower's OAuth client secret (never logged; also FLOWER_OAUTH2_SECRET).")
    flower_oauth2_redirect_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("CODEINDEX_FLOWER_OAUTH2_REDIRECT_URI",
                                                    "FLOWER_OAUTH2_REDIRECT_URI", "flower_oauth2_redirect_uri"),
        description="Flower's OAuth callback, https://<flower>/login (also FLOWER_OAUTH2_REDIRECT_URI).")

    # Index artifacts (seed 000): packed snapshots of one repository's index that another machine
    # installs instead of re-indexing, and their retention (PR 7 days, main 30 days, promoted longer).
    artifact_uri: str | None = Field(
        default=None, description="Where artifacts are kept: a directory or s3://bucket/prefix (shared by the "
        "machines that push and pull). Default: the object store (CODEINDEX_OBJECT_STORE_URI) under artifacts/.")
    artifact_compression: ArtifactCompression = Field(
        default="zstd", description="zstd (multi-threaded; the default) or tar.gz (seed 000's gzip level 9).")
    artifact_zstd_level: int = Field(default=9, ge=1, le=22, description="zstd compression level of an artifact.")
    artifact_max_bytes: int = Field(default=500 * 1024**2, ge=1024, description="Largest artifact pushed or "
                                    "pulled (seed 000's 500 MB); a larger one is refused with its size.")
    artifact_main_branches: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["main", "master"], description="Comma-separated branches whose artifacts are "
        "kept artifact_main_days; artifacts of any other branch are pull-request artifacts.")
    artifact_pr_days: float = Field(default=7.0, gt=0, description="Retention of pull-request artifacts (days).")
    artifact_main_days: float = Field(default=30.0, gt=0, description="Retention of main-branch artifacts (days).")
    artifact_promoted_days: float = Field(default=365.0, gt=0, description="Retention of promoted artifacts (days).")

    # Cleanup (beat): every rule bounded per pass and idempotent; `codeindex cleanup` runs them now.
    cleanup_interval: float = Field(default=3600.0, gt=0, description="Seconds between beat's cleanup passes "
                                    "(artifact retention, cache eviction, unreferenced embeddings).")
    cleanup_max_per_pass: int = Field(default=1000, ge=1, description="At most this many items one cleanup rule "
                                      "removes in one pass (the next pass goes on).")
    compaction_interval: float = Field(default=86_400.0, gt=0, description="Seconds between compactions of each "
                                       "collection's LanceDB table (optimize and old-version cleanup).")
    compaction_keep_seconds: float = Field(default=3600.0, ge=0, description="Compaction keeps table versions "
                                           "younger than this (readers of an older version finish first).")

    _split_include = field_validator("include", "exclude", "allowed_roots", "api_tokens", "artifact_main_branches",
                                     mode="before")(_split_globs)

    @property
    def eager(self) -> bool:
        """True when tasks run in-process (the embedded default, broker ``memory://``)."""
        return self.broker_url.startswith("memory://")

    @property
    def lock_redis_url(self) -> str | None:
        """The Redis that holds locks and breaker state: ``redis_url``, else a Redis broker, else None."""
        if self.redis_url:
            return self.redis_url
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return None

    @property
    def in_fleet(self) -> bool:
        """True for a fleet: a real broker and PostgreSQL state."""
        return bool(self.state_url) and not self.eager

    def home_for(self, repo_root: Path) -> Path:
        """The index directory: ``home`` when set, else ``<repo_root>/.codeindex``."""
        return (self.home or (repo_root / ".codeindex")).resolve()


_current: Settings | None = None


def get_settings() -> Settings:
    """Return the process-wide settings, reading the environment on first use."""
    global _current
    if _current is None:
        _current = Settings()
    return _current


def configure(**overrides: object) -> Settings:
    """Replace the process-wide settings with the environment's plus ``overrides``.

    Used by the CLI (options beat the environment) and by tests.
    Raises ``pydantic.ValidationError`` for a value of the wrong shape.
    """
    global _current
    _current = Settings(**overrides)  # type: ignore[arg-type]
    return _current
