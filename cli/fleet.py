"""The fleet's commands: ``worker``, ``beat``, ``flower``, ``repo``, ``shards``, ``failures``, ``metrics``.

A fleet is the same code with Redis as broker (CODEINDEX_BROKER_URL=redis://...), a Redis
result backend, PostgreSQL for state and registry (CODEINDEX_STATE_URL=postgresql://...), and
either an index home its workers share (CODEINDEX_HOME: the vectors, repositories by path) or
nothing shared but S3 (CODEINDEX_STORE_URI=s3://..., CODEINDEX_OBJECT_STORE_URI=s3://...,
repositories by URL, each worker its own CODEINDEX_HOME and CODEINDEX_DATA_DIR).
docs/operations.md walks through running both.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import (
    JsonOut, LogLevel, fleet_settings, interruptible, log_at, print_json, read_settings, require_fleet, setup,
)
from indexing.errors import UsageError

repo_app = typer.Typer(help="Repositories of the index: add (assign to a shard and index), list.",
                       no_args_is_help=True)
shards_app = typer.Typer(help="The shards of the fleet: list them (default), drain or re-activate one.",
                         invoke_without_command=True)
failures_app = typer.Typer(help="Dead-letter records of tasks that exhausted their retries: list (default), replay.",
                           invoke_without_command=True)


class Pool(StrEnum):
    """The Celery worker pools ``--pool`` accepts."""

    PREFORK = "prefork"
    SOLO = "solo"
    THREADS = "threads"


def worker(
    shard_id: Annotated[Optional[str], typer.Option("--shard-id", help="The shard this worker owns (default: CODEINDEX_SHARD_ID, SHARD_ID or POD_NAME).")] = None,
    capacity: Annotated[Optional[int], typer.Option("--capacity", min=1, help="Repositories this shard may own (default 100).")] = None,
    address: Annotated[Optional[str], typer.Option("--address", help="Address shown in `codeindex shards` (default: POD_IP or this host's).")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Worker processes (prefork) or threads.")] = 1,
    pool: Annotated[Pool, typer.Option("--pool", "-P", help="Celery pool.")] = Pool.PREFORK,
    metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", help="Serve Prometheus metrics on this port.")] = None,
    loglevel: Annotated[LogLevel, typer.Option("--loglevel", "-l", help="Log level.")] = LogLevel.INFO,
) -> None:
    """Run a worker that owns one shard: it consumes `shard.<id>`, `embed` and `maintenance`,
    registers and heartbeats every 10 s, and drains on SIGTERM (grace period
    CODEINDEX_GRACE_PERIOD, 300 s)."""
    options = {name: value for name, value in (("shard_id", shard_id), ("shard_capacity", capacity),
                                               ("shard_address", address)) if value is not None}
    home = require_fleet(read_settings(**options), "codeindex worker").home
    if home is None:
        raise UsageError("set CODEINDEX_HOME to the worker's index home: the vectors when CODEINDEX_STORE_URI is "
                         "not set (a directory every worker shares), its metrics")
    if metrics_port is not None:
        # prometheus-client's multiprocess mode is configured by this variable alone, read when
        # the client is imported, in this process and in the pool's children that inherit it:
        # they write their counters to files there, which this process adds up.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(Path(home) / "metrics" / f"{os.getpid()}"))
        Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    settings = fleet_settings("codeindex worker", **options)
    from config.celery import Queue, shard_queue  # lazy: see cli.common
    from workers import worker as worker_process  # lazy: likewise

    if metrics_port is not None:
        from workers import metrics  # lazy: likewise

        metrics.serve(metrics_port, fleet=False)
    log_at(loglevel)
    worker_process.run([shard_queue(settings.shard_id), Queue.EMBED.value, Queue.MAINTENANCE.value],
                       node=f"{settings.shard_id}@%h", concurrency=concurrency, pool=pool.value,
                       loglevel=loglevel.value)


def beat(loglevel: Annotated[LogLevel, typer.Option("--loglevel", "-l", help="Log level.")] = LogLevel.INFO) -> None:
    """Run the fleet's beat: heartbeat checks every 10 s (offline after 30 s, repositories and
    queued messages moved), rebalancing, retention. Start two for availability: only the
    holder of the Redis lock schedules; the other takes over when it dies."""
    settings = fleet_settings("codeindex beat")
    if settings.lock_redis_url is None:
        raise UsageError("beat needs Redis for its lock: set CODEINDEX_BROKER_URL=redis://... or CODEINDEX_REDIS_URL")
    from beat.schedule import beat_config  # lazy: see cli.common
    from workers.app import app  # lazy: likewise

    log_at(loglevel)
    app.conf.update(beat_config(settings, settings.lock_redis_url))
    app.Beat(loglevel=loglevel.value, scheduler=app.conf.beat_scheduler,
             max_interval=app.conf.beat_max_loop_interval).run()


def flower(
    address: Annotated[str, typer.Option("--address", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 5555,
    url_prefix: Annotated[Optional[str], typer.Option("--url-prefix", help="Serve under this path (behind a "
                                                      "reverse proxy), e.g. flower for /flower/.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Start without authentication: anyone who "
                                           "reaches the port sees every task's arguments and can stop workers.")] = False,
    loglevel: Annotated[LogLevel, typer.Option("--loglevel", "-l", help="Log level.")] = LogLevel.INFO,
) -> None:
    """Run Flower on the fleet's broker: every task under its stable name, behind basic auth
    (CODEINDEX_FLOWER_BASIC_AUTH_FILE or CODEINDEX_FLOWER_BASIC_AUTH) or Flower's OAuth
    (CODEINDEX_FLOWER_AUTH and the rest); without any it refuses to start unless --insecure.

    Flower's /metrics and /healthcheck answer without authentication: keep its port behind a
    network policy. Other Flower options: its FLOWER_* variables (FLOWER_MAX_TASKS, ...).
    How Flower is run, and why: :mod:`workers.flower`.
    """
    settings = fleet_settings("codeindex flower")
    from workers import flower as flower_process  # lazy: see cli.common

    environment = flower_process.auth_environment(settings)
    if not environment and not insecure:
        raise UsageError(flower_process.NO_AUTH)
    log_at(loglevel)
    flower_process.run(address=address, port=port, url_prefix=url_prefix, environment=environment,
                       loglevel=loglevel.value)


@repo_app.command("add")
def repo_add(
    source: Annotated[str, typer.Argument(
        help="The repository: a git URL (https://, ssh://, file://), which the owner shard clones into its own "
             "data directory, or the path of a work tree every worker reads.", metavar="URL|PATH")],
    name: Annotated[Optional[str], typer.Option("--name", "--id", help="Repository id (default: the URL's or "
                                                "directory's last name, without .git).")] = None,
    branch: Annotated[Optional[str], typer.Option("--branch", help="The branch a URL repository follows "
                                                  "(default: the remote's default branch, its HEAD).")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Print the run id instead of waiting for the summary.")] = False,
    json_out: JsonOut = False,
) -> None:
    """Add a repository: the ring assigns it to a shard (in a fleet), which indexes it in full.

    A URL repository is recorded with its URL and branch (never credentials: give a token as
    CODEINDEX_GIT_TOKEN_FILE, an SSH key as CODEINDEX_GIT_SSH_KEY); `codeindex sync --repo NAME`
    then fetches and indexes what changed since the last indexed commit.
    """
    from cli.output import render_summary  # lazy: see cli.common
    from indexing.messages import SyncSummary  # lazy: likewise

    is_url = "://" in source
    if is_url:
        from indexing.git_source import checked_source, repo_name_of  # lazy: likewise

        url, branch = checked_source(source, branch)
        root, settings = setup(None, None)
        if branch is None:
            from workers.runtime import runtime  # lazy: after setup, which checks the settings first

            branch = runtime().mirror(name or repo_name_of(url), url, "HEAD").default_branch()
        rid, where = name or repo_name_of(url), f"{url} {branch}"
    else:
        path = Path(source).resolve()
        if not path.is_dir():
            raise UsageError(f"repository {source!r} is neither a git URL nor a directory")
        url = None
        root, settings = setup(path, None)
        rid, where = name or root.name, str(root)
    from tasks.sync import add_repository  # lazy: after setup, which checks the settings first

    shard, request, result = add_repository(rid, settings.collection, root=str(root), url=url, branch=branch)
    if no_wait:
        doc = {"repo_id": rid, "shard_id": shard, "run_id": request.run_id, "task_id": result.id}
        return print_json(doc) if json_out else sys.stdout.write(f"{request.run_id}\n")
    with interruptible():
        summary = SyncSummary.model_validate(result.get(disable_sync_subtasks=False))
    if json_out:
        return print_json({"repo_id": rid, "shard_id": shard, **summary.model_dump(mode="json")})
    sys.stdout.write(f"Repository {rid} ({where}) on shard {shard}\n")
    render_summary(summary, sys.stdout, False, summary.seconds)
    if summary.errors:
        raise typer.Exit(1)


def _brief_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


@repo_app.command("list")
def repo_list(json_out: JsonOut = False) -> None:
    """List the repositories: source (URL and branch, or root), owner shard, files, chunks, last
    indexed commit and freshness (how long ago the last sync committed)."""
    _, settings = setup(None, None)
    from indexing.state import seconds_since  # lazy: see cli.common
    from workers.runtime import runtime  # lazy: after setup, which checks the settings first

    rt = runtime()
    owners = rt.registry.assignments() if settings.state_url else {}
    rows = [{**asdict(r), "shard_id": owners.get(r.repo_id, None if settings.state_url else settings.shard_id),
             "age_seconds": seconds_since(r.indexed_at)}
            for r in rt.readonly_state().repo_stats()]
    if json_out:
        return print_json(rows)
    for r in rows:
        where = f"{r['url']} {r['branch']}" if r["url"] else r["root"]
        sys.stdout.write(f"{r['repo_id']}  shard={r['shard_id'] or '-'}  files={r['files']}  chunks={r['chunks']}  "
                         f"commit={(r['last_commit'] or '-')[:12]}  indexed={_brief_age(r['age_seconds'])}  "
                         f"{where}\n")


@shards_app.callback()
def shards(ctx: typer.Context, json_out: JsonOut = False) -> None:
    """List the shards: id, status, capacity, load, heartbeat lag, assigned repositories."""
    if ctx.invoked_subcommand is not None:
        return

    fleet_settings("codeindex shards")
    from workers.runtime import runtime  # lazy: after setup, which checks the settings first

    registry = runtime().registry
    owners = registry.assignments()
    rows = []
    for shard in registry.shards():
        repos = sorted(r for r, s in owners.items() if s == shard.shard_id)
        rows.append({"shard_id": shard.shard_id, "name": shard.name, "address": shard.address,
                     "status": shard.status, "capacity": shard.capacity, "load": shard.load,
                     "heartbeat_lag": round(shard.heartbeat_lag(), 1),
                     "registered_at": shard.registered_at.isoformat(), "repos": repos})
    if json_out:
        return print_json(rows)
    from rich.console import Console  # lazy: likewise
    from rich.table import Table  # lazy: likewise

    table = Table("shard", "status", "capacity", "load", "heartbeat lag", "address", "repositories")
    for r in rows:
        table.add_row(r["shard_id"], r["status"], str(r["capacity"]), str(r["load"]), f"{r['heartbeat_lag']}s",
                      r["address"], ", ".join(r["repos"][:8]) + (" ..." if len(r["repos"]) > 8 else ""))
    Console().print(table)


@shards_app.command("drain")
def shards_drain(shard_id: Annotated[str, typer.Argument(help="The shard to drain.")], json_out: JsonOut = False) -> None:
    """Drain a shard: no new assignments; its repositories and queued messages move to their
    next owners. The worker keeps running what it has (stop it with SIGTERM)."""
    fleet_settings("codeindex shards drain")
    from workers.handover import hand_over  # lazy: after setup, which checks the settings first
    from workers.registry import ShardStatus  # lazy: after setup, which checks the settings first
    from workers.runtime import runtime  # lazy: after setup, which checks the settings first

    done = hand_over(runtime(), shard_id, status=ShardStatus.DRAINING)
    doc = {"shard_id": shard_id, "status": ShardStatus.DRAINING.value,
           "moved": {m.repo_id: m.shard_id for m in done.moved}, "messages_moved": done.messages}
    if json_out:
        return print_json(doc)
    sys.stdout.write(f"shard {shard_id} draining: {len(done.moved)} repositories moved, "
                     f"{done.messages} queued messages moved\n")
    for m in done.moved:
        sys.stdout.write(f"  {m.repo_id} -> {m.shard_id}\n")


@shards_app.command("activate")
def shards_activate(shard_id: Annotated[str, typer.Argument(help="The shard to take new assignments again.")]) -> None:
    """Undo a drain: the shard takes new assignments again (rebalancing brings its share back)."""
    fleet_settings("codeindex shards activate")
    from workers.registry import ShardStatus  # lazy: after setup, which checks the settings first
    from workers.runtime import runtime  # lazy: after setup, which checks the settings first

    runtime().registry.set_status(shard_id, ShardStatus.ACTIVE)
    sys.stdout.write(f"shard {shard_id} active\n")


@failures_app.callback()
def failures(ctx: typer.Context, limit: Annotated[int, typer.Option("--limit", min=1)] = 20,
             json_out: JsonOut = False) -> None:
    """List the dead-letter records of tasks that exhausted their retries (newest first)."""
    if ctx.invoked_subcommand is not None:
        return

    setup(None, None)
    from workers.runtime import runtime  # lazy: after setup, which checks the settings first

    records = runtime().readonly_state().failures(limit)
    if json_out:
        return print_json([asdict(r) for r in records])
    for r in records:
        replayed = f"  replayed {r.replayed_at}" if r.replayed_at else ""
        sys.stdout.write(f"{r.id}  {r.created_at}  {r.task}  run={r.run_id}  {r.error}{replayed}\n")


@failures_app.command("replay")
def failures_replay(
    failure_id: Annotated[int, typer.Argument(help="The failure record's id (see `codeindex failures`).")],
    json_out: JsonOut = False,
) -> None:
    """Re-enqueue the task of a failure record. A failed embedding batch is replayed as a sync
    of its files (a lone batch would upsert without committing); other tasks are sent again
    with their recorded arguments, to their current owner's queue."""
    setup(None, None)
    from workers.app import app  # lazy: after setup, which checks the settings first
    from workers.deadletter import replay  # lazy: after setup, which checks the settings first
    from workers.runtime import runtime  # lazy: after setup, which checks the settings first

    rt = runtime()
    record = rt.state.get_failure(failure_id)
    if record is None:
        raise UsageError(f"no failure record {failure_id}")
    sent = replay(app, rt, record, json.loads(record.arguments))
    rt.state.mark_failure_replayed(failure_id)
    doc = {"failure_id": failure_id, **sent}
    if json_out:
        return print_json(doc)
    sys.stdout.write(f"replayed failure {failure_id}: {sent['task']} task {sent['task_id']}\n")


def metrics(port: Annotated[int, typer.Option("--port", help="Port of /metrics.")] = 9808,
            addr: Annotated[str, typer.Option("--addr", help="Address to listen on.")] = "0.0.0.0") -> None:
    """Serve the fleet's Prometheus metrics until interrupted: shard load, capacity, heartbeat
    lag, rebalance count, queue depth and oldest message age per queue, dead letters, each
    repository's last index time (docs/operations.md, "Metrics")."""
    fleet_settings("codeindex metrics")
    from workers import metrics as metrics_mod  # lazy: after setup, which checks the settings first

    log_at(LogLevel.WARNING)
    metrics_mod.serve(port, fleet=True, addr=addr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    """Add the fleet commands to the ``codeindex`` app."""
    app.command()(worker)
    app.command()(beat)
    app.command()(flower)
    app.command()(metrics)
    app.add_typer(repo_app, name="repo")
    app.add_typer(shards_app, name="shards")
    app.add_typer(failures_app, name="failures")
