"""``codeindex backup``, ``backups`` and ``restore``: the cold storage of repositories added by URL.

Each sends its task to the repository's owner (where the clone is) and waits for the answer;
in the embedded mode the task runs in this process. Exit codes as the other commands: 2 for a
repository that is unknown or added by path, 4 when git or object storage failed.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from cli.common import JsonOut, interruptible, print_json, setup
from indexing.errors import UsageError

#: Seconds the CLI waits for one backup or restore task (a large clone's bundle takes minutes).
WAIT_SECONDS = 3600


def _url_repositories() -> list[str]:
    from workers.runtime import runtime  # lazy: after setup, which checks the settings first

    return sorted(s.repo_id for s in runtime().readonly_state().repo_stats() if s.url)


def backup(
    repo: Annotated[Optional[str], typer.Option("--repo", help="The repository id (added by URL).")] = None,
    all_repos: Annotated[bool, typer.Option("--all", help="Every repository added by URL, each on its owner.")] = False,
    incremental: Annotated[bool, typer.Option("--incremental", help="Bundle only what came after the last bundle "
                                                                    "(--all ^<its head>) when a full one exists.")] = False,
    json_out: JsonOut = False,
) -> None:
    """Back up the owner's clone as a git bundle in object storage: prints the bundle's URI,
    head, size and SHA-256 (an unchanged clone keeps its last bundle; an empty one is reported)."""
    if bool(repo) == all_repos:
        raise UsageError("give --repo ID or --all")
    setup(None, None)
    from tasks.backup import send_backup  # lazy: after setup, which checks the settings first
    from workers.runtime import runtime  # lazy: likewise

    repo_ids = _url_repositories() if all_repos else [repo]
    sent = [(rid, send_backup(rid, incremental=incremental)) for rid in repo_ids]
    where = (runtime().object_store.describe() if runtime().object_store else "").rstrip("/")
    results = []
    with interruptible():
        for rid, async_result in sent:
            results.append(async_result.get(timeout=WAIT_SECONDS, disable_sync_subtasks=False))
    if json_out:
        return print_json(results[0] if repo else {"repositories": results})
    for result in results:
        bundle = result["bundle"]
        line = f"{result['repo_id']}: {result['outcome']}"
        if bundle and result["outcome"] == "created":
            line += (f": {where}/{bundle['key']}  head {bundle['head'][:12]}  {bundle['size']} bytes  "
                     f"sha256 {bundle['sha256']}")
        else:
            line += f" ({result['message']})"
        sys.stdout.write(line + "\n")
    return None


def backups(
    repo: Annotated[str, typer.Option("--repo", help="The repository id.")],
    json_out: JsonOut = False,
) -> None:
    """List the bundles kept for a repository (uri, head, size, sha256, created, verified) and
    the restores made from them."""
    setup(None, None)
    from workers.backups import describe_backups  # lazy: after setup, which checks the settings first
    from workers.runtime import runtime  # lazy: likewise

    doc = describe_backups(runtime(), repo)
    if json_out:
        return print_json(doc)
    if not doc["bundles"]:
        sys.stdout.write(f"{repo}: no bundle in {doc['store']}\n")
    for b in doc["bundles"]:
        kind = f"incremental on {b['base'][:12]}" if b["base"] else "full"
        sys.stdout.write(f"{b['uri']}  head {b['head'][:12]}  {b['size']} bytes  sha256 {b['sha256'][:16]}...  "
                         f"{b['created']}  {'verified' if b['verified'] else 'unverified'}  {kind}\n")
    for r in doc["restores"]:
        refused = f", refused {len(r['refused'])}" if r["refused"] else ""
        sys.stdout.write(f"restored {r['at']} on shard {r['shard_id'] or '-'} from "
                         f"{r['bundle'] or 'nothing (cloned)'}{refused} ({r['reason']})\n")
    return None


def restore(
    repo: Annotated[str, typer.Option("--repo", help="The repository id (added by URL).")],
    bundle: Annotated[Optional[str], typer.Option("--bundle", help="The bundle to restore (its URI, key or file "
                                                                   "name; default: the newest that passes).")] = None,
    json_out: JsonOut = False,
) -> None:
    """Restore the owner's clone from the newest bundle that passes its checksum and trial clone
    (or from --bundle); a bundle that fails is skipped for the one before. Exit 4 when none passes."""
    setup(None, None)
    from tasks.backup import send_restore  # lazy: after setup, which checks the settings first

    with interruptible():
        result = send_restore(repo, bundle=bundle).get(timeout=WAIT_SECONDS, disable_sync_subtasks=False)
    if json_out:
        print_json(result)
    else:
        for refused in result["refused"]:
            sys.stdout.write(f"refused {refused['bundle']}: {refused['reason']}\n")
        sys.stdout.write(f"{repo}: restored from {result['bundle']} (head {result['head'][:12]}, {result['seconds']} s)\n"
                         if result["bundle"] else f"{repo}: no bundle passed; the clone is unchanged\n")
    if result["bundle"] is None:
        raise typer.Exit(4)


def register(app: typer.Typer) -> None:
    """Add ``backup``, ``backups`` and ``restore`` to the ``codeindex`` app."""
    app.command()(backup)
    app.command()(backups)
    app.command()(restore)
