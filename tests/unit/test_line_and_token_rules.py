"""Line splitting, directory symlinks, identifier splitting and plan order: rules that once
went wrong (line numbers must match the file as git and editors count it)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from indexing.chunking import chunk_text, split_lines
from indexing.embedders import HashingEmbedder, _WORD
from indexing.messages import Action, SyncRequest
from indexing.scanner import FileFilter, decode, walk
from indexing.state import SQLiteStateStore
from indexing.sync import PlanLimits, plan_sync


def test_form_feed_and_nel_do_not_split_lines() -> None:
    count = HashingEmbedder().count_tokens
    chunks = chunk_text("x = 1\n\x0c\ndef f():\n    return 1\n", 256, count)
    assert [(c.start_line, c.end_line) for c in chunks] == [(1, 1), (3, 4)]
    text = decode(b"# caf\xe9 \x85 ok\nx = 1\n").text
    assert split_lines(text) == ["# caf\xe9 \x85 ok", "x = 1"]
    assert chunk_text(text, 256, count)[-1].end_line == 2
    assert split_lines("a\r\nb\r\n") == ["a", "b"]


def test_walk_does_not_yield_directory_symlinks(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.py").write_text("a = 1\n")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    os.symlink(tmp_path / "real" / "a.py", tmp_path / "link.py")
    assert list(walk(tmp_path, FileFilter(tmp_path))) == ["link.py", "real/a.py"]


def test_capital_runs_split_like_snake_case() -> None:
    assert _WORD.findall("getHTTPResponse") == ["get", "HTTP", "Response"]
    embedder = HashingEmbedder()
    camel, snake, other = embedder.embed(["getHTTPResponse", "get_http_response", "parse_yaml_file"])
    assert float(camel @ snake) > 0.99 and float(camel @ other) < 0.5


def test_refused_paths_keep_their_place_in_the_plan(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("a.py", "c.py"):
        (root / name).write_text(f"{name[0]} = 1\n")
    state = SQLiteStateStore(tmp_path / "state.sqlite")
    request = SyncRequest(run_id=str(uuid.uuid4()), repo_id="r", root=str(root), collection="c", source="paths",
                          changes=[("a.py", "listed"), ("/etc/passwd", "listed"), ("c.py", "listed")])
    plan = plan_sync(request, state, FileFilter(root), PlanLimits(10_000, 10, 10_000, 0.2))
    assert [(f.path, f.action) for f in plan.files] == [
        ("a.py", Action.ADD), ("/etc/passwd", Action.ERROR), ("c.py", Action.ADD)]


def test_hash_lines_open_chunks_in_markdown_only() -> None:
    count = HashingEmbedder().count_tokens
    text = "intro = 1\n\n# a comment paragraph\nvalue = 2\n"
    assert len(chunk_text(text, 256, count, "python")) == 1
    assert len(chunk_text("Intro text.\n\n# Heading\nBody.\n", 256, count, "markdown")) == 2
