"""Line-aware chunking whose boundaries survive edits elsewhere in the file.

A file is cut into blocks at lines that start a new unit at the file's outer indentation
and follow a blank line (top-level definitions, paragraphs). Blocks are packed into chunks
up to the model's token limit, but a block that starts with a *definition* (``def``,
``class``, ``function``, ``fn``, a decorator; a ``#`` heading in Markdown) always opens a new
chunk: packing restarts there, so an edit can move chunk boundaries only up to the next
definition, and unchanged code keeps unchanged chunks (and its cached embeddings). A block
too large for one chunk is split the same way one indentation level deeper, then at blank
lines, then by lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TokenCounter = Callable[[Sequence[str]], list[int]]
#: The version of the chunk boundaries below: an index artifact records it, and one chunked by
#: another version is refused (its chunks would not match what the next sync cuts). Raise it
#: with any change that moves a boundary.
CHUNKER_VERSION = 1

_DEFINITION = re.compile(
    r"^(?:@\w"  # decorator
    r"|(?:async\s+)?def\s|class\s|(?:export\s+)?(?:default\s+)?(?:async\s+)?function[\s*]"
    r"|func\s|fn\s|pub(?:\([^)]*\))?\s|impl[\s<]|struct\s|enum\s|interface\s|trait\s|type\s\w+\s*[=<{]"
    r"|module\s|namespace\s|(?:public|private|protected|internal|static|abstract|final|sealed)\s"
    r"|\[[^\]]+\]\s*$)"
)
# Headings are definitions in Markdown only: elsewhere ``# ...`` is a comment.
_HEADING = re.compile(r"^#{1,6}\s")
_HEADING_LANGUAGES = frozenset({"markdown"})
_CLOSER = re.compile(r"^(?:[)\]}]|end\b|else\b|elif\b|except\b|finally\b|catch\b)")


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a file: lines ``start_line``..``end_line`` (1-based, inclusive)."""

    index: int
    start_line: int
    end_line: int
    text: str


def chunk_text(text: str, max_tokens: int, count_tokens: TokenCounter, language: str = "text") -> list[Chunk]:
    """Cut ``text`` into chunks of at most ``max_tokens`` tokens (by ``count_tokens``).

    ``language`` (as :func:`indexing.languages.language_of` names it) decides whether
    ``#`` headings open chunks (Markdown) or are comments (everything else).
    ``count_tokens`` maps a list of lines to their token counts (the embedder's tokenizer).
    A single line longer than the limit becomes a chunk of its own (the model truncates it).
    Blank lines between chunks belong to no chunk. Returns chunks in file order, indexed
    from 0; an empty or all-blank text gives no chunk.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be >= 1")
    lines = split_lines(text)
    if not lines:
        return []
    tokens = count_tokens(lines)
    chunker = _Chunker(lines, tokens, max_tokens, language in _HEADING_LANGUAGES)
    spans = chunker.pack(chunker.blocks(0, len(lines)))
    return [
        Chunk(i, a + 1, b, "\n".join(lines[a:b]))
        for i, (a, b) in enumerate(spans)
    ]


def split_lines(text: str) -> list[str]:
    """Split at ``\n`` only (a trailing ``\r`` is dropped), as git and editors count lines.

    ``str.splitlines`` would also split at form feeds, ``\x85`` and ``\u2028``, and line
    numbers would stop matching the file.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


class _Chunker:
    def __init__(self, lines: list[str], tokens: list[int], max_tokens: int, headings: bool) -> None:
        self.lines, self.tokens, self.max, self.headings = lines, tokens, max_tokens, headings
        self.blank = [not line.strip() for line in lines]
        self.indent = [len(line) - len(line.lstrip()) for line in lines]

    def size(self, a: int, b: int) -> int:
        return sum(self.tokens[a:b])

    def trim(self, a: int, b: int) -> tuple[int, int] | None:
        while a < b and self.blank[a]:
            a += 1
        while b > a and self.blank[b - 1]:
            b -= 1
        return (a, b) if a < b else None

    def blocks(self, a: int, b: int, level: int | None = None) -> list[tuple[int, int]]:
        """Split [a, b) at non-blank lines of indentation ``level`` that follow a blank line."""
        span = self.trim(a, b)
        if span is None:
            return []
        a, b = span
        if level is None:
            level = min(self.indent[i] for i in range(a, b) if not self.blank[i])
        starts = [a] + [
            i for i in range(a + 1, b)
            if not self.blank[i] and self.blank[i - 1] and self.indent[i] == level
            and not _CLOSER.match(self.lines[i].lstrip())
        ]
        out = []
        for s, e in zip(starts, starts[1:] + [b]):
            span = self.trim(s, e)
            if span:
                out.append(span)
        return out

    def is_definition(self, a: int) -> bool:
        line = self.lines[a].lstrip()
        return bool(_DEFINITION.match(line) or (self.headings and _HEADING.match(line)))

    def pack(self, blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Greedy packing that restarts at every definition (the stable anchors)."""
        out: list[tuple[int, int]] = []
        cur: tuple[int, int] | None = None
        cur_size = 0
        for a, b in blocks:
            size = self.size(a, b)
            if size > self.max:
                if cur:
                    out.append(cur)
                cur, cur_size = None, 0
                out.extend(self.split_large(a, b))
                continue
            if cur and (self.is_definition(a) or cur_size + size > self.max):
                out.append(cur)
                cur, cur_size = None, 0
            cur = (cur[0], b) if cur else (a, b)
            cur_size += size
        if cur:
            out.append(cur)
        return out

    def split_large(self, a: int, b: int) -> list[tuple[int, int]]:
        """Split an oversized block: one level deeper, else at blank lines, else by lines."""
        deeper = [self.indent[i] for i in range(a + 1, b) if not self.blank[i] and self.indent[i] > self.indent[a]]
        if deeper:
            sub = self.blocks(a, b, level=min(deeper))
            if len(sub) > 1:
                return self.pack(sub)
        paragraphs = self._paragraphs(a, b)
        if len(paragraphs) > 1:
            return self.pack(paragraphs)
        return self._by_lines(a, b)

    def _paragraphs(self, a: int, b: int) -> list[tuple[int, int]]:
        starts = [a] + [i for i in range(a + 1, b) if not self.blank[i] and self.blank[i - 1]]
        return [s for s in (self.trim(s, e) for s, e in zip(starts, starts[1:] + [b])) if s]

    def _by_lines(self, a: int, b: int) -> list[tuple[int, int]]:
        out, start, size = [], a, 0
        for i in range(a, b):
            if i > start and size + self.tokens[i] > self.max:
                span = self.trim(start, i)
                if span:
                    out.append(span)
                start, size = i, 0
            size += self.tokens[i]
        span = self.trim(start, b)
        if span:
            out.append(span)
        return out
