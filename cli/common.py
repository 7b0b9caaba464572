"""What the CLI's command modules share: option types, setting up the settings and the Celery
app from the options, and JSON output.

Commands import the runtime (Celery, the stores) inside their bodies: ``codeindex --help`` and
usage errors then answer without paying for those imports (about 0.3 s here, more with LanceDB).
"""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from config.settings import Settings, configure
from indexing.errors import UsageError

RootOpt = Annotated[Optional[Path], typer.Option(
    "--root", help="Repository root (default: the git work tree around the current directory).",
    file_okay=False, resolve_path=True)]
CollectionOpt = Annotated[Optional[str], typer.Option(
    "--collection", help="Target collection (default: CODEINDEX_COLLECTION or 'codeindex').")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]


class OutputFormat(StrEnum):
    """What ``--format`` accepts."""

    TEXT = "text"
    JSON = "json"


class LogLevel(StrEnum):
    """What ``--loglevel`` accepts (the standard ``logging`` levels)."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


def print_json(document: object) -> None:
    """Write one JSON document (indented) and a newline to standard output."""
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


def git_toplevel(start: Path) -> Path | None:
    """The work tree of the git repository around ``start`` (GitPython), or None outside one."""
    import git  # lazy: GitPython only when the root is looked up

    try:
        top = git.Repo(start, search_parent_directories=True).working_tree_dir
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None
    return Path(top) if top else None


def read_settings(**overrides: object) -> Settings:
    """The settings from the environment plus ``overrides``. Raises :class:`UsageError` naming a
    bad ``CODEINDEX_*`` value (pydantic's validation error)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:  # pydantic ValidationError
        raise UsageError(f"invalid setting: {exc}") from None


def setup(root: Path | None, collection: str | None, verbose: bool = False, repo: str | None = None,
          **overrides: object) -> tuple[Path, Settings]:
    """Resolve the repository root, configure the settings (home, collection, ``overrides``)
    and the Celery app; return the root and the settings.

    Embedded mode: the index home is ``<root>/.codeindex`` unless CODEINDEX_HOME says otherwise.
    Fleet mode (a Redis broker): the home is the fleet's (CODEINDEX_HOME), and a repository
    named with ``--repo`` that the fleet knows is found at its registered root.
    Raises :class:`UsageError` for a bad setting or a root that is not a directory.
    """
    from workers import runtime as runtime_mod  # lazy: Celery and the stores (see the module docstring)
    from workers.app import apply_settings  # lazy: likewise

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("celery").setLevel(logging.WARNING)
    # The pool retries connections in the background and logs each failure; the command's
    # own error says once that the database cannot be reached.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    base = read_settings(**overrides)
    registered = None
    if not base.eager and root is None and repo and base.state_url:
        lookup = runtime_mod.Runtime(base)
        try:
            record = lookup.readonly_state().get_repo(repo)
        finally:
            lookup.close()
        registered = Path(record.root) if record else None
    repo_root = root or registered or git_toplevel(Path.cwd()) or Path.cwd()
    if not repo_root.is_dir():
        raise UsageError(f"repository root {repo_root} is not a directory")
    chosen: dict = dict(overrides)
    if base.eager or not base.home:
        chosen["home"] = base.home_for(repo_root)
    if collection:
        chosen["collection"] = collection
    try:
        settings = configure(**chosen)
        apply_settings(settings)
    except ValueError as exc:  # pydantic ValidationError, or limits that contradict each other
        raise UsageError(f"invalid setting: {exc}") from None
    runtime_mod.reset()
    return repo_root.resolve(), settings


def require_fleet(settings: Settings, what: str) -> Settings:
    """``settings`` when they describe a fleet; UsageError naming what is missing otherwise."""
    if settings.eager or not settings.state_url:
        raise UsageError(f"{what} needs a fleet: set CODEINDEX_BROKER_URL=redis://..., "
                         "CODEINDEX_RESULT_BACKEND=redis://... and CODEINDEX_STATE_URL=postgresql://...")
    return settings


def fleet_settings(what: str, **overrides: object) -> Settings:
    """Settings of a fleet, with the CLI set up (logging, Celery app); see :func:`require_fleet`."""
    _, settings = setup(None, None, **overrides)
    return require_fleet(settings, what)
