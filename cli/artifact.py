"""``codeindex artifact``: push, list, pull, sync, promote and verify index artifacts (seed 000).

A new developer pulls instead of re-indexing (``artifact pull --latest`` then ``sync
--detect-changes``); a developer pushes after committing; CI verifies a provided artifact
without rebuilding and promotes it on a merge (ops/github/index-artifacts.yml). Push and pull
run as tasks on the repository's owner; in the embedded mode, in this process.

Exit codes: 0 done; 2 a usage error, or an artifact that cannot be used (checksum, unsafe
member, malformed, too large, none found); 3 refused to protect the index (another model,
dimension, schema or chunker; a local index ahead of the artifact without --force); 4 a
dependency failed (object storage, the stores).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.common import JsonOut, RootOpt, interruptible, print_json, setup
from config.local import LocalServer
from indexing.errors import UsageError

artifact_app = typer.Typer(
    help="Index artifacts: pack this repository's index for others to install instead of re-indexing "
         "(push, list, pull, sync, promote, verify). CODEINDEX_ARTIFACT_URI says where they are kept.",
    no_args_is_help=True)

#: Seconds the CLI waits for a push or pull task (a large index takes minutes).
WAIT_SECONDS = 3600
RepoOpt = Annotated[Optional[str], typer.Option("--repo", help="The repository id (default: the root's "
                                                                "directory name, as sync names it).")]
BranchOpt = Annotated[Optional[str], typer.Option("--branch", help="The branch (default: the work tree's "
                                                                    "current branch).")]


def _current_branch(root: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), "symbolic-ref", "--short", "-q", "HEAD"],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _context(root: Path | None, repo: str | None, branch: str | None) -> tuple[Path, str, str | None]:
    """Set up; the repository root, its id and its branch."""
    repo_root, _ = setup(root, None, repo=repo)
    return repo_root, repo or repo_root.name, branch or _current_branch(repo_root)


def _run(task, job: dict) -> dict:
    from tasks.artifact import send  # lazy: after setup, which checks the settings first

    with interruptible():
        return send(task, job).get(timeout=WAIT_SECONDS, disable_sync_subtasks=False)


def _refuse_while_served(home: Path) -> None:
    """UsageError while ``codeindex serve`` holds this home's stores open (it holds the lock)."""
    lock = LocalServer(home).lock
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(f"codeindex serve runs for {home}: stop it (codeindex serve --stop), then pull") from None
    finally:
        os.close(fd)


@artifact_app.command("push")
def push(root: RootOpt = None, repo: RepoOpt = None, branch: BranchOpt = None,
         delta: Annotated[bool, typer.Option("--delta", help="Pack only what changed since the newest artifact "
                                                              "of the branch (pull applies the chain).")] = False,
         with_embeddings: Annotated[bool, typer.Option("--with-embeddings", help="Also pack the embedding-cache "
                                                                                 "entries of the index.")] = False,
         json_out: JsonOut = False) -> None:
    """Pack the repository's index at its last indexed commit, upload it, print its id, size and checksum."""
    _, repo_id, branch = _context(root, repo, branch)
    from tasks.artifact import push as push_task  # lazy: after setup

    record = _run(push_task, {"repo_id": repo_id, "branch": branch or "HEAD", "delta": delta,
                              "with_embeddings": with_embeddings})
    if json_out:
        return print_json(record)
    sys.stdout.write(f"{record['id']}  {record['kind']}  {record['size']} bytes  sha256 {record['sha256']}\n"
                     f"  {record['uri']}\n")
    return None


@artifact_app.command("list")
def list_(root: RootOpt = None, repo: Annotated[Optional[str], typer.Option("--repo", help="Only this repository.")] = None,
          branch: Annotated[Optional[str], typer.Option("--branch", help="Only this branch.")] = None,
          json_out: JsonOut = False) -> None:
    """The artifacts kept: id, repo, branch, commit, model, size, created, expires, promoted."""
    setup(root, None)
    from workers.artifacts import artifact_store, retention_policy  # lazy: after setup
    from workers.runtime import runtime  # lazy: likewise

    store, policy = artifact_store(runtime()), retention_policy(runtime())
    rows = [{**r.as_dict(), "expires": policy.expires(r).isoformat(timespec="seconds")}
            for r in store.list(repo, branch)]
    if json_out:
        return print_json({"store": store.describe(), "artifacts": rows})
    if not rows:
        sys.stdout.write(f"no artifact in {store.describe()}\n")
    for r in rows:
        sys.stdout.write(f"{r['id']}  {r['repo']}  {r['branch']}  {r['commit'][:12]}  {r['kind']}  "
                         f"{r['embedding_model']}  {r['size']} bytes  created {r['created_at']}  "
                         f"expires {r['expires']}{'  promoted' if r['promoted'] else ''}\n")
    return None


