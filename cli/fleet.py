"""The fleet's commands: ``worker``, ``beat``, ``repo``, ``shards``, ``failures``, ``metrics``.

A fleet is the same code with Redis as broker (CODEINDEX_BROKER_URL=redis://...), a Redis
result backend, PostgreSQL for state and registry (CODEINDEX_STATE_URL=postgresql://...) and
a shared index home (CODEINDEX_HOME). docs/operations.md walks through running one.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from indexing.errors import UsageError

repo_app = typer.Typer(help="Repositories of the index: add (assign to a shard and index), list.",
                       no_args_is_help=True)
shards_app = typer.Typer(help="The shards of the fleet: list them (default), drain or re-activate one.",
                         invoke_without_command=True)
failures_app = typer.Typer(help="Dead-letter records of tasks that exhausted their retries: list (default), replay.",
                           invoke_without_command=True)

JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]

_setup: Callable = None  # type: ignore[assignment]  # set by register()
_print_json: Callable = None  # type: ignore[assignment]


def _require_fleet(settings, what: str):
    """``settings`` when they describe a fleet; UsageError naming what is missing otherwise."""
    if settings.eager or not settings.state_url:
        raise UsageError(f"{what} needs a fleet: set CODEINDEX_BROKER_URL=redis://..., "
                         "CODEINDEX_RESULT_BACKEND=redis://... and CODEINDEX_STATE_URL=postgresql://...")
    return settings


def _fleet(what: str):
    """Settings of a fleet, with the CLI set up (logging, Celery app); see :func:`_require_fleet`."""
    _, settings = _setup(None, None)
    return _require_fleet(settings, what)


def _log_at(level: str) -> None:
    """Log Celery's and codeindex's messages at ``level`` (the CLI's default is warnings only)."""
    import logging

    try:
        logging.getLogger().setLevel(level.upper())
        for name in ("celery", "codeindex"):
            logging.getLogger(name).setLevel(level.upper())
    except ValueError:
        raise UsageError(f"unknown log level {level!r}") from None


def worker(
    shard_id: Annotated[Optional[str], typer.Option("--shard-id", help="The shard this worker owns (default: CODEINDEX_SHARD_ID, SHARD_ID or POD_NAME).")] = None,
    capacity: Annotated[Optional[int], typer.Option("--capacity", min=1, help="Repositories this shard may own (default 100).")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="Address shown in `codeindex shards` (default: POD_IP or this host's).")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Worker processes (prefork) or threads.")] = 1,
    pool: Annotated[str, typer.Option("--pool", "-P", help="Celery pool: prefork, solo or threads.")] = "prefork",
    metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", help="Serve Prometheus metrics on this port.")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Log level.")] = "INFO",
) -> None:
    """Run a worker that owns one shard: it consumes `shard.<id>`, `embed` and `maintenance`,
    registers and heartbeats every 10 s, and drains on SIGTERM (grace period
    CODEINDEX_GRACE_PERIOD, 300 s)."""
    if pool not in ("prefork", "solo", "threads"):
        raise UsageError(f"--pool must be prefork, solo or threads, not {pool!r}")
    for name, value in (("CODEINDEX_SHARD_ID", shard_id), ("CODEINDEX_SHARD_CAPACITY", capacity),
                        ("CODEINDEX_SHARD_ADDRESS", address)):
        if value is not None:
            os.environ[name] = str(value)
    from config.settings import Settings

    try:
        home = _require_fleet(Settings(), "codeindex worker").home
    except ValueError as exc:  # pydantic ValidationError: a bad CODEINDEX_* value
        raise UsageError(f"invalid setting: {exc}") from None
    if home is None:
        raise UsageError("set CODEINDEX_HOME to the directory the workers share (vectors, embedding cache)")
    if metrics_port is not None:
        # Before prometheus-client is imported (by _fleet): the pool's children write their
        # counters to files there, which the main process adds up (multiprocess mode).
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(Path(home) / "metrics" / f"{os.getpid()}"))
        Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    settings = _fleet("codeindex worker")
    from config.celery import Queue, shard_queue
    from workers.app import app

    if metrics_port is not None:
        from workers import metrics

        metrics.serve(metrics_port, fleet=False)
    _log_at(loglevel)
    queues = ",".join([shard_queue(settings.shard_id), Queue.EMBED.value, Queue.MAINTENANCE.value])
    app.worker_main(["worker", "-Q", queues, "-n", f"{settings.shard_id}@%h", "-c", str(concurrency),
                     "-P", pool, "--loglevel", loglevel, "-E"])


