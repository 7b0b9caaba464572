"""Settings of codeindex, read once from the environment with the ``CODEINDEX_`` prefix.

This is the only module that reads environment variables (pydantic-settings does the
reading); everything else asks :func:`get_settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EmbedderKind = Literal["minilm", "hashing"]


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

    model_config = SettingsConfigDict(env_prefix="CODEINDEX_", extra="ignore")

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
    batch_files: int = Field(default=64, ge=1, description="Files per embedding task (chord header).")
    batch_bytes: int = Field(default=1_048_576, ge=1024, description="Bytes per embedding task.")
    model_batch_size: int = Field(default=32, ge=1, description="Texts per model forward pass.")
    delete_threshold: float = Field(
        default=0.2, ge=0.0, le=1.0,
        description="A sync deleting more than this share of a repository's files needs --force.",
    )
    broker_url: str = "memory://localhost/"
    result_backend: str = "cache+memory://"
    task_time_limit: int = Field(default=3600, ge=10)
    task_soft_time_limit: int = Field(default=3300, ge=5)
    lock_timeout: float = Field(default=600.0, gt=0, description="Seconds to wait for a repository lock.")

    _split_include = field_validator("include", "exclude", mode="before")(_split_globs)

    @property
    def eager(self) -> bool:
        """True when tasks run in-process (the embedded default, broker ``memory://``)."""
        return self.broker_url.startswith("memory://")

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
