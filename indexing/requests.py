"""Sync requests built from what a user asked for: the one place the CLI (`codeindex sync`) and
the HTTP trigger (`POST /v1/repos/{id}/sync`) turn a change source into
:class:`~indexing.messages.SyncRequest` messages, so that both take exactly the same input.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from indexing.changes import Change, ChangeList, listed_repository
from indexing.errors import UsageError
from indexing.messages import SyncRequest
from indexing.state import RepoRecord


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """The flags every sync request carries (README, "Safety"): ``delete_missing`` also drops
    indexed files no longer present, ``dry_run`` writes nothing, ``force`` lifts the
    mass-delete guard; ``trigger`` names who asked (``cli``, ``api``, ``webhook:github``...)."""

    delete_missing: bool = False
    dry_run: bool = False
    force: bool = False
    trigger: str = "cli"


def _request(options: SyncOptions, collection: str, repo_id: str, source: str, changes: Sequence[Change] = (),
             **where: object) -> SyncRequest:
    return SyncRequest(run_id=str(uuid.uuid4()), repo_id=repo_id, collection=collection, source=source,
                       changes=[(c.path, c.kind.value) for c in changes], delete_missing=options.delete_missing,
                       dry_run=options.dry_run, force=options.force, trigger=options.trigger, **where)


def work_tree_requests(root: Path, repo_id: str | None, collection: str, source: str, options: SyncOptions, *,
                       listed: Sequence[Change] = (), document: ChangeList | None = None,
                       allowed: Sequence[Path] = ()) -> list[SyncRequest]:
    """The requests for a repository added by path (a work tree at ``root``).

    ``source``: ``all`` (a full scan), ``detect`` (git since the last indexed commit) or
    ``paths`` (``listed`` changes, or the sync spec's JSON change list ``document``, which may
    name several repositories: one request each, every entry checked by
    :func:`~indexing.changes.listed_repository` against ``root``'s parent and ``allowed``
    before any request is made). ``repo_id`` defaults to the root's directory name (for a JSON
    list naming several repositories, each entry's). Raises :class:`UsageError` (exit 2) for a
    listed repository outside the allowed directories.
    """
    name = repo_id or root.name
    if source != "paths":
        return [_request(options, collection, name, source, root=str(root))]
    if document is None:
        return [_request(options, collection, name, "paths", listed, root=str(root))]
    out = []
    for entry in document.repositories:
        repo_root = listed_repository(entry.path, root, allowed)
        rid = repo_id if (repo_id and len(document.repositories) == 1) else repo_root.name
        out.append(_request(options, collection, rid, "paths", entry.changes(), root=str(repo_root)))
    return out


def url_request(record: RepoRecord, collection: str, source: str, options: SyncOptions, *,
                listed: Sequence[Change] = (), json_list: bool = False) -> SyncRequest:
    """The request for a repository added by URL: ``all`` a full index at the branch head,
    ``paths`` the ``listed`` paths read at the head, ``detect`` what changed from the last
    indexed commit to the fetched head. Raises :class:`UsageError` when ``json_list`` says the
    changes came as a JSON change list (it names work trees, and a URL repository has none)."""
    if json_list:
        raise UsageError("a JSON change list names work trees; sync a URL repository with --all, "
                         "--detect-changes (the default) or --stdin")
    return _request(options, collection, record.repo_id, source, listed if source == "paths" else (), root="",
                    url=record.url, branch=record.branch)
