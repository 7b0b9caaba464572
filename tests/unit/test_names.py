"""The names a chunk defines (its name vector's text, indexing/names.py) and the re-ranking of a
vector search by them (indexing/search.py)."""

from __future__ import annotations

from indexing.names import MAX_NAMES, definition_names, names_text, words
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
    assert definition_names(SOURCE, 1, len(SOURCE)) == [
        "get current context", "http server", "http server: serve forever", "http server: handle request",
        "http server: inner", "private helper"]  # a nested function: the class around its method


def test_only_the_chunks_lines_count_and_the_class_is_found_above_them() -> None:
    start = SOURCE.index("    def serve_forever(self):") + 1
    assert definition_names(SOURCE, start, start + 1) == ["http server: serve forever"]
    assert names_text(SOURCE, start, start + 3) == "http server: serve forever, http server: handle request"
    assert names_text(SOURCE, 1, 2) is None  # imports define nothing


def test_a_chunk_of_many_definitions_names_at_most_max_names() -> None:
    lines = [f"def f{i}(): pass" for i in range(MAX_NAMES + 10)]
    assert len(definition_names(lines, 1, len(lines))) == MAX_NAMES


def _hit(name: str, score: float, name_score: float) -> SearchHit:
    return SearchHit(id=name, repo="r", path=f"{name}.py", chunk_index=0, start_line=1, end_line=2, content="",
                     language="python", score=score, name_score=name_score)


def test_rerank_adds_the_weighted_name_cosine_and_keeps_the_order_at_weight_zero() -> None:
    hits = [_hit("caller", 0.80, 0.10), _hit("definition", 0.70, 0.90), _hit("other", 0.60, 0.0)]
    ranked = rerank_by_names(hits, 0.3)
    assert [(h.id, round(s, 3)) for h, s in ranked] == [("definition", 0.97), ("caller", 0.83), ("other", 0.6)]
    assert [h.id for h, s in rerank_by_names(hits, 0.0)] == ["caller", "definition", "other"]