@artifact_app.command("pull")
def pull(artifact: Annotated[Optional[str], typer.Argument(help="The artifact id (default with --latest: the "
                                                                   "newest of the branch, else of a main branch).")] = None,
         latest: Annotated[bool, typer.Option("--latest", help="The newest artifact of the repository.")] = False,
         root: RootOpt = None, repo: RepoOpt = None, branch: BranchOpt = None,
         force: Annotated[bool, typer.Option("--force", help="Replace a local index that is ahead of or diverged "
                                                              "from the artifact (never another model).")] = False,
         json_out: JsonOut = False) -> None:
    """Download an artifact, check its checksum, members and compatibility, and install it
    atomically (the previous index stays until the new one is complete and counted)."""
    if bool(artifact) == latest:
        raise UsageError("give an artifact id or --latest")
    repo_root, repo_id, branch = _context(root, repo, branch)
    from tasks.artifact import pull as pull_task  # lazy: after setup
    from workers.runtime import runtime  # lazy: likewise

    if runtime().settings.eager:
        _refuse_while_served(runtime().home)
    result = _run(pull_task, {"repo_id": repo_id, "ref": artifact, "branch": branch, "root": str(repo_root),
                              "force": force})
    if json_out:
        return print_json(result)
    sys.stdout.write(f"installed {result['id']}: {result['repo']} at {result['commit'][:12]}, {result['files']} "
                     f"files, {result['chunks']} chunks ({result['seconds']} s); codeindex sync --detect-changes "
                     "brings it to HEAD\n")
    return None


@artifact_app.command("sync")
def sync(root: RootOpt = None, repo: RepoOpt = None, branch: BranchOpt = None, json_out: JsonOut = False) -> None:
    """Is the local index behind, equal to or ahead of the newest artifact? (equal, behind,
    ahead, diverged, unknown, no-artifact)."""
    repo_root, repo_id, branch = _context(root, repo, branch)
    from workers.artifacts import artifact_status  # lazy: after setup
    from workers.runtime import runtime  # lazy: likewise

    doc = artifact_status(runtime(), repo_id, branch, repo_root)
    if json_out:
        return print_json(doc)
    local = (doc["local_commit"] or "no index")[:12]
    if doc["artifact"] is None:
        sys.stdout.write(f"{repo_id}: no artifact (local {local})\n")
    else:
        sys.stdout.write(f"{repo_id}: {doc['status']}: local {local}, newest artifact {doc['artifact']} at "
                         f"{doc['artifact_commit'][:12]}\n")
    return None


@artifact_app.command("promote")
def promote(artifact: Annotated[str, typer.Argument(help="The artifact id.")], json_out: JsonOut = False) -> None:
    """Keep an artifact past the normal retention (CODEINDEX_ARTIFACT_PROMOTED_DAYS from now): a merge to main."""
    setup(None, None)
    from workers.artifacts import artifact_store, retention_policy  # lazy: after setup
    from workers.runtime import runtime  # lazy: likewise

    record = artifact_store(runtime()).promote(artifact, datetime.now(timezone.utc))
    expires = retention_policy(runtime()).expires(record).isoformat(timespec="seconds")
    if json_out:
        return print_json({**record.as_dict(), "expires": expires})
    sys.stdout.write(f"promoted {record.id} (since {record.promoted_at}); kept until {expires}\n")
    return None


@artifact_app.command("verify")
def verify(artifact: Annotated[str, typer.Argument(help="An archive file (its SHA-256 from FILE.sha256 when "
                                                         "present) or an artifact id.")],
           json_out: JsonOut = False) -> None:
    """Check an artifact without installing it: checksum, members, manifest, metadata and
    compatibility with this index's settings. Exit 0 when it would install."""
    setup(None, None)
    from workers.artifacts import verify_artifact  # lazy: after setup
    from workers.runtime import runtime  # lazy: likewise

    doc = verify_artifact(runtime(), artifact)
    if json_out:
        return print_json(doc)
    sys.stdout.write(f"ok: {doc['id']} ({doc['kind']}, {doc['repo']} {doc['branch']} at {doc['commit'][:12]}, "
                     f"{doc['index_stats']['files']} files, {doc['index_stats']['chunks']} chunks, "
                     f"{doc['embedding_model']}); checked {', '.join(doc['checks'])}\n")
    return None


def register(app: typer.Typer) -> None:
    """Add ``artifact`` to the ``codeindex`` app."""
    app.add_typer(artifact_app, name="artifact")
