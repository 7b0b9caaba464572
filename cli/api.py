"""``codeindex api``: serve the HTTP trigger (api/) with uvicorn; ``codeindex api token``: make a token."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from api.auth import Scope
from cli.common import JsonOut, LogLevel, fleet_settings, log_at, print_json

api_app = typer.Typer(help="The HTTP trigger: serve it (default), or make a bearer token for it.",
                      invoke_without_command=True)


@api_app.callback()
def api(
    ctx: typer.Context,
    host: Annotated[Optional[str], typer.Option("--host", help="Address to listen on (default CODEINDEX_API_HOST, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", min=1, max=65535, help="Port (default CODEINDEX_API_PORT, 8080).")] = None,
    loglevel: Annotated[LogLevel, typer.Option("--loglevel", "-l", help="Log level.")] = LogLevel.INFO,
) -> None:
    """Serve the HTTP trigger on the fleet (FastAPI under uvicorn): /v1 routes to add, sync and
    search repositories and to drain shards, push webhooks, /healthz, /readyz, /metrics;
    OpenAPI at /docs. Every route but /healthz needs a bearer token (CODEINDEX_API_TOKENS or
    CODEINDEX_API_TOKENS_FILE, hashes made by `codeindex api token`)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = fleet_settings("codeindex api")
    import uvicorn  # lazy: only the server needs it

    from api.app import create_app  # lazy: FastAPI and the runtime, after the settings were checked

    application = create_app(settings)  # first: a bad token setting is one `error:` line, no traceback
    log_at(loglevel)
    uvicorn.run(application, host=host or settings.api_host, port=port or settings.api_port,
                log_level=loglevel.value.lower(), access_log=loglevel is LogLevel.DEBUG,
                timeout_graceful_shutdown=30, log_config=None)


@api_app.command("token")
def token(
    scope: Annotated[Scope, typer.Option("--scope", help="read (GET routes, search) or write (also sync, add, drain).")] = Scope.READ,
    name: Annotated[str, typer.Option("--name", help="A name kept beside the hash in the tokens file.")] = "",
    json_out: JsonOut = False,
) -> None:
    """Make a bearer token: prints the token (shown once: give it to the client) and the line
    for CODEINDEX_API_TOKENS_FILE, which keeps only its SHA-256."""
    from api.auth import new_token  # lazy: see cli.common

    text, entry = new_token(scope)
    line = f"{entry.scope} {entry.sha256}{f' {name}' if name else ''}"
    if json_out:
        return print_json({"token": text, "scope": scope.value, "sha256": entry.sha256, "tokens_file_line": line})
    sys.stdout.write(f"token: {text}\nfor CODEINDEX_API_TOKENS_FILE: {line}\n")


def register(app: typer.Typer) -> None:
    """Add ``codeindex api`` to the ``codeindex`` app."""
    app.add_typer(api_app, name="api")
