"""The names a chunk defines (its name vector's text, indexing/names.py) and the re-ranking of a
vector search by them (indexing/search.py)."""

from __future__ import annotations

from pathlib import Path

import kombu
import pytest

from indexing.names import _CLASS, _DEF_NAME, MAX_NAMES, Definitions, words
from indexing.search import rerank_by_names
from indexing.store import SearchHit

SOURCE = '''\
import os


def get_current_context(silent=False):
    return _local.stack[-1]


class HTTPServer(Base):
    """A server."""

    def serve_forever(self):
        pass

    async def handleRequest(self, request):
        def inner():
            pass
        return inner


fn_like = 3
def _private_helper():
    pass
'''.split("\n")


def test_identifiers_become_lower_case_words() -> None:
    assert words("get_current_context") == "get current context"
    assert words("HTTPServer") == "http server"
    assert words("handleRequest2") == "handle request 2"


def test_each_definition_is_named_after_its_enclosing_class() -> None:
    assert Definitions(SOURCE).within(1, len(SOURCE)) == [
        "get current context", "http server", "http server: serve forever", "http server: handle request",
        "http server: inner", "private helper"]  # a nested function: the class around its method


def test_only_the_chunks_lines_count_and_the_class_is_found_above_them() -> None:
    start = SOURCE.index("    def serve_forever(self):") + 1
    assert Definitions(SOURCE).within(start, start + 1) == ["http server: serve forever"]
    assert Definitions(SOURCE).text(start, start + 3) == "http server: serve forever, http server: handle request"
    assert Definitions(SOURCE).text(1, 2) is None  # imports define nothing


def test_a_chunk_of_many_definitions_names_at_most_max_names() -> None:
    lines = [f"def f{i}(): pass" for i in range(MAX_NAMES + 10)]
    assert len(Definitions(lines).within(1, len(lines))) == MAX_NAMES


def _hit(name: str, score: float, name_score: float) -> SearchHit:
    return SearchHit(id=name, repo="r", path=f"{name}.py", chunk_index=0, start_line=1, end_line=2, content="",
                     language="python", score=score, name_score=name_score)


def test_rerank_adds_the_weighted_name_cosine_and_keeps_the_order_at_weight_zero() -> None:
    hits = [_hit("caller", 0.80, 0.10), _hit("definition", 0.70, 0.90), _hit("other", 0.60, 0.0)]
    ranked = rerank_by_names(hits, 0.3)
    assert [(h.id, round(s, 3)) for h, s in ranked] == [("definition", 0.97), ("caller", 0.83), ("other", 0.6)]
    assert [h.id for h, s in rerank_by_names(hits, 0.0)] == ["caller", "definition", "other"]


def _walk_up(lines: list[str], at: int) -> str | None:
    """The enclosing class of ``lines[at]`` the slow way (line by line upwards), as the benchmark
    that chose name vectors computed it: the reference for the one-pass :class:`Definitions`."""
    def indent(line: str) -> int:
        return len(line) - len(line.lstrip())

    level = indent(lines[at])
    for i in range(at - 1, -1, -1):
        if not lines[i].strip():
            continue
        here = indent(lines[i])
        if here < level:
            if (m := _CLASS.match(lines[i])):
                return m.group(1)
            if here == 0:
                return None
            level = here
    return None


@pytest.mark.parametrize("path", sorted(Path(kombu.__file__).parent.rglob("*.py"))[:40], ids=lambda p: p.name)
def test_one_pass_finds_what_walking_up_finds_on_real_files(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    expected = []
    for i, line in enumerate(lines):
        if (m := _DEF_NAME.match(line)) and words(m.group(1)):
            owner = _walk_up(lines, i)
            expected.append(f"{words(owner)}: {words(m.group(1))}" if owner and words(owner) else words(m.group(1)))
    found = Definitions(lines)
    assert found.names == expected
    assert [found.text(c, c + 29) for c in range(1, len(lines), 30)] == [
        ", ".join(expected_in) or None for expected_in in
        ([n for n, at in zip(expected, found.lines) if c - 1 <= at <= c + 28][:MAX_NAMES] for c in range(1, len(lines), 30))]
