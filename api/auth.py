"""Bearer tokens of the HTTP trigger: kept only as SHA-256 hashes, each with a scope.

A request's token is hashed and compared with every known hash by ``hmac.compare_digest``
(constant time, so the comparison does not tell how much of a hash matched). The ``write``
scope includes ``read``. RFC 6750 ("Bearer Token Usage") gives the header and the
``WWW-Authenticate`` answer of a 401.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from indexing.errors import UsageError


class Scope(StrEnum):
    """What a token may do: ``read`` the GET routes and search, ``write`` also enqueue and drain."""

    READ = "read"
    WRITE = "write"


@dataclass(frozen=True, slots=True)
class TokenHash:
    """One known token: the hex SHA-256 of its text, its scope and an optional name."""

    sha256: str
    scope: Scope
    name: str = ""


def hash_token(token: str) -> str:
    """The hex SHA-256 of ``token`` (UTF-8), the form tokens are kept in."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(scope: Scope) -> tuple[str, TokenHash]:
    """A new random token (32 bytes, URL-safe text) and its hash entry."""
    token = f"ci_{secrets.token_urlsafe(32)}"
    return token, TokenHash(hash_token(token), scope)


def _entry(scope: str, digest: str, name: str, where: str) -> TokenHash:
    digest = digest.lower().removeprefix("sha256:")
    if scope not in Scope.__members__.values():
        raise UsageError(f"{where}: scope {scope!r} is neither read nor write")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise UsageError(f"{where}: not a hex SHA-256 (64 hex digits; `codeindex api token` prints one)")
    return TokenHash(digest, Scope(scope), name)


def parse_tokens(entries: list[str], file: Path | None) -> list[TokenHash]:
    """The token hashes of the setting ``entries`` (``SCOPE:SHA256HEX`` each) and of ``file``
    (``SCOPE SHA256HEX [name]`` a line, ``#`` comments, blank lines ignored).

    Raises :class:`UsageError` naming the entry or line that is malformed (never its text: it
    might be a token pasted by mistake) or a file that cannot be read.
    """
    out = []
    for n, entry in enumerate(entries, 1):
        scope, _, digest = entry.partition(":")
        out.append(_entry(scope.strip(), digest.strip(), "", f"CODEINDEX_API_TOKENS entry {n}"))
    if file is not None:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read CODEINDEX_API_TOKENS_FILE {file}: {exc.strerror}") from None
        for n, line in enumerate(lines, 1):
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            if len(parts) < 2:
                raise UsageError(f"{file} line {n}: expected `SCOPE SHA256HEX [name]`")
            out.append(_entry(parts[0], parts[1], " ".join(parts[2:]), f"{file} line {n}"))
    return out


def authorize(known: list[TokenHash], token: str | None, needed: Scope) -> TokenHash | None:
    """The entry ``token`` matches when its scope allows ``needed``; None when the token is
    unknown (401). Raises PermissionError when the token is known but its scope is too small
    (403). Every known hash is compared, in constant time each."""
    if not token:
        return None
    digest = hash_token(token)
    match = None
    for entry in known:
        if hmac.compare_digest(entry.sha256, digest):
            match = entry
    if match is None:
        return None
    if needed is Scope.WRITE and match.scope is not Scope.WRITE:
        raise PermissionError(f"this token's scope is {match.scope}; {needed} is needed")
    return match
