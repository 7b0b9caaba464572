"""The names a chunk defines, as words: the text of a chunk's second vector, its *name vector*.

A small embedding model blurs identifiers into the code around them, and a function's purpose
is often said best by its name: ``get_current_context`` in a class ``Context`` reads as
"context: get current context", which a query such as "Return the current context." is close
to. Each chunk that defines something (``def``, ``class``, ``function``, ``fn``, ``func`` at the
start of a line) gets one more embedded text: its definitions' names split into words, each
after its enclosing class (by indentation), joined by ``", "`` (:meth:`Definitions.text`). Search then
re-ranks the nearest chunks by ``cosine(query, chunk) + weight * cosine(query, name vector)``
(:func:`indexing.search.search`, ``CODEINDEX_SEARCH_NAME_WEIGHT``).

Measured by bench/search.py (docs/search.md): on click, MRR@10 0.378 -> 0.516 with weight 0.3
(re-ranking the top 50 chunks equals scoring every chunk there); one vector per chunk of its
names joined scores as well as one vector per definition with the best one taken, at half the
vectors and with no second table.
"""

from __future__ import annotations

import bisect
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


class Definitions:
    """The definitions of one file, found in one pass over its lines (linear in the file: a
    2 MB file of 50,000 lines takes as long as reading it).

    Each definition is named as words after its enclosing class: the nearest less indented
    line above it, then that line's, and so on, until one opens a class (its name) or one at
    indentation 0 does not (no class). ``Context.get_current_context`` ->
    ``context: get current context``.
    """

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines: list[int] = []  # 0-based line numbers of the definitions, ascending
        self.names: list[str] = []
        ancestors: list[tuple[int, str | None]] = []  # (indent, class name or None), indents ascending
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            indent = _indent(line)
            while ancestors and ancestors[-1][0] >= indent:
                ancestors.pop()
            if (m := _DEF_NAME.match(line)) and (name := words(m.group(1))):
                owner = None
                for above, cls in reversed(ancestors):
                    if cls is not None or above == 0:
                        owner = cls
                        break
                self.lines.append(i)
                self.names.append(f"{words(owner)}: {name}" if owner and words(owner) else name)
            cls_match = _CLASS.match(line)
            ancestors.append((indent, cls_match.group(1) if cls_match else None))

    def within(self, start_line: int, end_line: int) -> list[str]:
        """The definitions in lines ``start_line``..``end_line`` (1-based, inclusive), in file
        order, at most :data:`MAX_NAMES`."""
        first = bisect.bisect_left(self.lines, start_line - 1)
        last = bisect.bisect_right(self.lines, end_line - 1)
        return self.names[first:min(last, first + MAX_NAMES)]

    def text(self, start_line: int, end_line: int) -> str | None:
        """The text a chunk's name vector embeds (:meth:`within` joined by :data:`SEPARATOR`),
        or None when the chunk defines nothing."""
        names = self.within(start_line, end_line)
        return SEPARATOR.join(names) if names else None

