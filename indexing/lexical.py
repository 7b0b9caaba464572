"""Code-aware terms for the full-text (lexical) index: what a chunk is indexed under and what a
query asks for, produced by one tokenizer so that both sides agree.

A store's own full-text engine (LanceDB's inverted index, Weaviate's BM25) then splits the
terms at whitespace only, lower-cases, stems and drops stop words; the code-aware part is
here, where every store shares it: identifiers are kept whole *and* split at ``snake_case``,
``camelCase`` and digit boundaries, dotted names are kept whole beside their parts, a defined
name also gives a ``defines.<name>`` term, and the words inside string literals count like the
rest, a short literal also whole (an error message is found by its words and as one term).
"""

from __future__ import annotations

import re

#: A dotted name or a single identifier (``os.path.join``, ``getUserName``, ``_private``).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
#: The words of an identifier: ``HTTPServerError2x`` -> ``HTTP``, ``Server``, ``Error``, ``2``, ``x``.
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
#: Tokens longer than this are dropped (LanceDB's default ``max_token_length`` is 40 too).
MAX_TERM_LENGTH = 40
#: Keywords that introduce a definition: the name after one also gives the term
#: ``defines.<name>``, which a query naming an identifier asks for too (:func:`query_terms`), so
#: that the chunk defining ``get_user`` outranks the (often shorter) chunks that merely call it.
_DEFINES = frozenset({"def", "class", "function", "fn", "func", "struct", "interface", "trait", "enum", "type"})
DEFINES = "defines."
#: How many times the ``defines.<name>`` term counts: once is outweighed by a caller's chunk that
#: repeats the name (BM25 favours short chunks); 3 lets the definition win on kombu's sources
#: (tests/e2e/test_search.py) while its term frequency saturation keeps it from dominating.
DEFINITION_WEIGHT = 3


#: A one-line string literal's body (quotes of either kind, backslash escapes).
_LITERAL = re.compile(r"""(['"])((?:\\.|(?!\1).)+)\1""")
_WORDS = re.compile(r"[A-Za-z0-9]+")
#: A literal of this many words at most is also indexed whole (:func:`phrase_term`).
PHRASE_WORDS = 8


def phrase_term(text: str) -> str | None:
    """``"No such option: --foo"`` -> ``no_such_option_foo``: a short text's words joined, the term
    under which a string literal is found whole (an error message quoted in a query matches it
    even where each of its words is common). None for one word, more than :data:`PHRASE_WORDS`,
    or a term longer than :data:`MAX_TERM_LENGTH`."""
    words = _WORDS.findall(text.lower())
    joined = "_".join(words)
    return joined if 1 < len(words) <= PHRASE_WORDS and len(joined) <= MAX_TERM_LENGTH else None


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
    frequency BM25 counts; a defined name adds ``defines.<name>``).
    ``"def get_user(): raise KeyError('No such user')"`` ->
    ``def get_user get user defines.get_user (3 times) raise keyerror key error no such user``."""
    out: list[str] = []
    previous = ""
    for match in _NAME.finditer(text):
        name = match.group()
        out.extend(_name_terms(name))
        if previous in _DEFINES and len(whole := name.strip("_").lower()) + len(DEFINES) <= MAX_TERM_LENGTH:
            out.extend([DEFINES + whole] * DEFINITION_WEIGHT)
        previous = name
    for literal in _LITERAL.finditer(text):
        if (phrase := phrase_term(literal.group(2))) is not None:
            out.append(phrase)
    return out


def path_terms(path: str) -> list[str]:
    """The terms of a repository path: ``src/click/core.py`` -> ``src click core py`` and the file
    name whole (``core.py``), so that a query naming a module or a file finds it."""
    name = path.rsplit("/", 1)[-1].lower()
    return [*terms(path.replace("/", " ").replace(".", " ")), *([name] if len(name) <= MAX_TERM_LENGTH else [])]


def document_terms(path: str, content: str) -> str:
    """What a chunk is indexed under: its path's terms, then its content's, joined by spaces."""
    return " ".join([*path_terms(path), *terms(content)])


def _named(query: str) -> list[str]:
    """``defines.<name>`` for each identifier ``query`` names (see :func:`query_terms`)."""
    return [DEFINES + ident.strip("_").lower() for match in _NAME.finditer(query)
            for ident in match.group().split(".")[-1:]
            if ("_" in ident.strip("_") or not ident.islower() and not ident.istitle() or "." in match.group()
                or any(c.isdigit() for c in ident)) and len(ident) + len(DEFINES) <= MAX_TERM_LENGTH]


def exact_terms(query: str) -> str:
    """The terms of ``query`` that only an exact match has: ``defines.<name>`` of each identifier
    it names and its :func:`phrase_term`; empty for a query in plain words of more than
    :data:`PHRASE_WORDS`. Hybrid search puts the chunks holding them first (indexing/search.py)."""
    phrase = phrase_term(query)
    return " ".join(dict.fromkeys([*_named(query), *([phrase] if phrase else [])]))


def query_terms(query: str) -> str:
    """What a lexical query asks for: the terms of ``query`` by the same rules, each once (a
    repeated word in a short query should not weigh twice), and ``defines.<name>`` for each
    identifier it names (a name with ``_``, inner capitals or digits, or a dotted name's last; a plain word
    is not taken for one), and the query's :func:`phrase_term` (it may quote a string literal).
    Empty when the query has no word."""
    return " ".join(dict.fromkeys([*terms(query), *exact_terms(query).split()]))
