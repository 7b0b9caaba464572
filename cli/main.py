"""The ``codeindex`` command: sync, search, status, export, runs, failures.

Exit codes: 0 all went in; 1 some files failed (reported); 2 usage error or malformed
input; 3 refused to protect the index (mass delete without --force, another model);
4 a dependency failed (store, state, lock, broker, disk); 5 an unexpected error (a bug);
130 interrupted.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli import api, artifact, backup, cleanup, fleet, serve
from cli.common import CollectionOpt, JsonOut, OutputFormat, RootOpt, interruptible, print_json, setup
from indexing.errors import CodeindexError, UsageError

app = typer.Typer(
    help="Keep a semantic (vector) index of git repositories in step with their code.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    epilog="Exit codes: 0 all went in; 1 some files failed (reported); 2 usage error or malformed "
           "input; 3 refused to protect the index (mass delete without --force, another model); "
           "4 a dependency failed (store, state, lock, broker, disk); 5 an unexpected error (a bug); "
           "130 interrupted. Settings: CODEINDEX_* environment variables (see README); "
           "CODEINDEX_DEBUG=1 shows tracebacks.",
)

def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # lazy: only --version reads the metadata

        sys.stdout.write(f"codeindex {version('codeindex')}\n")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Keep a semantic (vector) index of git repositories in step with their code."""


def _read_input(changes: Path | None) -> str:
    if changes is not None:
        try:
            return changes.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise UsageError(f"cannot read change list {changes}: {exc.strerror}") from None
    return sys.stdin.buffer.read().decode("utf-8", errors="surrogateescape")


def _source(*, stdin: bool, changes: Path | None, detect: bool, scan_all: bool, default: Callable[[], str]) -> str:
    """The change source the options choose: ``detect``, ``all`` or ``paths`` (``--stdin`` and
    ``--changes`` both list paths); ``default()`` when none is chosen. Raises UsageError for two."""
    chosen = [name for name, on in (("--stdin", stdin), ("--changes", changes is not None),
                                    ("--detect-changes", detect), ("--all", scan_all)) if on]
    if len(chosen) > 1 and set(chosen) != {"--stdin", "--changes"}:
        raise UsageError(f"choose one change source, not {' and '.join(chosen)}")
    if detect:
        return "detect"
    if scan_all:
        return "all"
    return "paths" if chosen else default()


def _piped_paths() -> str:
    """A work tree's default change source: the paths piped into standard input."""
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("nothing to sync: pipe paths into --stdin, or pass --changes FILE, --detect-changes or --all")
    return "paths"


def _listed(changes: Path | None, null: bool) -> list:
    """The changes listed in ``changes`` (or standard input): NUL-separated with ``null``, else lines."""
    from indexing.changes import parse_lines, parse_nul  # lazy: see cli.common

    text = _read_input(changes)
    return list(parse_nul(text) if null else parse_lines(text.split("\n")))


def _requests(root: Path, repo_id: str | None, collection: str, *, stdin: bool, null: bool, json_in: bool,
              changes: Path | None, detect: bool, scan_all: bool, options, allowed: list[Path]):
    """Build the sync requests of a work tree for the chosen change source (one per repository)."""
    from indexing.changes import parse_json_changes  # lazy: see cli.common
    from indexing.requests import work_tree_requests  # lazy: likewise

    source = _source(stdin=stdin, changes=changes, detect=detect, scan_all=scan_all, default=_piped_paths)
    if source == "paths" and json_in:
        document = parse_json_changes(_read_input(changes))
        return work_tree_requests(root, repo_id, collection, source, options, document=document, allowed=allowed)
    listed = _listed(changes, null) if source == "paths" else []
    return work_tree_requests(root, repo_id, collection, source, options, listed=listed, allowed=allowed)


def _url_request(record, collection: str, *, stdin: bool, null: bool, json_in: bool, changes: Path | None,
                 detect: bool, scan_all: bool, options):
    """The sync request of a repository added by URL: ``--all`` a full index at the branch head;
    ``--stdin``/``--changes`` the paths listed, read at the head; otherwise (the default, and
    ``--detect-changes``) what changed from the last indexed commit to the fetched head."""
    from indexing.requests import url_request  # lazy: see cli.common

    if json_in:
        return url_request(record, collection, "paths", options, json_list=True)  # refused
    source = _source(stdin=stdin, changes=changes, detect=detect, scan_all=scan_all, default=lambda: "detect")
    listed = _listed(changes, null) if source == "paths" else []
    return url_request(record, collection, source, options, listed=listed)


