"""Rendering of sync results in the sync specification's text format (seed 001, "Output
Format"): ``[ADD]/[UPDATE]/[DELETE]`` lines, then the ``Summary:`` block."""

from __future__ import annotations

from typing import TextIO

from indexing.messages import Action, SyncSummary

_SHOWN = {Action.ADD, Action.UPDATE, Action.DELETE, Action.SKIP, Action.ERROR}


def kb(size: int) -> str:
    """``2355`` -> ``2.3kb`` (kibibytes, one decimal)."""
    return f"{size / 1024:.1f}kb"


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def render_summary(summary: SyncSummary, out: TextIO, verbose: bool, wall_seconds: float) -> None:
    """Write the per-file lines and the Summary block of one repository's sync to ``out``."""
    changes = [f for f in summary.files if f.action is not Action.UNCHANGED]
    if summary.dry_run:
        out.write("Dry run: nothing will be written.\n")
    if summary.message:
        out.write(f"Note: {summary.message}\n")
    out.write(f"Processing {len(changes)} changes...\n\n")
    for entry in summary.files:
        if entry.action in _SHOWN or verbose:
            tag = f"[{entry.action.value}]".ljust(8)
            detail = f" ({kb(entry.size)})" if entry.action in (Action.ADD, Action.UPDATE) else ""
            if entry.reason:
                detail += f": {entry.reason}"
            out.write(f"{tag} {entry.path}{detail}\n")
    if changes:
        out.write("\n")
    out.write("Summary:\n")
    out.write(f"  Updated:   {_files(summary.updated)} ({kb(summary.bytes_updated)})\n")
    out.write(f"  Added:     {_files(summary.added)} ({kb(summary.bytes_added)})\n")
    out.write(f"  Deleted:   {_files(summary.deleted)}\n")
    out.write(f"  Unchanged: {_files(summary.unchanged)}\n")
    out.write(f"  Skipped:   {_files(summary.skipped)}\n")
    out.write(f"  Errors:    {summary.errors}\n")
    if verbose:
        out.write(f"  Chunks:    {summary.chunks_embedded} embedded, {summary.chunks_reused} reused from cache\n")
    out.write(f"  Time:      {wall_seconds:.1f}s\n")
