"""``codeindex cleanup``: run the cleanup rules now, in this process, through the runtime (the
embedded index, or a fleet's state, stores and caches as the settings name them), and print
what each removed. Exit 2 for an unknown rule, 4 when a rule's dependency failed (the other
rules ran).
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from cli.common import JsonOut, print_json, setup

#: Items of a rule printed by name on its line; the rest are counted.
SHOWN = 5


def cleanup(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what each rule would remove; remove nothing.")] = False,
    rules: Annotated[Optional[list[str]], typer.Option("--rule", help="Run only this rule (repeatable): runs, "
                                                       "failures, bundles, downloads, clones, embeddings, "
                                                       "compaction, artifacts.")] = None,
    json_out: JsonOut = False,
) -> None:
    """Run every retention, eviction and compaction rule now (or those named with --rule), each
    bounded by CODEINDEX_CLEANUP_MAX_PER_PASS, and print what each removed: one line a rule."""
    setup(None, None)
    from workers.cleanup import run_rules  # lazy: after setup, which checks the settings first
    from workers.runtime import runtime  # lazy: likewise

    results = run_rules(runtime(), rules or None, dry_run=dry_run)
    if json_out:
        print_json({"dry_run": dry_run, "results": [r.as_dict() for r in results]})
    else:
        for result in results:
            sys.stdout.write(describe(result) + "\n")
    if any(r.error for r in results):
        raise typer.Exit(4)


def describe(result) -> str:
    """One line for a rule's :class:`~indexing.cleanup.CleanupResult`."""
    if result.error:
        return f"{result.rule}: failed: {result.error}"
    count = len(result.removed)
    line = f"{result.rule}: {'would remove' if result.dry_run else 'removed'} {count}"
    if result.bytes_freed:
        line += f" ({result.bytes_freed} bytes)"
    if count:
        line += ": " + ", ".join(result.removed[:SHOWN]) + (f" and {count - SHOWN} more" if count > SHOWN else "")
    if result.note:
        line += f" [{result.note}]"
    if result.more:
        line += "; more in the next pass"
    return line


def register(app: typer.Typer) -> None:
    """Add ``cleanup`` to the ``codeindex`` app."""
    app.command()(cleanup)