def beat(loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Log level.")] = "INFO") -> None:
    """Run the fleet's beat: heartbeat checks every 10 s (offline after 30 s, repositories and
    queued messages moved), rebalancing, retention. Start two for availability: only the
    holder of the Redis lock schedules; the other takes over when it dies."""
    settings = _fleet("codeindex beat")
    if settings.lock_redis_url is None:
        raise UsageError("beat needs Redis for its lock: set CODEINDEX_BROKER_URL=redis://... or CODEINDEX_REDIS_URL")
    from beat.schedule import beat_config
    from workers.app import app

    _log_at(loglevel)
    app.conf.update(beat_config(settings, settings.lock_redis_url))
    app.Beat(loglevel=loglevel, scheduler=app.conf.beat_scheduler,
             max_interval=app.conf.beat_max_loop_interval).run()


@repo_app.command("add")
def repo_add(
    path: Annotated[Path, typer.Argument(help="The repository's work tree (a git repository).", exists=True,
                                         file_okay=False, resolve_path=True)],
    repo_id: Annotated[Optional[str], typer.Option("--id", help="Repository id (default: the directory's name).")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Print the run id instead of waiting for the summary.")] = False,
    json_out: JsonOut = False,
) -> None:
    """Add a repository: the ring assigns it to a shard (in a fleet), which indexes it in full."""
    from indexing.messages import SyncRequest, SyncSummary
    from tasks.sync import plan
    from workers import resources
    from workers.routing import place

    from cli.output import render_summary

    root, settings = _setup(path, None)
    rid = repo_id or root.name
    shard = settings.shard_id
    if settings.state_url and not settings.eager:
        shard = place(resources.registry(settings), rid).shard_id
    request = SyncRequest(run_id=str(uuid.uuid4()), repo_id=rid, root=str(root), collection=settings.collection,
                          source="all", trigger="repo-add")
    result = plan.apply_async(args=[request.model_dump(mode="json")])
    if no_wait:
        doc = {"repo_id": rid, "shard_id": shard, "run_id": request.run_id, "task_id": result.id}
        return _print_json(doc) if json_out else sys.stdout.write(f"{request.run_id}\n")
    summary = SyncSummary.model_validate(result.get(disable_sync_subtasks=False))
    if json_out:
        return _print_json({"repo_id": rid, "shard_id": shard, **summary.model_dump(mode="json")})
    sys.stdout.write(f"Repository {rid} ({root}) on shard {shard}\n")
    render_summary(summary, sys.stdout, False, summary.seconds)
    if summary.errors:
        raise typer.Exit(1)


@repo_app.command("list")
def repo_list(json_out: JsonOut = False) -> None:
    """List the repositories with their shard, files, chunks and last indexed commit."""
    from workers import resources

    _, settings = _setup(None, None)
    stats = resources.state_store(settings, readonly=True).repo_stats()
    owners = resources.registry(settings).assignments() if settings.state_url else {}
    rows = [{**r, "shard_id": owners.get(r["repo_id"], settings.shard_id if not settings.state_url else None)}
            for r in stats]
    if json_out:
        return _print_json(rows)
    for r in rows:
        sys.stdout.write(f"{r['repo_id']}  shard={r['shard_id'] or '-'}  files={r['files']}  chunks={r['chunks']}  "
                         f"commit={(r['last_commit'] or '-')[:12]}  {r['root']}\n")


@shards_app.callback()
def shards(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List the shards: id, status, capacity, load, heartbeat lag, assigned repositories."""
    if ctx.invoked_subcommand is not None:
        return
    from workers import resources

    settings = _fleet("codeindex shards")
    registry = resources.registry(settings)
    owners = registry.assignments()
    rows = []
    for shard in registry.shards():
        repos = sorted(r for r, s in owners.items() if s == shard.shard_id)
        rows.append({"shard_id": shard.shard_id, "name": shard.name, "address": shard.address,
                     "status": shard.status, "capacity": shard.capacity, "load": shard.load,
                     "heartbeat_lag": round(shard.heartbeat_lag(), 1),
                     "registered_at": shard.registered_at.isoformat(), "repos": repos})
    if json_out:
        return _print_json(rows)
    from rich.console import Console
    from rich.table import Table

    table = Table("shard", "status", "capacity", "load", "heartbeat lag", "address", "repositories")
    for r in rows:
        table.add_row(r["shard_id"], r["status"], str(r["capacity"]), str(r["load"]), f"{r['heartbeat_lag']}s",
                      r["address"], ", ".join(r["repos"][:8]) + (" ..." if len(r["repos"]) > 8 else ""))
    Console().print(table)


@shards_app.command("drain")
def shards_drain(shard_id: Annotated[str, typer.Argument(help="The shard to drain.")], json_out: JsonOut = False) -> None:
    """Drain a shard: no new assignments; its repositories and queued messages move to their
    next owners. The worker keeps running what it has (stop it with SIGTERM)."""
    from workers import resources
    from workers.requeue import requeue_from
    from workers.routing import reassign_from

    settings = _fleet("codeindex shards drain")
    registry = resources.registry(settings)
    registry.set_status(shard_id, "draining")
    moved = reassign_from(registry, shard_id)
    messages = requeue_from([shard_id])
    doc = {"shard_id": shard_id, "status": "draining", "moved": {m.repo_id: m.shard_id for m in moved},
           "messages_moved": messages}
    if json_out:
        return _print_json(doc)
    sys.stdout.write(f"shard {shard_id} draining: {len(moved)} repositories moved, {messages} queued messages moved\n")
    for m in moved:
        sys.stdout.write(f"  {m.repo_id} -> {m.shard_id}\n")


@shards_app.command("activate")
def shards_activate(shard_id: Annotated[str, typer.Argument(help="The shard to take new assignments again.")]) -> None:
    """Undo a drain: the shard takes new assignments again (rebalancing brings its share back)."""
    from workers import resources

    settings = _fleet("codeindex shards activate")
    resources.registry(settings).set_status(shard_id, "active")
    sys.stdout.write(f"shard {shard_id} active\n")


@failures_app.callback()
def failures(ctx: typer.Context, limit: Annotated[int, typer.Option("--limit", min=1)] = 20,
             json_out: JsonOut = False) -> None:
    """List the dead-letter records of tasks that exhausted their retries (newest first)."""
    if ctx.invoked_subcommand is not None:
        return
    from workers import resources

    _, settings = _setup(None, None)
    records = resources.state_store(settings, readonly=True).failures(limit)
    if json_out:
        return _print_json(records)
    for r in records:
        replayed = f"  replayed {r['replayed_at']}" if r.get("replayed_at") else ""
        sys.stdout.write(f"{r['id']}  {r['created_at']}  {r['task']}  run={r['run_id']}  {r['error']}{replayed}\n")


@failures_app.command("replay")
def failures_replay(
    failure_id: Annotated[int, typer.Argument(help="The failure record's id (see `codeindex failures`).")],
    json_out: JsonOut = False,
) -> None:
    """Re-enqueue the task of a failure record. A failed embedding batch is replayed as a sync
    of its files (a lone batch would upsert without committing); other tasks are sent again
    with their recorded arguments, to their current owner's queue."""
    import json

    from tasks.replay import replay
    from workers import resources

    _, settings = _setup(None, None)
    state = resources.state_store(settings)
    record = state.get_failure(failure_id)
    if record is None:
        raise UsageError(f"no failure record {failure_id}")
    sent = replay(record["task"], json.loads(record["arguments"]))
    state.mark_failure_replayed(failure_id)
    doc = {"failure_id": failure_id, **sent}
    if json_out:
        return _print_json(doc)
    sys.stdout.write(f"replayed failure {failure_id}: {sent['task']} task {sent['task_id']}\n")


def metrics(port: Annotated[int, typer.Option("--port", help="Port of /metrics.")] = 9808,
            addr: Annotated[str, typer.Option("--addr", help="Address to listen on.")] = "0.0.0.0") -> None:
    """Serve the fleet's Prometheus metrics (shard load, capacity, heartbeat lag, rebalance
    count, queue depth per queue) until interrupted."""
    import time

    from workers import metrics as metrics_mod

    _fleet("codeindex metrics")
    metrics_mod.serve(port, fleet=True, addr=addr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer, setup: Callable, print_json: Callable) -> None:
    """Add the fleet commands to the ``codeindex`` app; ``setup``/``print_json`` are cli.main's."""
    global _setup, _print_json
    _setup, _print_json = setup, print_json
    app.command()(worker)
    app.command()(beat)
    app.command()(metrics)
    app.add_typer(repo_app, name="repo")
    app.add_typer(shards_app, name="shards")
    app.add_typer(failures_app, name="failures")
