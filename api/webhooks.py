"""Push webhooks: verify who sent them, and find the registered repository a push is for.

GitHub signs the raw body with HMAC-SHA256 under the webhook's secret and sends
``X-Hub-Signature-256: sha256=<hex>`` (GitHub docs, "Validating webhook deliveries"); GitLab
sends the secret token itself in ``X-Gitlab-Token`` (GitLab docs, "Webhooks"). Both are
compared with ``hmac.compare_digest``. Each delivery has an id (``X-GitHub-Delivery``,
``X-Gitlab-Event-UUID``/``Idempotency-Key``), remembered so that a redelivery enqueues nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from indexing.state import RepoRecord


def github_signature(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body`` signed with ``secret``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def github_signature_valid(secret: bytes, body: bytes, header: str | None) -> bool:
    """True when ``header`` is the signature of the raw ``body`` under ``secret`` (constant-time)."""
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(github_signature(secret, body), header)


def gitlab_token_valid(secret: bytes, header: str | None) -> bool:
    """True when ``header`` (``X-Gitlab-Token``) equals ``secret`` (constant-time)."""
    return header is not None and hmac.compare_digest(secret, header.encode("utf-8"))


def normalised_url(url: str) -> str:
    """A git URL in a form two spellings of one repository share: lower-case host, no user,
    no trailing slash or ``.git``. (``https://github.com/Org/Repo.git`` and
    ``https://github.com/Org/Repo`` are the same repository; the path keeps its case.)"""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    path = path[:-4] if path.endswith(".git") else path
    host = (parts.hostname or "").lower()
    return f"{parts.scheme.lower()}://{host}{path}" if parts.scheme != "file" else f"file://{path}"


@dataclass(frozen=True, slots=True)
class Push:
    """What a push event says: the repository's URLs, the branch pushed and the new head."""

    urls: tuple[str, ...]
    branch: str | None  # None: a tag or another kind of ref
    after: str


def github_push(payload: dict) -> Push:
    """The :class:`Push` of a GitHub ``push`` payload (GitHub docs, "Webhook events: push").
    Raises ValueError (answered 422) when the payload lacks ``ref`` or ``repository``."""
    repo = payload.get("repository")
    ref = payload.get("ref")
    if not isinstance(repo, dict) or not isinstance(ref, str):
        raise ValueError("a push payload has `ref` and `repository`")
    urls = tuple(u for u in (repo.get(k) for k in ("clone_url", "ssh_url", "git_url", "html_url", "url"))
                 if isinstance(u, str) and u)
    return Push(urls, ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None,
                str(payload.get("after") or ""))


def gitlab_push(payload: dict) -> Push:
    """The :class:`Push` of a GitLab ``Push Hook`` payload. Raises ValueError when it lacks
    ``ref`` or ``project``/``repository``."""
    project = payload.get("project") or payload.get("repository")
    ref = payload.get("ref")
    if not isinstance(project, dict) or not isinstance(ref, str):
        raise ValueError("a push payload has `ref` and `project`")
    urls = tuple(u for u in (project.get(k) for k in ("git_http_url", "git_ssh_url", "http_url", "ssh_url",
                                                       "web_url", "url"))
                 if isinstance(u, str) and u)
    return Push(urls, ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None,
                str(payload.get("after") or payload.get("checkout_sha") or ""))


def pushed_repository(push: Push, repos: list[RepoRecord]) -> RepoRecord | None:
    """The registered repository (added by URL) the push is for, when the pushed branch is
    the one it follows; None otherwise (acknowledged and ignored)."""
    if push.branch is None:
        return None
    wanted = {normalised_url(u) for u in push.urls}
    for record in repos:
        if record.url and normalised_url(record.url) in wanted and record.branch == push.branch:
            return record
    return None


class PushTargets:
    """The registered repositories a push may be for, from ``load()`` (the state), read again
    when a push names none of them and the last read is older than ``min_age`` seconds (a
    repository added a moment ago is found; a stream of pushes for unknown repositories costs
    one read a ``min_age``). Thread-safe: the API answers webhooks from a thread pool."""

    def __init__(self, load: Callable[[], list[RepoRecord]], min_age: float) -> None:
        self._load, self._min_age = load, min_age
        self._records: list[RepoRecord] = []
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def for_push(self, push: Push) -> RepoRecord | None:
        """The repository ``push`` is for (:func:`pushed_repository`), or None."""
        with self._lock:  # matching and reloading together: a request never sees a half-made answer
            found = pushed_repository(push, self._records)
            if found is None and time.monotonic() - self._read_at > self._min_age:
                self._records, self._read_at = self._load(), time.monotonic()
                found = pushed_repository(push, self._records)
            return found


class DeliveryLog:
    """Which webhook deliveries were seen, for ``ttl`` seconds: in Redis (``SET NX EX``, shared
    by every API process) when a client is given, else in this process's memory."""

    def __init__(self, redis_client, ttl: int) -> None:
        self.redis, self.ttl = redis_client, ttl
        self._seen: dict[str, float] = {}

    def first_time(self, source: str, delivery: str) -> bool:
        """True the first time ``delivery`` of ``source`` is seen (and records it); False for a
        redelivery. Raises redis' errors when Redis cannot be reached (the API answers 503)."""
        key = f"codeindex:webhook:{source}:{delivery}"
        if self.redis is not None:
            return bool(self.redis.set(key, "1", nx=True, ex=self.ttl))
        now = time.monotonic()
        self._seen = {k: t for k, t in self._seen.items() if t > now}
        if key in self._seen:
            return False
        self._seen[key] = now + self.ttl
        return True

    def forget(self, source: str, delivery: str) -> None:
        """Forget ``delivery`` (its sync could not be enqueued: a redelivery should try again)."""
        key = f"codeindex:webhook:{source}:{delivery}"
        if self.redis is not None:
            self.redis.delete(key)
        else:
            self._seen.pop(key, None)
