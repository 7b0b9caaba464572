"""The HTTP trigger: a FastAPI application over the fleet, versioned under ``/v1``.

Every route but ``/healthz`` needs a bearer token (api/auth.py) and the webhooks their sender's
signature instead (api/webhooks.py). Routes take exactly what the CLI takes and call the same
functions: sync requests come from :mod:`indexing.requests` and go out through
:func:`tasks.sync.send_plan`; ``202 Accepted`` answers with the run id and a ``Location`` to
poll. OpenAPI is served at ``/docs`` (``/openapi.json``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, model_validator

from api.auth import Scope, TokenHash, authorize, parse_tokens
from api.webhooks import (
    DeliveryLog, Push, PushTargets, github_push, github_signature_valid, gitlab_push, gitlab_token_valid,
)
from config.settings import Settings
from indexing.changes import ChangeList, parse_lines
from indexing.errors import CodeindexError, RefusedError, UsageError
from indexing.requests import SyncOptions, url_request, work_tree_requests
from indexing.search import SearchMode, search_collection
from indexing.state import RepoRecord, RunStatus, seconds_since
from indexing.store import SearchFilter
from tasks.sync import add_repository, send_plan
from workers.runtime import runtime

log = logging.getLogger("codeindex.api")

REQUESTS = Counter("codeindex_api_requests", "HTTP requests the API answered, by route, method and status.",
                   ["route", "method", "status"])
REQUEST_SECONDS = Histogram("codeindex_api_request_duration_seconds", "Time to answer an HTTP request, by route.",
                            ["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
DELIVERIES = Counter("codeindex_webhook_deliveries", "Webhook deliveries, by source and outcome "
                     "(enqueued, duplicate, ignored, ping, unauthorized, invalid).", ["source", "outcome"])

_RUN_KEY = "codeindex:api:run:{}"


class RepoIn(BaseModel):
    """``POST /v1/repos``: a git URL (with an optional branch) or a work tree's path, and an id."""

    url: str | None = Field(default=None, max_length=2048, description="A git URL (https, ssh, file).")
    path: str | None = Field(default=None, max_length=4096, description="A work tree every worker can read.")
    branch: str | None = Field(default=None, max_length=255, description="The branch a URL repository follows.")
    name: str | None = Field(default=None, min_length=1, max_length=200, description="The repository id.")

    @model_validator(mode="after")
    def _one_source(self) -> RepoIn:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of `url` and `path`")
        return self


class SyncIn(BaseModel):
    """``POST /v1/repos/{id}/sync``: what ``codeindex sync`` takes. One change source at most:
    ``paths`` (paths or ``git diff --name-status`` lines, as piped into ``--stdin``), ``changes``
    (the sync spec's JSON change list), ``detect`` or ``all``; none means ``detect`` for a
    repository added by URL."""

    paths: list[str] | None = Field(default=None, max_length=100_000)
    changes: ChangeList | None = None
    detect: bool = False
    all: bool = False
    dry_run: bool = False
    delete_missing: bool = False
    force: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> SyncIn:
        chosen = [n for n, on in (("paths", self.paths is not None), ("changes", self.changes is not None),
                                  ("detect", self.detect), ("all", self.all)) if on]
        if len(chosen) > 1:
            raise ValueError(f"choose one change source, not {' and '.join(chosen)}")
        return self

    def source(self) -> str | None:
        """``paths``, ``detect``, ``all``, or None when none was chosen."""
        if self.paths is not None or self.changes is not None:
            return "paths"
        return "detect" if self.detect else "all" if self.all else None


