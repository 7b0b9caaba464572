"""Code-aware terms for the full-text (lexical) index: what a chunk is indexed under and what a
query asks for, produced by one tokenizer so that both sides agree.

A store's own full-text engine (LanceDB's inverted index, Weaviate's BM25) then splits the
terms at whitespace only, lower-cases, stems and drops stop words; the code-aware part is
here, where every store shares it: identifiers are kept whole *and* split at ``snake_case``,
``camelCase`` and digit boundaries, dotted names are kept whole beside their parts, and the
words inside string literals count like the rest (an error message is found by its words).
"""

from __future__ import annotations

import re

#: A dotted name or a single identifier (``os.path.join``, ``getUserName``, ``_private``).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
#: The words of an identifier: ``HTTPServerError2x`` -> ``HTTP``, ``Server``, ``Error``, ``2``, ``x``.
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
#: Tokens longer than this are dropped (LanceDB's default ``max_token_length`` is 40 too).
MAX_TERM_LENGTH = 40


def _name_terms(name: str) -> list[str]:
    """``ClickException.show`` -> ``clickexception.show clickexception click exception show``:
    the dotted name, then each identifier whole and its parts (a part equal to the whole once)."""
    out: list[str] = []
    identifiers = name.split(".")
    if len(identifiers) > 1:
        out.append(name.lower())
    for ident in identifiers:
        whole = ident.strip("_").lower()
        parts = [p.lower() for p in _PART.findall(ident)]
        if whole and whole not in parts:
            out.append(whole)
        out.extend(parts)
    return [t for t in out if len(t) <= MAX_TERM_LENGTH]


def terms(text: str) -> list[str]:
    """The code-aware terms of ``text`` in order, lower-case, repeats kept (they are the term
    frequency BM25 counts). ``"def get_user(): raise KeyError('No such user')"`` ->
    ``def get_user get user raise keyerror key error no such user``."""
    out: list[str] = []
    for match in _NAME.finditer(text):
        out.extend(_name_terms(match.group()))
    return out


def path_terms(path: str) -> list[str]:
    """The terms of a repository path: ``src/click/core.py`` -> ``src click core py`` and the file
    name whole (``core.py``), so that a query naming a module or a file finds it."""
    name = path.rsplit("/", 1)[-1].lower()
    return [*terms(path.replace("/", " ").replace(".", " ")), *([name] if len(name) <= MAX_TERM_LENGTH else [])]


def document_terms(path: str, content: str) -> str:
    """What a chunk is indexed under: its path's terms, then its content's, joined by spaces."""
    return " ".join([*path_terms(path), *terms(content)])


def query_terms(query: str) -> str:
    """What a lexical query asks for: the terms of ``query`` by the same rules, each once (a
    repeated word in a short query should not weigh twice). Empty when the query has no word."""
    return " ".join(dict.fromkeys(terms(query)))