def _send(request):
    """Send ``request``'s plan task to its owner (:func:`tasks.sync.send_plan`); its AsyncResult."""
    from tasks.sync import send_plan  # lazy: see cli.common

    return send_plan(request)


def _dispatch(request, show_progress: bool) -> dict:
    """Send the plan task and wait for the sync's summary, drawing progress when asked."""
    from workers.runtime import runtime  # lazy: see cli.common

    if not show_progress or request.dry_run:
        return _send(request).get(disable_sync_subtasks=False)
    box: dict = {}

    def work() -> None:
        try:
            box["result"] = _send(request).get(disable_sync_subtasks=False)
        except BaseException as exc:  # re-raised in the main thread
            box["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    from rich.console import Console  # lazy: only a terminal draws progress
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # lazy: likewise

    state = runtime().readonly_state()
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as progress:
        bar = progress.add_task(f"indexing {request.repo_id}", total=None)
        while True:
            thread.join(0.2)
            finished = not thread.is_alive()
            try:
                run = state.get_run(request.run_id)
            except CodeindexError:
                run = None
            if run and run.files_total:
                progress.update(bar, total=run.files_total, completed=run.files_done)
            if finished:  # the last update after the sync ended, so the bar shows where it got to
                break
    if "error" in box:
        raise box["error"]
    return box["result"]


def _enqueue(requests, fmt: OutputFormat) -> None:
    """Send the plan tasks without waiting; print each run id (``--no-wait``)."""
    sent = []
    for request in requests:
        result = _send(request)
        sent.append({"run_id": request.run_id, "task_id": result.id, "repo_id": request.repo_id})
    if fmt is OutputFormat.JSON:
        return print_json(sent[0] if len(sent) == 1 else {"runs": sent})
    for entry in sent:
        sys.stdout.write(f"{entry['run_id']}\n")


@app.command()
def sync(
    stdin: Annotated[bool, typer.Option("--stdin", help="Read paths (or git --name-status lines) from standard input; the default when input is piped.")] = False,
    null: Annotated[bool, typer.Option("-0", "--null", help="Input paths are NUL-separated (git diff -z, find -print0).")] = False,
    json_mode: Annotated[bool, typer.Option("--json", help="The change list is the sync spec's JSON ({\"repositories\": [...]}); print the result as one JSON document.")] = False,
    changes: Annotated[Optional[Path], typer.Option("--changes", help="Read the change list from this file instead of standard input.", dir_okay=False)] = None,
    detect_changes: Annotated[bool, typer.Option("--detect-changes", help="Ask git what changed since the last indexed commit (a full scan the first time).")] = False,
    scan_all: Annotated[bool, typer.Option("--all", help="Scan the whole repository.")] = False,
    delete_missing: Annotated[bool, typer.Option("--delete-missing", help="Also remove indexed files that no longer exist on disk.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; write nothing anywhere.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Allow a sync that deletes more than the guard's share (20%) of a repository.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also list unchanged files, and chunk reuse.")] = False,
    output: Annotated[Optional[OutputFormat], typer.Option("--format", help="Output: text or json (default text; json with --json).")] = None,
    repo: Annotated[Optional[str], typer.Option("--repo", help="Repository id in the index (default: the root directory's name). In a fleet, a registered repository is found at its registered root; a repository added by URL is fetched by its owner, and synced from its last indexed commit to the branch head unless --all or --stdin says otherwise.")] = None,
    daemon: Annotated[bool, typer.Option("--daemon", help="Sync through `codeindex serve`, starting it detached for this index home when none runs (it exits after CODEINDEX_SERVE_IDLE_TIMEOUT, 15 minutes); in-process when it cannot start. CODEINDEX_DAEMON=1 makes it the default.")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Enqueue and print the run id instead of waiting for the summary (a fleet).")] = False,
    root: RootOpt = None,
    collection: CollectionOpt = None,
) -> None:
    """Sync the index with the repository: index added and changed files, drop deleted ones.

    Paths are relative to the repository root (as git prints them) or absolute inside it.
    Plain `git diff --name-only` lists only the new path of a rename; pipe
    `git diff --name-status` (or use --detect-changes) to have renames and deletions exact.
    """
    from cli.output import render_summary  # lazy: see cli.common
    from indexing.messages import SyncSummary  # lazy: likewise
    from indexing.sync import abandon_dead_runs  # lazy: likewise

    fmt = output or (OutputFormat.JSON if json_mode else OutputFormat.TEXT)
    repo_root, settings = setup(root, collection, verbose, repo)
    from workers.runtime import runtime  # lazy: after setup, which checks the settings first

    from indexing.requests import SyncOptions  # lazy: likewise

    options = SyncOptions(delete_missing=delete_missing, dry_run=dry_run, force=force)
    record = runtime().readonly_state().get_repo(repo) if repo and root is None else None
    if record is not None and record.url:
        requests = [_url_request(record, settings.collection, stdin=stdin, null=null, json_in=json_mode,
                                 changes=changes, detect=detect_changes, scan_all=scan_all, options=options)]
    else:
        requests = _requests(repo_root, repo, settings.collection, stdin=stdin, null=null, json_in=json_mode,
                             changes=changes, detect=detect_changes, scan_all=scan_all, options=options,
                             allowed=settings.allowed_roots)
    if settings.eager and not dry_run:
        abandon_dead_runs(runtime().state)  # an earlier sync killed or interrupted here
    if no_wait:
        return _enqueue(requests, fmt)
    show_progress = fmt is OutputFormat.TEXT and sys.stdout.isatty()
    summaries = []
    if fmt is OutputFormat.TEXT:
        sys.stdout.write(f"Syncing to collection: {settings.collection}\n")
    for request in requests:
        started = time.monotonic()
        with interruptible():
            summary = SyncSummary.model_validate(_dispatch(request, show_progress))
        wall = time.monotonic() - started
        summary.seconds = round(wall, 3)
        summaries.append(summary)
        if fmt is OutputFormat.TEXT:
            if len(requests) > 1:
                sys.stdout.write(f"\nRepository {request.repo_id} ({request.url or request.root})\n")
            render_summary(summary, sys.stdout, verbose, wall)
    if fmt is OutputFormat.JSON:
        docs = [s.model_dump(mode="json") for s in summaries]
        print_json(docs[0] if len(docs) == 1 else {"repositories": docs})
    if any(s.errors for s in summaries):
        raise typer.Exit(1)


class Mode(StrEnum):
    """What ``--mode`` accepts (indexing.search.SearchMode)."""

    VECTOR = "vector"
    LEXICAL = "lexical"
    HYBRID = "hybrid"


def _read_queries(source: Path) -> list[str]:
    """The queries of ``--queries``: one per non-blank line of the file, or of standard input for ``-``."""
    try:
        text = sys.stdin.read() if str(source) == "-" else source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read queries from {source}: {exc}") from None
    queries = [line.strip() for line in text.splitlines() if line.strip()]
    if not queries:
        raise UsageError(f"no query in {source}")
    return queries


@app.command()
def search(
    query: Annotated[Optional[str], typer.Argument(help="What to look for, in natural language or code.")] = None,
    k: Annotated[int, typer.Option("-k", "--top", min=1, max=1000, help="How many chunks to return.")] = 10,
    mode: Annotated[Optional[Mode], typer.Option(
        "--mode", help="vector, lexical (BM25 over code-aware terms) or hybrid (both, fused); "
                       "default CODEINDEX_SEARCH_MODE (vector; hybrid finds identifiers first).")] = None,
    repo: Annotated[Optional[str], typer.Option("--repo", help="Only this repository id.")] = None,
    path: Annotated[Optional[str], typer.Option(
        "--path", help="Only paths matching this glob (* and ** match any characters, ? one; "
                       "a directory matches what is beneath it).")] = None,
    language: Annotated[Optional[str], typer.Option("--language", help="Only this language (python, go, ...).")] = None,
    queries_file: Annotated[Optional[Path], typer.Option(
        "--queries", help="Answer every query of FILE (one a line; - for standard input), embedded in one "
                          "batch; prints one JSON line per query.", allow_dash=True, dir_okay=False)] = None,
    json_out: JsonOut = False,
    root: RootOpt = None,
    collection: CollectionOpt = None,
) -> None:
    """Print the top-k chunks for QUERY, with path, line range, score and the retriever that found them.

    The query is embedded with the model the collection was built with.
    """
    if (query is None) == (queries_file is None):
        raise UsageError("give one QUERY or --queries FILE")
    _, settings = setup(root, collection)
    from indexing.search import SearchMode, search_collection  # lazy: the domain, after setup
    from indexing.store import SearchFilter  # lazy: likewise
    from workers.runtime import runtime  # lazy: after setup, which checks the settings first

    queries = [query] if query is not None else _read_queries(queries_file)
    chosen = SearchMode(mode or settings.search_mode)
    filters = SearchFilter(repo=repo, path=path, language=language)
    answers = search_collection(runtime(), settings.collection, queries, k, chosen, filters,
                                settings.search_lexical_weight, settings.search_name_weight)
    if queries_file is not None:
        for text, hits in zip(queries, answers):
            doc = {"query": text, "mode": chosen.value, "results": [h.as_dict() for h in hits]}
            sys.stdout.write(json.dumps(doc) + "\n")
        return
    hits = answers[0]
    if json_out:
        return print_json([{**h.as_dict(), "mode": chosen.value} for h in hits])
    for rank, ranked in enumerate(hits, 1):
        hit = ranked.hit
        sys.stdout.write(f"{rank:>2}. {hit.path}:{hit.start_line}-{hit.end_line}  score={ranked.score:.3f}  "
                         f"repo={hit.repo}  via={ranked.retriever}\n")
        for line in hit.content.splitlines()[:3]:
            sys.stdout.write(f"      {line[:120]}\n")


@app.command()
def status(json_out: JsonOut = False, root: RootOpt = None, collection: CollectionOpt = None) -> None:
    """Show the indexed repositories: files, chunks, last indexed commit, model."""
    _, settings = setup(root, collection)
    from workers.runtime import runtime  # lazy: after setup, which checks the settings first

    rt = runtime()
    state = rt.readonly_state()
    meta = state.collection_meta(settings.collection)
    repos = state.repo_stats()
    doc = {
        "home": str(settings.home), "collection": settings.collection,
        "embedding_model": meta.embedding_model if meta else None, "dimension": meta.dimension if meta else None,
        "objects": rt.vector_store(settings.collection).count() if meta else 0,
        "repositories": [asdict(r) for r in repos],
    }
    if json_out:
        return print_json(doc)
    from rich.console import Console  # lazy: likewise
    from rich.table import Table  # lazy: likewise

    console = Console()
    console.print(f"Index: {doc['home']}  collection: {doc['collection']}  "
                  f"model: {doc['embedding_model'] or '-'}  objects: {doc['objects']}")
    table = Table("repo", "files", "chunks", "size", "last commit", "root")
    for r in repos:
        table.add_row(r.repo_id, str(r.files), str(r.chunks), f"{r.bytes / 1024:.1f}kb",
                      (r.last_commit or "-")[:12], r.root)
    console.print(table)


@app.command()
def export(
    vectors: Annotated[bool, typer.Option("--vectors", help="Include each object's vector.")] = False,
    root: RootOpt = None,
    collection: CollectionOpt = None,
) -> None:
    """Stream every object of the index as JSON lines, sorted by id."""
    _, settings = setup(root, collection)
    from workers.runtime import runtime  # lazy: after setup, which checks the settings first

    store = runtime().vector_store(settings.collection)
    write = sys.stdout.write
    for obj in store.export(with_vectors=vectors):
        write(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")


@app.command()
def runs(limit: Annotated[int, typer.Option("--limit", min=1)] = 20, json_out: JsonOut = False,
         root: RootOpt = None) -> None:
    """List the latest sync runs with their counts and status."""
    setup(root, None)
    from workers.runtime import runtime  # lazy: after setup, which checks the settings first

    records = runtime().readonly_state().list_runs(limit)
    if json_out:
        return print_json([asdict(r) for r in records])
    for r in records:
        sys.stdout.write(f"{r.id}  {r.repo_id}  {r.status:<9}  +{r.added} ~{r.updated} -{r.deleted} "
                         f"={r.unchanged} skip {r.skipped} err {r.errors}  {r.started_at}"
                         f"{'  shard ' + r.shard_id if r.shard_id else ''}\n")


@app.command()
def verify(
    repair: Annotated[bool, typer.Option("--repair", help="Index again what is missing, extra, corrupt or without name vectors (an index from before them; embeddings come from the cache), the store rebuilt when it cannot be read; then check again.")] = False,
    repo: Annotated[Optional[str], typer.Option("--repo", help="Only this repository id.")] = None,
    json_out: JsonOut = False,
    root: RootOpt = None,
    collection: CollectionOpt = None,
) -> None:
    """Check that the vector store holds exactly what the state records: every object of every
    indexed file present, nothing extra, each object's content matching its hash and its name
    vector computed (an index built before name vectors lacks them until --repair).

    Exit 0 when the index is exact (after --repair: when the repair made it so), 1 when it is
    not, 4 when the state cannot be read.
    """
    from indexing.verify import repair_requests, verify_index  # lazy: see cli.common

    _, settings = setup(root, collection)
    from workers.runtime import runtime  # lazy: after setup, which checks the settings first

    rt = runtime()
    repos = {r.repo_id: r for r in rt.readonly_state().repo_stats()
             if r.collection == settings.collection and (repo is None or r.repo_id == repo)}
    if repo is not None and repo not in repos:
        raise UsageError(f"repository {repo!r} is not in collection {settings.collection!r}")
    store = rt.vector_store(settings.collection)
    report = verify_index(rt.readonly_state(), store, settings.collection, sorted(repos))
    repaired = []
    if repair and not report.ok:
        if not report.readable:
            store.drop()  # its data is lost: every repository of the collection is indexed again
        for check in report.repos:
            if check.orphan_ids:
                with rt.repo_lock(check.repo_id):
                    fence = rt.state.grant_fence(check.repo_id, repos[check.repo_id].root, settings.collection)
                    store.delete(check.orphan_ids, fence)
        for request in repair_requests(report, repos):
            with interruptible():
                repaired.append(_send(request).get(disable_sync_subtasks=False))
        report = verify_index(rt.readonly_state(), store, settings.collection, sorted(repos))
    if json_out:
        print_json({"collection": report.collection, "ok": report.ok, "readable": report.readable,
                    "error": report.error, "repaired_runs": [r["run_id"] for r in repaired],
                    "repositories": [{"repo_id": c.repo_id, "ok": c.ok, "files": c.files, "expected": c.expected,
                                      "stored": c.stored, "missing": c.missing, "extra": c.extra,
                                      "corrupt": c.corrupt, "unnamed": c.unnamed} for c in report.repos]})
    else:
        _render_verify(report, repaired)
    if not report.ok:
        raise typer.Exit(1)


def _render_verify(report, repaired: list[dict]) -> None:
    if not report.readable:
        sys.stdout.write(f"collection {report.collection}: the store cannot be read: {report.error}\n"
                         "run `codeindex verify --repair` to index every repository again\n")
        return
    for check in report.repos:
        verdict = "exact" if check.ok else "NOT exact"
        sys.stdout.write(f"{check.repo_id}: {verdict}: {check.files} files, {check.expected} objects recorded, "
                         f"{check.stored} stored\n")
        for label, problems in (("missing", check.missing), ("extra", check.extra), ("corrupt", check.corrupt),
                                ("no name vector", check.unnamed)):
            for path, indexes in sorted(problems.items()):
                sys.stdout.write(f"  [{label.upper()}] {path}: chunks {', '.join(map(str, indexes))}\n")
    if repaired:
        sys.stdout.write(f"repaired in {len(repaired)} sync run(s): {', '.join(r['run_id'] for r in repaired)}\n")
    if not report.ok and not repaired:
        sys.stdout.write("run `codeindex verify --repair` to index again what is missing, extra, corrupt or "
                         "without name vectors\n")


def main() -> None:
    """Entry point: run the command; every failure becomes one ``error:`` line on standard error
    and its exit code (README, "Exit codes"), the traceback only with ``--verbose`` or
    CODEINDEX_DEBUG=1.

    Click (standalone mode) prints usage errors itself and exits with 2. An interrupted sync
    (SIGINT) exits 130 and leaves its run marked abandoned (:func:`cli.common.interruptible`);
    its work is redone by the next sync.
    """
    from celery.exceptions import ChordError  # lazy: see cli.common
    from kombu.exceptions import OperationalError  # lazy: likewise

    try:
        app()
    except CodeindexError as exc:
        _fail(str(exc), exc.exit_code)
    except ChordError as exc:
        # A header task of the embedding chord exhausted its retries: the run is marked failed,
        # its failure recorded, the state left as it was (`codeindex failures`, then replay or sync again).
        _fail(f"the sync failed: {exc}; the index state is unchanged: see `codeindex failures`, then sync again", 4)
    except OperationalError as exc:
        _fail(f"the broker is unreachable: {exc}", 4)
    except OSError as exc:  # the disk or a socket outside any store's own handling
        _fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", 4)
    except Exception as exc:
        _fail(f"unexpected {type(exc).__name__}: {exc} (a bug: run again with CODEINDEX_DEBUG=1 for the "
              "traceback, and report it)", 5)


def _fail(message: str, code: int) -> None:
    """Print ``error: message`` (and the traceback when asked for), exit with ``code``."""
    from cli.common import verbose_errors  # lazy: see cli.common

    if verbose_errors():
        traceback.print_exc()
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


fleet.register(app)
api.register(app)
backup.register(app)
cleanup.register(app)
artifact.register(app)
serve.register(app, main)

if __name__ == "__main__":
    main()
