"""Line-aware chunking on real source files (indexing/chunking.py)."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import celery
import kombu
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.chunking import Chunk, chunk_text
from indexing.embedders import HashingEmbedder

MAX = 256
EMBEDDER = HashingEmbedder()
COUNT = EMBEDDER.count_tokens

CELERY = Path(celery.__file__).parent
KOMBU = Path(kombu.__file__).parent
# Real files: two big class-heavy modules, and modules with many top-level functions.
REAL_FILES = [
    CELERY / "app" / "task.py",
    KOMBU / "connection.py",
    CELERY / "utils" / "functional.py",
    CELERY / "app" / "utils.py",
    CELERY / "utils" / "text.py",
    KOMBU / "utils" / "functional.py",
]


@functools.cache
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@functools.cache
def _chunks(path: Path) -> tuple[Chunk, ...]:
    return tuple(chunk_text(_read(path), MAX, COUNT))


def _tokens(text: str) -> int:
    return COUNT([text])[0]


def _file_lines(text: str) -> list[str]:
    """The file's lines as an editor and git number them: split at LF only."""
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_file_chunk_invariants(path: Path):
    text = _read(path)
    lines = _file_lines(text)
    chunks = _chunks(path)
    assert len(chunks) > 3
    previous_end = 0
    covered: set[int] = set()
    for i, chunk in enumerate(chunks):
        assert chunk.index == i
        # 1-based, inclusive, ordered, non-overlapping
        assert 1 <= chunk.start_line <= chunk.end_line <= len(lines)
        assert chunk.start_line > previous_end
        previous_end = chunk.end_line
        # the text is exactly its lines
        assert chunk.text == "\n".join(lines[chunk.start_line - 1 : chunk.end_line])
        # chunks start and end on non-blank lines (blank lines between chunks belong to none)
        assert lines[chunk.start_line - 1].strip() and lines[chunk.end_line - 1].strip()
        # token limit, except for a chunk that is one line
        if chunk.start_line != chunk.end_line:
            assert _tokens(chunk.text) <= MAX, (chunk.start_line, chunk.end_line)
        covered.update(range(chunk.start_line, chunk.end_line + 1))
    non_blank = {n for n, line in enumerate(lines, 1) if line.strip()}
    assert non_blank <= covered
    assert covered - non_blank <= {n for n, line in enumerate(lines, 1) if not line.strip()}


@pytest.mark.parametrize("path", REAL_FILES[:2], ids=lambda p: p.name)
def test_chunking_is_deterministic(path: Path):
    assert chunk_text(_read(path), MAX, COUNT) == list(_chunks(path))


def test_small_limit_still_respects_invariants():
    text = _read(REAL_FILES[0])
    lines = _file_lines(text)
    chunks = chunk_text(text, 40, COUNT)
    assert len(chunks) > len(_chunks(REAL_FILES[0]))
    for chunk in chunks:
        assert chunk.text == "\n".join(lines[chunk.start_line - 1 : chunk.end_line])
        if chunk.start_line != chunk.end_line:
            assert _tokens(chunk.text) <= 40
    covered = {n for c in chunks for n in range(c.start_line, c.end_line + 1)}
    assert {n for n, line in enumerate(lines, 1) if line.strip()} <= covered


def test_top_level_definitions_open_chunks():
    # In a file of small functions separated by blank lines, every def starts a chunk,
    # even though several would fit in one chunk together.
    text = "\n\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(10)) + "\n"
    chunks = chunk_text(text, MAX, COUNT)
    assert [c.text.splitlines()[0] for c in chunks] == [f"def f{i}(x):" for i in range(10)]
    assert [c.start_line for c in chunks] == [1 + 3 * i for i in range(10)]


def test_non_definition_blocks_are_packed_together():
    text = "\n\n".join(f"x{i} = {i}" for i in range(10))
    chunks = chunk_text(text, MAX, COUNT)
    assert len(chunks) == 1
    assert chunks[0].start_line == 1 and chunks[0].end_line == 19
    assert chunks[0].text == text


# --------------------------------------------------------------------------- edge cases


def test_empty_and_blank_text():
    assert chunk_text("", MAX, COUNT) == []
    assert chunk_text("\n\n   \n\t\n", MAX, COUNT) == []


@pytest.mark.parametrize("bad", [0, -1, -256])
def test_max_tokens_below_one(bad):
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_text("x = 1\n", bad, COUNT)


def test_single_long_line_is_its_own_chunk():
    long_line = "values = [" + ", ".join(f"item_{i}" for i in range(400)) + "]"
    assert _tokens(long_line) > MAX
    text = "import os\nimport sys\n\n" + long_line + "\n\ndef after():\n    return 1\n"
    chunks = chunk_text(text, MAX, COUNT)
    assert [c.text for c in chunks] == ["import os\nimport sys", long_line, "def after():\n    return 1"]
    assert (chunks[1].start_line, chunks[1].end_line) == (4, 4)


def test_long_line_inside_a_block_is_split_out():
    long_line = "    data = [" + ", ".join(str(i) for i in range(600)) + "]"
    text = "def f():\n    a = 1\n" + long_line + "\n    return a\n"
    chunks = chunk_text(text, MAX, COUNT)
    assert long_line in [c.text for c in chunks]
    for chunk in chunks:
        if chunk.start_line != chunk.end_line:
            assert _tokens(chunk.text) <= MAX