class BodyLimit:
    """ASGI middleware: a request body larger than ``limit`` bytes gets ``413`` before the
    application reads it (by ``Content-Length``, or counted as a chunked body streams in)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(send, self.limit)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send, limit: int) -> None:
    body = json.dumps({"detail": f"request body larger than {limit} bytes (CODEINDEX_API_MAX_BODY_BYTES)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings) -> FastAPI:
    """The API application for ``settings`` (a fleet's: Redis broker and PostgreSQL state).

    Raises :class:`UsageError` when no API token is configured (every route but ``/healthz``
    would refuse every request) or a token entry is malformed.
    """
    tokens = parse_tokens(settings.api_tokens, settings.api_tokens_file)
    if not tokens:
        raise UsageError("no API tokens: set CODEINDEX_API_TOKENS or CODEINDEX_API_TOKENS_FILE "
                         "(`codeindex api token --scope write` makes one)")
    github_secret = _secret(settings.github_webhook_secret, settings.github_webhook_secret_file, "GITHUB_WEBHOOK_SECRET")
    gitlab_secret = _secret(settings.gitlab_webhook_token, settings.gitlab_webhook_token_file, "GITLAB_WEBHOOK_TOKEN")
    deliveries = DeliveryLog(runtime().redis, settings.webhook_dedup_seconds)
    repos = PushTargets(lambda: _url_repositories(), min_age=1.0)
    fleet_metrics = CollectorRegistry()
    from workers.metrics import FleetCollector  # lazy: Celery signals, only for a served API

    fleet_metrics.register(FleetCollector())

    app = FastAPI(title="codeindex", version="1", description=__doc__,
                  openapi_tags=[{"name": "repos"}, {"name": "runs"}, {"name": "search"}, {"name": "shards"},
                                {"name": "webhooks"}, {"name": "health"}])
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    _install_handlers(app)

    def need(scope: Scope):
        def check(authorization: Annotated[str | None, Header()] = None) -> TokenHash:
            token = authorization[7:].strip() if authorization and authorization[:7].lower() == "bearer " else None
            try:
                entry = authorize(tokens, token, scope)
            except PermissionError as exc:
                raise HTTPException(403, str(exc)) from None
            if entry is None:
                raise HTTPException(401, "a valid bearer token is needed (Authorization: Bearer ...)",
                                    headers={"WWW-Authenticate": 'Bearer realm="codeindex"'})
            return entry
        return Depends(check)

    read, write = need(Scope.READ), need(Scope.WRITE)

    @app.middleware("http")
    async def count(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        REQUESTS.labels(route=route, method=request.method, status=str(response.status_code)).inc()
        REQUEST_SECONDS.labels(route=route).observe(time.perf_counter() - started)
        return response

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        """The process lives (no token needed)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], dependencies=[read])
    def readyz() -> Response:
        """Redis, PostgreSQL, the vector store and object storage each answer within
        CODEINDEX_API_READY_TIMEOUT seconds: 200, else 503 naming what did not."""
        checks = _readiness(settings)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], dependencies=[read])
    def metrics() -> Response:
        """Prometheus metrics: this process's counters and the fleet's gauges."""
        return Response(generate_latest(REGISTRY) + generate_latest(fleet_metrics), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/repos", status_code=202, tags=["repos"], dependencies=[write])
    def add_repo(body: RepoIn, response: Response) -> dict:
        """Add a repository (a git URL the owner clones, or a work tree's path) and start its
        full index, as `codeindex repo add --no-wait`."""
        shard, request, result = _add(body, settings)
        _remember_run(settings, request.run_id, result.id, request.repo_id, shard, request.trigger)
        response.headers["Location"] = f"/v1/runs/{request.run_id}"
        return {"repo_id": request.repo_id, "shard_id": shard, "run_id": request.run_id, "task_id": result.id}

    @app.get("/v1/repos", tags=["repos"], dependencies=[read])
    def list_repos() -> list[dict]:
        """Every repository: source, owner shard, files, chunks, last indexed commit, freshness."""
        return _repo_rows(None)

    @app.get("/v1/repos/{repo_id}", tags=["repos"], dependencies=[read])
    def get_repo(repo_id: str) -> dict:
        """One repository: its owner, last indexed commit and freshness lag (seconds)."""
        rows = _repo_rows(repo_id)
        if not rows:
            raise HTTPException(404, f"no repository {repo_id!r}")
        return rows[0]

    @app.post("/v1/repos/{repo_id}/sync", status_code=202, tags=["repos"], dependencies=[write])
    def sync_repo(repo_id: str, body: SyncIn, response: Response) -> dict:
        """Sync a registered repository, taking what `codeindex sync` takes; answers with the
        run id and a Location to poll."""
        record = runtime().readonly_state().get_repo(repo_id)
        if record is None:
            raise HTTPException(404, f"no repository {repo_id!r}: add it with POST /v1/repos")
        requests = _sync_requests(record, body, settings)
        sent = []
        for request in requests:
            result = send_plan(request)
            _remember_run(settings, request.run_id, result.id, request.repo_id, "", request.trigger)
            sent.append({"run_id": request.run_id, "task_id": result.id, "repo_id": request.repo_id})
        response.headers["Location"] = f"/v1/runs/{sent[0]['run_id']}"
        return {**sent[0], "runs": sent} if len(sent) > 1 else sent[0]

    @app.get("/v1/runs/{run_id}", tags=["runs"], dependencies=[read])
    def get_run(run_id: str) -> dict:
        """A sync run: status (queued, running, succeeded, partial, failed, refused...), counts,
        and once finished each file's action."""
        return _run_doc(run_id)

    @app.get("/v1/search", tags=["search"], dependencies=[read])
    def search(q: Annotated[str, Query(min_length=1, max_length=4096)],
               k: Annotated[int, Query(ge=1, le=1000)] = 10, repo: str | None = None,
               path: Annotated[str | None, Query(max_length=1024, description="A path glob.")] = None,
               language: str | None = None, mode: SearchMode | None = None) -> list[dict]:
        """The top-k chunks for ``q``: the same results as `codeindex search --json` (the same
        function: path, line range, score, the retriever that found each, the mode)."""
        chosen = SearchMode(mode or settings.search_mode)
        hits = search_collection(runtime(), settings.collection, [q], k, chosen,
                                 SearchFilter(repo=repo, path=path, language=language),
                                 settings.search_lexical_weight, settings.search_name_weight)[0]
        return [{**h.as_dict(), "mode": chosen.value} for h in hits]

    @app.get("/v1/shards", tags=["shards"], dependencies=[read])
    def shards() -> list[dict]:
        """The shards: id, status, capacity, load, heartbeat lag, repositories."""
        registry = runtime().registry
        owners = registry.assignments()
        return [{"shard_id": s.shard_id, "name": s.name, "address": s.address, "status": s.status,
                 "capacity": s.capacity, "load": s.load, "heartbeat_lag": round(s.heartbeat_lag(), 1),
                 "repos": sorted(r for r, o in owners.items() if o == s.shard_id)} for s in registry.shards()]

    @app.post("/v1/shards/{shard_id}/drain", tags=["shards"], dependencies=[write])
    def drain(shard_id: str) -> dict:
        """Drain a shard, as `codeindex shards drain`: its repositories and queued messages move."""
        return _drain(shard_id)

    @app.post("/prepare-shutdown", tags=["shards"], dependencies=[write])
    def prepare_shutdown(shard_id: str | None = None) -> dict:
        """Seed 002's preStop hook: drain this pod's shard (``shard_id``, default the API
        process's CODEINDEX_SHARD_ID / SHARD_ID / POD_NAME) before the pod stops."""
        return _drain(shard_id or settings.shard_id)

    @app.post("/v1/webhooks/github", tags=["webhooks"])
    async def github(request: Request,
                     x_github_event: Annotated[str | None, Header()] = None,
                     x_github_delivery: Annotated[str | None, Header()] = None,
                     x_hub_signature_256: Annotated[str | None, Header()] = None) -> Response:
        """A GitHub webhook: ``ping`` answered, ``push`` of a registered repository's branch
        enqueues a sync on its owner; signed with X-Hub-Signature-256, de-duplicated by
        X-GitHub-Delivery."""
        body = await request.body()
        if github_secret is None:
            raise HTTPException(404, "GitHub webhooks are not configured (CODEINDEX_GITHUB_WEBHOOK_SECRET)")
        if not github_signature_valid(github_secret, body, x_hub_signature_256):
            DELIVERIES.labels(source="github", outcome="unauthorized").inc()
            raise HTTPException(401, "invalid or missing X-Hub-Signature-256")
        return await _delivery(request, "github", x_github_event, x_github_delivery, body, github_push)

    @app.post("/v1/webhooks/gitlab", tags=["webhooks"])
    async def gitlab(request: Request,
                     x_gitlab_event: Annotated[str | None, Header()] = None,
                     x_gitlab_token: Annotated[str | None, Header()] = None,
                     x_gitlab_event_uuid: Annotated[str | None, Header()] = None,
                     idempotency_key: Annotated[str | None, Header()] = None) -> Response:
        """A GitLab webhook: ``Push Hook`` of a registered repository's branch enqueues a sync;
        checked by X-Gitlab-Token, de-duplicated by Idempotency-Key (X-Gitlab-Event-UUID)."""
        body = await request.body()
        if gitlab_secret is None:
            raise HTTPException(404, "GitLab webhooks are not configured (CODEINDEX_GITLAB_WEBHOOK_TOKEN)")
        if not gitlab_token_valid(gitlab_secret, x_gitlab_token):
            DELIVERIES.labels(source="gitlab", outcome="unauthorized").inc()
            raise HTTPException(401, "invalid or missing X-Gitlab-Token")
        event = "push" if x_gitlab_event == "Push Hook" else (x_gitlab_event or "")
        return await _delivery(request, "gitlab", event, idempotency_key or x_gitlab_event_uuid, body, gitlab_push)

    async def _delivery(request: Request, source: str, event: str | None, delivery: str | None, body: bytes,
                        parse) -> Response:
        from starlette.concurrency import run_in_threadpool  # lazy: only webhooks hand work to threads

        if event == "ping":
            DELIVERIES.labels(source=source, outcome="ping").inc()
            return JSONResponse({"pong": True})
        if not delivery:
            DELIVERIES.labels(source=source, outcome="invalid").inc()
            raise HTTPException(400, "the delivery id header is missing")
        try:
            payload = json.loads(body)
            push = parse(payload) if event == "push" else None
        except (ValueError, AttributeError) as exc:
            DELIVERIES.labels(source=source, outcome="invalid").inc()
            raise HTTPException(422, f"malformed {source} payload: {exc}") from None
        if not await run_in_threadpool(deliveries.first_time, source, delivery):
            DELIVERIES.labels(source=source, outcome="duplicate").inc()
            return JSONResponse({"duplicate": True, "delivery": delivery})
        if push is None:
            DELIVERIES.labels(source=source, outcome="ignored").inc()
            return JSONResponse({"ignored": f"event {event!r} is not handled"})
        try:
            doc = await run_in_threadpool(_enqueue_push, push, source, delivery)
        except BaseException:
            deliveries.forget(source, delivery)  # nothing enqueued: a redelivery should try again
            raise
        DELIVERIES.labels(source=source, outcome="enqueued" if "run_id" in doc else "ignored").inc()
        return JSONResponse(doc, status_code=202 if "run_id" in doc else 200)

    def _enqueue_push(push: Push, source: str, delivery: str) -> dict:
        record = repos.for_push(push)
        if record is None:
            return {"ignored": "no registered repository follows this branch"}
        request = url_request(record, settings.collection, "detect", SyncOptions(trigger=f"webhook:{source}"))
        result = send_plan(request)
        _remember_run(settings, request.run_id, result.id, request.repo_id, "", request.trigger)
        log.info("push %s of %s (delivery %s) -> run %s", push.after[:12], record.repo_id, delivery, request.run_id)
        return {"run_id": request.run_id, "repo_id": record.repo_id, "task_id": result.id}

    return app


def _install_handlers(app: FastAPI) -> None:
    """Errors become JSON answers: bad input 422, refusals 409, dependencies 503."""

    @app.exception_handler(UsageError)
    async def usage(_: Request, exc: UsageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RefusedError)
    async def refused(_: Request, exc: RefusedError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(CodeindexError)
    async def dependency(_: Request, exc: CodeindexError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": message, "errors": errors}, status_code=422)


def _secret(value, file, name: str) -> bytes | None:
    """A webhook secret from its setting or its file (stripped), as bytes; None when neither."""
    if value is not None and file is not None:
        raise UsageError(f"set CODEINDEX_{name} or CODEINDEX_{name}_FILE, not both")
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip().encode("utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read CODEINDEX_{name}_FILE {file}: {exc.strerror}") from None
    return value.get_secret_value().encode("utf-8") if value is not None else None


def _add(body: RepoIn, settings: Settings):
    from pathlib import Path  # lazy: only adding by path needs it

    from indexing.git_source import checked_source, repo_name_of  # lazy: GitPython, only adding by URL

    if body.url is not None:
        url, branch = checked_source(body.url, body.branch)
        rid = body.name or repo_name_of(url)
        if branch is None:
            branch = runtime().mirror(rid, url, "HEAD").default_branch()
        return add_repository(rid, settings.collection, url=url, branch=branch, trigger="api")
    root = Path(body.path).resolve()
    if not root.is_dir():
        raise UsageError(f"repository {body.path!r} is not a directory")
    return add_repository(body.name or root.name, settings.collection, root=str(root), trigger="api")


def _sync_requests(record: RepoRecord, body: SyncIn, settings: Settings):
    options = SyncOptions(delete_missing=body.delete_missing, dry_run=body.dry_run, force=body.force, trigger="api")
    listed = list(parse_lines(body.paths)) if body.paths is not None else []
    source = body.source()
    if record.url:
        return [url_request(record, settings.collection, source or "detect", options, listed=listed,
                            json_list=body.changes is not None)]
    if source is None:
        raise UsageError("nothing to sync: give `paths`, `changes`, `detect` or `all`")
    from pathlib import Path  # lazy: only work trees need it

    requests = work_tree_requests(Path(record.root), record.repo_id, settings.collection, source, options,
                                  listed=listed, document=body.changes, allowed=settings.allowed_roots)
    if any(os.path.realpath(r.root) != os.path.realpath(record.root) for r in requests):
        raise UsageError(f"the change list names repositories other than {record.repo_id!r} ({record.root})")
    return requests


def _remember_run(settings: Settings, run_id: str, task_id: str, repo_id: str, shard_id: str, trigger: str) -> None:
    """Keep a sent run's task id in Redis until its worker records the run (``queued`` till then)."""
    client = runtime().redis
    if client is None:
        return
    doc = {"task_id": task_id, "repo_id": repo_id, "shard_id": shard_id, "trigger": trigger,
           "enqueued_at": datetime.now(timezone.utc).isoformat()}
    client.set(_RUN_KEY.format(run_id), json.dumps(doc), ex=settings.result_expires)


def _run_doc(run_id: str) -> dict:
    rt = runtime()
    run = rt.readonly_state().get_run(run_id)
    queued = rt.redis.get(_RUN_KEY.format(run_id)) if rt.redis is not None else None
    if run is None and queued is None:
        raise HTTPException(404, f"no run {run_id!r}")
    sent = json.loads(queued) if queued else {}
    if run is None:
        return {"run_id": run_id, "repo_id": sent["repo_id"], "status": "queued", "trigger": sent["trigger"],
                "task_id": sent["task_id"], "enqueued_at": sent["enqueued_at"]}
    doc: dict[str, Any] = {"run_id": run.id, "repo_id": run.repo_id, "status": str(run.status), "trigger": run.trigger,
                           "task_id": run.task_id or sent.get("task_id", ""), "shard_id": run.shard_id,
                           "started_at": run.started_at, "finished_at": run.finished_at, "message": run.message,
                           "files_total": run.files_total, "files_done": run.files_done,
                           "counts": {k: getattr(run, k) for k in ("added", "updated", "deleted", "unchanged",
                                                                     "skipped", "errors", "bytes")}}
    if run.status not in (RunStatus.RUNNING,) and doc["task_id"]:
        from workers.app import app as celery_app  # lazy: the result backend, only for finished runs

        result = celery_app.AsyncResult(doc["task_id"])
        if result.successful() and isinstance(result.result, dict):
            doc["commit"] = result.result.get("commit", "")
            doc["files"] = [{"path": f["path"], "action": f["action"], "reason": f.get("reason", "")}
                            for f in result.result.get("files", [])]
    return doc


def _repo_rows(repo_id: str | None) -> list[dict]:
    rt = runtime()
    owners = rt.registry.assignments()
    return [{"repo_id": r.repo_id, "url": r.url, "branch": r.branch, "root": r.root or None,
             "shard_id": owners.get(r.repo_id), "files": r.files, "chunks": r.chunks, "bytes": r.bytes,
             "last_commit": r.last_commit, "indexed_at": r.indexed_at, "freshness_seconds": seconds_since(r.indexed_at)}
            for r in rt.readonly_state().repo_stats() if repo_id is None or r.repo_id == repo_id]


def _url_repositories() -> list[RepoRecord]:
    state = runtime().readonly_state()
    return [r for r in (state.get_repo(s.repo_id) for s in state.repo_stats() if s.url) if r]


def _drain(shard_id: str) -> dict:
    from workers.handover import hand_over  # lazy: only a drain moves repositories
    from workers.registry import ShardStatus  # lazy: likewise

    done = hand_over(runtime(), shard_id, status=ShardStatus.DRAINING)
    return {"shard_id": shard_id, "status": ShardStatus.DRAINING.value,
            "moved": {m.repo_id: m.shard_id for m in done.moved}, "messages_moved": done.messages}


def _readiness(settings: Settings) -> dict[str, str]:
    """Each dependency's answer: ``ok``, or what went wrong (a timeout included)."""
    rt = runtime()
    checks = {
        "redis": lambda: rt.redis.ping(),
        "postgresql": lambda: rt.postgres(readonly=True).read("SELECT 1"),
        "vector_store": lambda: rt.vector_store(settings.collection).count(),
    }
    if settings.object_store_uri:
        checks["object_storage"] = lambda: rt.object_store.head("codeindex-readyz")
    out = {}
    # Not a `with` block: its exit would wait for a check that hangs, which is what the timeout is for.
    pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="readyz")
    futures = {name: pool.submit(check) for name, check in checks.items()}
    deadline = time.monotonic() + settings.api_ready_timeout
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
            out[name] = "ok"
        except FutureTimeout:
            out[name] = f"no answer within {settings.api_ready_timeout} s"
        except Exception as exc:  # noqa: BLE001 - reported, not raised: this is the check
            out[name] = f"{type(exc).__name__}: {exc}"[:300]
    pool.shutdown(wait=False, cancel_futures=True)
    return out
