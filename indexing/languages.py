"""The language of a file, from its name (recorded as the ``language`` property)."""

from __future__ import annotations

from pathlib import PurePosixPath

_BY_SUFFIX = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript", ".go": "go", ".rs": "rust",
    ".java": "java", ".kt": "kotlin", ".scala": "scala", ".c": "c", ".h": "c", ".cc": "cpp",
    ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".cs": "csharp", ".rb": "ruby", ".php": "php",
    ".swift": "swift", ".m": "objective-c", ".sh": "shell", ".bash": "shell", ".zsh": "shell",
    ".sql": "sql", ".md": "markdown", ".rst": "restructuredtext", ".txt": "text", ".json": "json",
    ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".ini": "ini", ".cfg": "ini", ".xml": "xml",
    ".html": "html", ".htm": "html", ".css": "css", ".scss": "scss", ".lua": "lua", ".pl": "perl",
    ".r": "r", ".jl": "julia", ".ex": "elixir", ".exs": "elixir", ".erl": "erlang", ".hs": "haskell",
    ".ml": "ocaml", ".clj": "clojure", ".tf": "terraform", ".proto": "protobuf", ".pyx": "cython",
}
_BY_NAME = {"Dockerfile": "dockerfile", "Makefile": "make", "CMakeLists.txt": "cmake", "Jenkinsfile": "groovy"}


def language_of(path: str) -> str:
    """Return a lowercase language name for ``path`` (``"text"`` when unknown)."""
    p = PurePosixPath(path)
    return _BY_NAME.get(p.name) or _BY_SUFFIX.get(p.suffix.lower(), "text")