def test_oversized_function_without_blank_lines_is_split_by_lines():
    body = "\n".join(f"    total = total + compute_value_{i}(alpha, beta, gamma)" for i in range(120))
    text = "def big():\n    total = 0\n" + body + "\n    return total\n"
    lines = text.splitlines()
    chunks = chunk_text(text, MAX, COUNT)
    assert len(chunks) > 1
    assert all(_tokens(c.text) <= MAX for c in chunks)
    # contiguous: no non-blank line lost between pieces
    assert [n for c in chunks for n in range(c.start_line, c.end_line + 1)] == list(range(1, len(lines) + 1))


def test_one_token_limit():
    text = "a\nb c\n\nd\n"
    chunks = chunk_text(text, 1, COUNT)
    assert [c.text for c in chunks] == ["a", "b c", "d"]


def test_crlf_text():
    chunks = chunk_text("def a():\r\n    pass\r\n\r\ndef b():\r\n    pass\r\n", MAX, COUNT)
    assert [c.text for c in chunks] == ["def a():\n    pass", "def b():\n    pass"]
    assert [(c.start_line, c.end_line) for c in chunks] == [(1, 2), (4, 5)]


# --------------------------------------------------------------------------- stability

# A top-level line that opens a definition: what the chunker treats as an anchor when it
# starts a block (follows a blank line).
_TOP_DEFINITION = re.compile(r"^(?:@\w|(?:async\s+)?def\s|class\s)")


@functools.cache
def _top_level_functions(path: Path) -> tuple[ast.FunctionDef | ast.AsyncFunctionDef, ...]:
    tree = ast.parse(_read(path))
    return tuple(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


STABILITY_FILES = [p for p in REAL_FILES if len(_top_level_functions(p)) >= 3]


def _edit_function(lines: list[str], fn: ast.FunctionDef | ast.AsyncFunctionDef, stmt: int) -> list[str]:
    """Insert one statement into ``fn``'s body, after its statement number ``stmt``."""
    body = fn.body[min(stmt, len(fn.body) - 1)]
    at = body.end_lineno  # 1-based last line of that statement = 0-based insertion index
    indent = " " * fn.body[0].col_offset
    return lines[:at] + [indent + "_edited_marker = recompute_the_value(alpha, beta, gamma, delta)"] + lines[at:]


def _function_start(lines: list[str], fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """0-based first line of the function's unit: decorators, and comments glued above."""
    start = min([fn.lineno] + [d.lineno for d in fn.decorator_list]) - 1
    while start > 0 and lines[start - 1].strip() and not lines[start - 1][0].isspace():
        start -= 1
    return start


def _next_anchor(lines: list[str], fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """0-based line of the next top-level definition after ``fn`` that starts a block
    (follows a blank line); ``len(lines)`` when there is none."""
    for j in range(fn.end_lineno, len(lines)):
        if _TOP_DEFINITION.match(lines[j]) and not lines[j - 1].strip():
            return j
    return len(lines)


@settings(max_examples=60, deadline=None, database=None)
@given(st.data())
def test_property_editing_a_function_keeps_other_chunks(data):
    path = data.draw(st.sampled_from(STABILITY_FILES), label="file")
    lines = _file_lines(_read(path))
    fn = data.draw(st.sampled_from(_top_level_functions(path)), label="function")
    stmt = data.draw(st.integers(0, 20), label="statement")
    edited = _edit_function(lines, fn, stmt)
    assert len(edited) == len(lines) + 1

    before = list(_chunks(path))
    after = chunk_text("\n".join(edited), MAX, COUNT)
    assert [c.text for c in after] != [c.text for c in before]  # the edit shows somewhere

    start = _function_start(lines, fn)
    anchor = _next_anchor(lines, fn)
    prefix = [c for c in before if c.end_line <= start]  # entirely before the function
    suffix = [c for c in before if c.start_line > anchor]  # from the next definition on

    # Chunks before the edit: same text and same lines.
    assert after[: len(prefix)] == prefix
    # Chunks after the next definition: same text, lines shifted by the inserted line.
    if suffix:
        tail = after[len(after) - len(suffix) :]
        assert [c.text for c in tail] == [c.text for c in suffix]
        assert [(c.start_line, c.end_line) for c in tail] == [(c.start_line + 1, c.end_line + 1) for c in suffix]
    # Only the edited region's chunks may differ.
    changed = [c for c in after if c.text not in {b.text for b in before}]
    assert changed
    assert all(start + 1 <= c.start_line and c.end_line <= anchor + 1 for c in changed), (start, anchor, changed)


def test_stability_example_middle_function():
    path = CELERY / "utils" / "functional.py"
    lines = _file_lines(_read(path))
    functions = _top_level_functions(path)
    edited = _edit_function(lines, functions[len(functions) // 2], 1)
    before = [c.text for c in _chunks(path)]
    after = [c.text for c in chunk_text("\n".join(edited), MAX, COUNT)]
    # As multisets: all but the edited function's chunk(s) survive unchanged.
    lost = [t for t in before if t not in after]
    gained = [t for t in after if t not in before]
    assert 1 <= len(lost) <= 2 and 1 <= len(gained) <= 2
    assert all("_edited_marker" in t for t in gained)
