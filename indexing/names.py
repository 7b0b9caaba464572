"""The names a chunk defines, as words: the text of a chunk's second vector, its *name vector*.

A small embedding model blurs identifiers into the code around them, and a function's purpose
is often said best by its name: ``get_current_context`` in a class ``Context`` reads as
"context: get current context", which a query such as "Return the current context." is close
to. Each chunk that defines something (``def``, ``class``, ``function``, ``fn``, ``func`` at the
start of a line) gets one more embedded text: its definitions' names split into words, each
after its enclosing class (by indentation), joined by ``", "`` (:func:`names_text`). Search then
re-ranks the nearest chunks by ``cosine(query, chunk) + weight * cosine(query, name vector)``
(:func:`indexing.search.search`, ``CODEINDEX_SEARCH_NAME_WEIGHT``).

Measured by bench/search.py (docs/search.md): on click, MRR@10 0.378 -> 0.516 with weight 0.3
(re-ranking the top 50 chunks equals scoring every chunk there); one vector per chunk of its
names joined scores as well as one vector per definition with the best one taken, at half the
vectors and with no second table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from indexing.lexical import _PART

#: A line that starts a definition, and the name it defines (Python, JavaScript/TypeScript,
#: Rust, Go; ``async def`` too).
_DEF_NAME = re.compile(r"^\s*(?:async\s+)?(?:def|class|function|fn|func)\s+([A-Za-z_]\w*)")
_CLASS = re.compile(r"^\s*class\s+([A-Za-z_]\w*)")
#: How the names of one chunk are joined into its one text.
SEPARATOR = ", "
#: At most this many definitions of a chunk are named (a chunk of many one-line functions would
#: otherwise give a text the model truncates anyway).
MAX_NAMES = 24


def words(identifier: str) -> str:
    """An identifier as lower-case words: ``get_current_context`` -> ``get current context``,
    ``HTTPServer`` -> ``http server`` (the full-text index's split, indexing/lexical.py)."""
    return " ".join(p.lower() for p in _PART.findall(identifier))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def enclosing_class(lines: Sequence[str], at: int) -> str | None:
    """The name of the class whose body holds ``lines[at]`` (0-based), found by indentation
    (walking up to the first less indented line that opens a class); None at module level."""
    indent = _indent(lines[at])
    for i in range(at - 1, -1, -1):
        if not lines[i].strip():
            continue
        here = _indent(lines[i])
        if here < indent:
            if (m := _CLASS.match(lines[i])):
                return m.group(1)
            if here == 0:
                return None
            indent = here
    return None


def definition_names(lines: Sequence[str], start_line: int, end_line: int) -> list[str]:
    """The definitions in lines ``start_line``..``end_line`` (1-based, inclusive) of a file whose
    lines are ``lines``, each as words after its enclosing class's: ``Context.get_current_context``
    -> ``context: get current context``. At most :data:`MAX_NAMES`, in file order."""
    found: list[str] = []
    for i in range(max(0, start_line - 1), min(end_line, len(lines))):
        if (m := _DEF_NAME.match(lines[i])):
            name = words(m.group(1))
            if not name:
                continue
            owner = enclosing_class(lines, i)
            found.append(f"{words(owner)}: {name}" if owner and words(owner) else name)
            if len(found) == MAX_NAMES:
                break
    return found


def names_text(lines: Sequence[str], start_line: int, end_line: int) -> str | None:
    """The text a chunk's name vector embeds (:func:`definition_names` joined by
    :data:`SEPARATOR`), or None when the chunk defines nothing."""
    names = definition_names(lines, start_line, end_line)
    return SEPARATOR.join(names) if names else None
