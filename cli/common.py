"""What the CLI's command modules share: option types, setting up the settings and the Celery
app from the options, and JSON output.

Commands import the runtime (Celery, the stores) inside their bodies: ``codeindex --help`` and
usage errors then answer without paying for those imports (about 0.3 s here, more with LanceDB).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from pydantic import ValidationError

from config.celery import celery_config
from config.settings import Settings, configure
from indexing.errors import SyncInterrupted, UsageError

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
    """The settings from the environment plus ``overrides``. Raises :class:`UsageError` naming
    each bad ``CODEINDEX_*`` value in one line (pydantic's validation error), or limits that
    contradict each other (:func:`config.celery.celery_config`'s check, which importing the
    Celery app would otherwise raise as a bare ValueError)."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
        celery_config(settings)
    except ValidationError as exc:
        raise UsageError(describe_invalid(exc)) from None
    except ValueError as exc:
        raise UsageError(f"invalid setting: {exc}") from None
    return settings


def describe_invalid(exc: ValidationError) -> str:
    """One line naming every invalid setting, its value and what is wrong with it."""
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        value = error.get("input")
        shown = f"={value!r}" if isinstance(value, str | int | float) else ""
        problems.append(f"CODEINDEX_{field.upper()}{shown}: {error['msg']}")
    return "invalid setting " + "; ".join(problems)


def setup(root: Path | None, collection: str | None, verbose: bool = False, repo: str | None = None,
          **overrides: object) -> tuple[Path, Settings]:
    """Resolve the repository root, configure the settings (home, collection, ``overrides``)
    and the Celery app; return the root and the settings.

    Embedded mode: the index home is ``<root>/.codeindex`` unless CODEINDEX_HOME says otherwise.
    Fleet mode (a Redis broker): the home is the fleet's (CODEINDEX_HOME), and a repository
    named with ``--repo`` that the fleet knows is found at its registered root.
    Raises :class:`UsageError` for a bad setting or a root that is not a directory.
    """
    base = read_settings(**overrides)  # first: importing the runtime reads the settings too
    from workers import runtime as runtime_mod  # lazy: Celery and the stores (see the module docstring)
    from workers.app import apply_settings  # lazy: likewise

    quiet(verbose or base.debug)
    registered = None
    if not base.eager and root is None and repo and base.state_url:
        lookup = runtime_mod.Runtime(base)
        try:
            record = lookup.readonly_state().get_repo(repo)
        finally:
            lookup.close()
        registered = Path(record.root) if record and record.root else None
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
    except ValidationError as exc:
        raise UsageError(describe_invalid(exc)) from None
    except ValueError as exc:  # limits that contradict each other (config.celery.celery_config)
        raise UsageError(f"invalid setting: {exc}") from None
    runtime_mod.reset()
    return repo_root.resolve(), settings


class _Brief(logging.Formatter):
    """A log record in one line: the traceback only when asked for (``--verbose``, CODEINDEX_DEBUG)."""

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return ""

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return ""


#: The loggers a command configures (codeindex serve restores them after each command).
LIBRARIES = ("celery", "codeindex", "psycopg", "kombu")
_FORMAT = "%(levelname)s %(name)s: %(message)s"


def quiet(verbose: bool) -> None:
    """Configure a one-shot command's logging: quiet by default, so that a failure is the one
    ``error:`` line the command prints (the libraries, Celery among them, log failures of their
    own); with ``verbose``, INFO and tracebacks (what :func:`cli.main.main` checks too)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT) if verbose else _Brief(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.CRITICAL)


def log_at(level: LogLevel) -> None:
    """Configure a long-running command's logging (worker, beat, metrics): every library at
    ``level``, with tracebacks, as an operator reading its log wants."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    for name in ("", *LIBRARIES):
        logging.getLogger(name).setLevel(level.value)


def verbose_errors() -> bool:
    """True when the command was asked for tracebacks (``--verbose``, CODEINDEX_DEBUG)."""
    return logging.getLogger("codeindex").isEnabledFor(logging.INFO)


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT inside the block into :class:`~indexing.errors.SyncInterrupted` (exit 130, one
    line), after marking the runs this process leaves unfinished as abandoned (best effort: the
    next sync also marks the runs of processes that are gone)."""
    try:
        yield
    except KeyboardInterrupt:
        try:
            from indexing.sync import abandon_runs, process_owner  # lazy: with the runtime
            from workers.runtime import runtime  # lazy: inside a command, after setup

            abandon_runs(runtime().state, lambda run: run.owner == process_owner(), "interrupted (SIGINT)")
        except Exception:  # noqa: BLE001 - leaving anyway; the next sync marks them
            pass
        raise SyncInterrupted("interrupted: nothing of the sync in progress was committed; the next sync "
                              "completes its work") from None


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
