"""The code-aware terms of the lexical index, the path globs of search filters, and rank fusion."""

from __future__ import annotations

import pytest

from indexing.errors import UsageError
from indexing.lance_store import where_clause
from indexing.lexical import document_terms, exact_terms, path_terms, phrase_term, query_terms, terms
from indexing.search import fuse
from indexing.store import SearchFilter, SearchHit, glob_to_like


def test_identifiers_are_kept_whole_and_split() -> None:
    assert terms("get_user_name") == ["get_user_name", "get", "user", "name"]
    assert terms("getUserName HTTPServer2") == ["getusername", "get", "user", "name", "httpserver2", "http", "server", "2"]
    assert terms("os.path.join") == ["os.path.join", "os", "path", "join"]
    assert terms("__init__ x") == ["init", "x"]


def test_definitions_and_literals_get_their_own_terms() -> None:
    found = terms("class Loader:\n    def load_all(self):\n        raise KeyError('no such key here')")
    assert found.count("defines.loader") == 3 and found.count("defines.load_all") == 3
    assert "no_such_key_here" in found and found.count("key") == 2
    assert phrase_term("one") is None and phrase_term("a b c d e f g h i") is None
    assert phrase_term("No such option: --foo") == "no_such_option_foo"


def test_queries_ask_for_exact_matches_only_of_identifiers_and_short_phrases() -> None:
    assert query_terms("load_all") == "load_all load all defines.load_all"
    assert exact_terms("Context.invoke") == "defines.invoke context_invoke"
    assert exact_terms("return the current context") == "return_the_current_context"
    assert exact_terms("return the current context of the command being run now") == ""
    assert query_terms("!!!") == ""


def test_a_document_is_found_by_its_path_too() -> None:
    assert path_terms("src/click/core.py") == ["src", "click", "core", "py", "core.py"]
    assert document_terms("a/b.py", "x = 1").split() == ["a", "b", "py", "b.py", "x"]


@pytest.mark.parametrize(("glob", "likes"), [
    ("*.py", ["%.py", "%.py/%"]),
    ("src/**/*.py", ["src/%.py", "src/%.py/%"]),
    ("docs/", ["docs", "docs/%"]),
    ("a_b%?", ["a\\_b\\%_", "a\\_b\\%_/%"]),
])
def test_path_globs_become_escaped_like_patterns(glob: str, likes: list[str]) -> None:
    assert glob_to_like(glob) == likes


@pytest.mark.parametrize("glob", ["", "src/[ab].py", "x]"])
def test_globs_a_store_cannot_evaluate_are_refused(glob: str) -> None:
    with pytest.raises(UsageError):
        SearchFilter(path=glob)


def test_filters_become_one_sql_clause() -> None:
    assert where_clause(None) is None and where_clause(SearchFilter()) is None
    assert where_clause(SearchFilter(repo="it's", language="go", path="a*")) == (
        "repo = 'it''s' AND language = 'go' AND (path LIKE 'a%' ESCAPE '\\' OR path LIKE 'a%/%' ESCAPE '\\')")


def _hit(name: str) -> SearchHit:
    return SearchHit(id=name, repo="r", path=f"{name}.py", chunk_index=0, start_line=1, end_line=2, content="",
                     language="python", score=0.0)


def test_reciprocal_rank_fusion_rewards_agreement_and_names_the_retrievers() -> None:
    vector = [_hit("a"), _hit("b"), _hit("c")]
    lexical = [_hit("c"), _hit("d")]
    fused = fuse({"vector": vector, "lexical": lexical}, k=3)
    assert [r.hit.id for r in fused] == ["c", "a", "b"]  # b and d tie: the first list's order
    assert fused[0].retriever == "vector+lexical" and fused[1].retrievers == ("vector",)
    assert fused[0].score == pytest.approx(1 / 63 + 1 / 61)
    weighted = fuse({"vector": vector, "lexical": lexical}, k=2, weights={"lexical": 0.0})
    assert [r.hit.id for r in weighted] == ["a", "b"]  # the lexical list weighs nothing
