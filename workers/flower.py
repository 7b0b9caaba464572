"""Flower, the fleet's task monitor, run in this process with authentication from the settings.

``codeindex flower`` runs Flower's own Celery sub-command (what ``celery -A workers flower``
runs) in its own process, on the codeindex Celery app, through ``app.start`` as the worker runs
``app.worker_main``; not a ``celery flower`` subprocess. One process: SIGTERM (a pod stopping)
reaches Flower's handler directly and its exit status is the command's; no second interpreter
to start; and the users, handed over in Flower's ``FLOWER_*`` environment variables (Flower's
docs, "Configuration": every option also reads as ``FLOWER_<OPTION>``), are set inside this
process after it started, so they are neither on a command line that ``ps`` shows nor in a
child's start environment (``/proc/<pid>/environ``).
"""

from __future__ import annotations

import os

from config.settings import Settings
from indexing.errors import UsageError

#: Flower splits FLOWER_BASIC_AUTH (and --basic_auth) on commas (flower/command.py,
#: ``apply_env_options``), so no user name or password can hold one.
_SEPARATOR = ","

#: Flower's OAuth settings, its variable and ours (Flower's docs, "Authentication: Google,
#: GitHub, GitLab, Okta OAuth"): all are needed for a login to work.
_OAUTH = (
    ("FLOWER_AUTH", "CODEINDEX_FLOWER_AUTH", "flower_auth"),
    ("FLOWER_AUTH_PROVIDER", "CODEINDEX_FLOWER_AUTH_PROVIDER", "flower_auth_provider"),
    ("FLOWER_OAUTH2_KEY", "CODEINDEX_FLOWER_OAUTH2_KEY", "flower_oauth2_key"),
    ("FLOWER_OAUTH2_SECRET", "CODEINDEX_FLOWER_OAUTH2_SECRET", "flower_oauth2_secret"),
    ("FLOWER_OAUTH2_REDIRECT_URI", "CODEINDEX_FLOWER_OAUTH2_REDIRECT_URI", "flower_oauth2_redirect_uri"),
)

NO_AUTH = ("codeindex flower refuses to start without authentication: set CODEINDEX_FLOWER_BASIC_AUTH_FILE "
           "(a file of user:password lines), CODEINDEX_FLOWER_BASIC_AUTH=user:password[,user2:password2], or "
           "Flower's OAuth (CODEINDEX_FLOWER_AUTH, _AUTH_PROVIDER, _OAUTH2_KEY, _OAUTH2_SECRET, "
           "_OAUTH2_REDIRECT_URI, or their FLOWER_* names); --insecure starts it open to anyone who reaches "
           "its port")


def _checked_users(entries: list[str], where: str) -> list[str]:
    """``entries`` (``user:password`` strings, stripped) when each is one; UsageError naming
    ``where`` and the entry's number otherwise, never its text (it holds a password)."""
    users = [entry.strip() for entry in entries if entry.strip()]
    for number, entry in enumerate(users, 1):
        user, colon, password = entry.partition(":")
        if not (colon and user and password):
            raise UsageError(f"{where}: user {number} is not user:password (RFC 7617: a user name without ':', "
                             "a password that is not empty)")
        if _SEPARATOR in entry:
            raise UsageError(f"{where}: user {number} holds a ',', which Flower cannot take (it splits its "
                             "users on commas): choose a password without one")
    if not users:
        raise UsageError(f"{where} names no user:password")
    return users


def basic_auth_users(settings: Settings) -> list[str]:
    """The ``user:password`` entries of Flower's basic auth: from CODEINDEX_FLOWER_BASIC_AUTH
    (comma-separated) or the file CODEINDEX_FLOWER_BASIC_AUTH_FILE (one a line; blank lines
    ignored); an empty list when neither is set.

    Raises UsageError when both are set, the file cannot be read, or an entry is not
    ``user:password`` (RFC 7617's user-pass) or holds a comma; the message never quotes an entry.
    """
    inline = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
    path = settings.flower_basic_auth_file
    if inline.strip() and path is not None:
        raise UsageError("set one of CODEINDEX_FLOWER_BASIC_AUTH and CODEINDEX_FLOWER_BASIC_AUTH_FILE, not both")
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise UsageError(f"cannot read CODEINDEX_FLOWER_BASIC_AUTH_FILE {path}: {reason}") from None
        return _checked_users(text.splitlines(), f"CODEINDEX_FLOWER_BASIC_AUTH_FILE {path}")
    if inline.strip():
        return _checked_users(inline.split(_SEPARATOR), "CODEINDEX_FLOWER_BASIC_AUTH")
    return []


def oauth_environment(settings: Settings) -> dict[str, str]:
    """Flower's OAuth variables (``FLOWER_AUTH``, ``FLOWER_AUTH_PROVIDER``, ``FLOWER_OAUTH2_*``)
    from the settings; empty when none is set.

    Raises UsageError when some are set and others missing (Flower would start with a login
    that cannot succeed), or when the allowed e-mails are a pattern Flower refuses.
    """
    values = {}
    for variable, _, field in _OAUTH:
        value = getattr(settings, field)
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if value:
            values[variable] = value
    if not values:
        return {}
    missing = [ours for variable, ours, _ in _OAUTH if variable not in values]
    if missing:
        raise UsageError(f"Flower's OAuth needs {', '.join(missing)} too (or their FLOWER_* names)")
    from flower.utils.authentication import validate_auth_option  # lazy: Flower only for its command

    if not validate_auth_option(values["FLOWER_AUTH"]):
        raise UsageError(f"CODEINDEX_FLOWER_AUTH={values['FLOWER_AUTH']!r} is not a pattern Flower accepts: "
                         "addresses separated by '|', or one '*' outside the domain")
    return values


def auth_environment(settings: Settings) -> dict[str, str]:
    """The ``FLOWER_*`` variables that make Flower ask who is looking: ``FLOWER_BASIC_AUTH``
    (:func:`basic_auth_users`) and the OAuth ones (:func:`oauth_environment`); empty when the
    settings configure no authentication. Raises UsageError for a bad setting."""
    users = basic_auth_users(settings)
    environment = oauth_environment(settings)
    if users:
        environment["FLOWER_BASIC_AUTH"] = _SEPARATOR.join(users)
    return environment


def run(*, address: str, port: int, url_prefix: str | None, environment: dict[str, str], loglevel: str) -> None:
    """Run Flower on the codeindex Celery app (its broker, as the settings configured it) until
    SIGTERM or SIGINT: listening on ``address``:``port`` under ``url_prefix`` (none: ``/``),
    its authentication from ``environment`` (:func:`auth_environment`), logging at ``loglevel``
    (a :mod:`logging` level name).

    Flower reads its options from ``FLOWER_*`` variables, then from the arguments, then from a
    ``flowerconfig.py`` in the working directory (Flower's docs, "Configuration"). The secrets go
    into this process's environment only: ``/proc/<pid>/environ`` and ``ps e`` show the
    environment the process started with, not what it sets later.
    """
    from workers.app import app  # lazy: Celery only for the commands that run it

    os.environ.update(environment)
    argv = ["flower", f"--address={address}", f"--port={port}", f"--logging={loglevel.lower()}"]
    if url_prefix:
        argv.append(f"--url_prefix={url_prefix.strip('/')}")
    app.start(argv)
