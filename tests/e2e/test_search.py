"""Search as a user runs it, on a real tree (the installed kombu package, committed to a fresh
repository and indexed by a real sync with the feature-hashing embedder): an exact function
name, and an error message, find their definition first in lexical and hybrid modes; filters
narrow inside the query; ``codeindex search`` prints its modes, filters and batch queries."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import kombu
import pytest

from indexing.search import SearchMode, search
from indexing.store import SearchFilter
from tests.conftest import copy_tree, git, sync

CLI = str(Path(sys.executable).with_name("codeindex"))


@pytest.fixture
def kombu_index(tmp_path: Path, index_home: Path) -> Path:
    root = tmp_path / "kombu-repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    copy_tree(Path(kombu.__file__).parent, root / "kombu")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "kombu")
    assert sync(root, "all")["errors"] == 0
    return root


def _definitions(root: Path) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """(name, path, def line) of functions whose name is defined once in the tree and appears in
    it at least twice more (so callers compete), and (message, path, line) of ``raise X('...')``
    messages of at least four words found once: the identifier and error-message queries."""
    defined: Counter = Counter()
    functions, messages = [], []
    texts = {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*.py"))}
    everything = "\n".join(texts.values())
    for rel, text in texts.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef):
                defined[node.name.strip("_").lower()] += 1  # the lexical index's identity of a name
                if "_" in node.name.strip("_") and len(node.name) > 8:
                    functions.append((node.name, rel, node.lineno))
            if (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args
                    and isinstance(node.exc.args[0], ast.Constant) and isinstance(node.exc.args[0].value, str)):
                message = node.exc.args[0].value
                if len(message.split()) >= 4 and "%" not in message and "{" not in message:
                    messages.append((message, rel, node.lineno))
    functions = [f for f in functions if defined[f[0].strip("_").lower()] == 1 and everything.count(f[0]) >= 3]
    counts = Counter(m for m, _, _ in messages)
    messages = [m for m in messages if counts[m[0]] == 1 and everything.count(m[0]) == 1]
    return sorted(functions)[:12], sorted(messages)[:8]


def test_an_exact_name_or_error_message_finds_its_definition_first(kombu_index: Path) -> None:
    from config.settings import get_settings
    from workers.runtime import runtime

    rt = runtime()
    store = rt.vector_store(get_settings().collection)
    embedder = rt.embedder
    functions, messages = _definitions(kombu_index)
    assert len(functions) >= 10 and len(messages) >= 5
    targets = functions + messages
    for mode in (SearchMode.LEXICAL, SearchMode.HYBRID):
        answers = search(store, embedder, [query for query, _, _ in targets], 5, mode)
        for (query, path, line), hits in zip(targets, answers):
            first = hits[0].hit
            assert (first.path, first.start_line <= line <= first.end_line) == (path, True), (mode, query, hits[:2])
        assert all("lexical" in hits[0].retrievers for hits in answers)
    name, path, _ = functions[0]
    within = search(store, embedder, [name], 3, SearchMode.HYBRID, SearchFilter(path="kombu/transport"))[0]
    assert within and all(h.hit.path.startswith("kombu/transport/") for h in within)
    assert path.startswith("kombu/transport/") or all(h.hit.path != path for h in within)


def test_the_cli_searches_in_each_mode_with_filters_and_batches(kombu_index: Path, index_home: Path) -> None:
    env_run = lambda *args, stdin=None: subprocess.run(  # noqa: E731
        [CLI, "search", *args, "--root", str(kombu_index)], input=stdin, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "CODEINDEX_HOME": str(index_home), "CODEINDEX_EMBEDDER": "hashing"})
    functions, _ = _definitions(kombu_index)
    name, path, _ = functions[0]
    text = env_run(name, "--mode", "lexical", "-k", "2")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f" 1. {path}:") and "via=lexical" in text.stdout
    as_json = env_run(name, "--json", "-k", "3", "--mode", "hybrid", "--language", "python", "--path", "kombu/**/*.py")
    rows = json.loads(as_json.stdout)
    assert rows[0]["path"] == path and rows[0]["mode"] == "hybrid" and "lexical" in rows[0]["retriever"]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    default = json.loads(env_run(name, "--json", "-k", "1").stdout)
    assert default[0]["mode"] == "vector" and default[0]["retriever"] == "vector"
    assert {"retriever", "score", "start_line", "end_line", "repo"} <= set(rows[0])
    queries = f"{functions[1][0]}\n\n{functions[2][0]}\n"
    batch = env_run("--queries", "-", "-k", "1", "--mode", "lexical", stdin=queries)
    lines = [json.loads(line) for line in batch.stdout.splitlines()]
    assert [(d["query"], d["results"][0]["path"]) for d in lines] == [
        (functions[1][0], functions[1][1]), (functions[2][0], functions[2][1])]
    assert env_run("--path", "[ab]*", "x").returncode == 2
    assert env_run().returncode == 2  # neither a query nor --queries
    assert env_run("--language", "rust", "x", "--json").stdout.strip() == "[]"
