"""Shared fixtures: real git repositories built from real source trees on this machine
(the installed celery and kombu packages), and an embedded index in a temporary home."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import celery
import kombu
import pytest

GIT_ENV = {
    "GIT_AUTHOR_NAME": "codeindex-tests", "GIT_AUTHOR_EMAIL": "tests@codeindex.invalid",
    "GIT_COMMITTER_NAME": "codeindex-tests", "GIT_COMMITTER_EMAIL": "tests@codeindex.invalid",
}


def git(root: Path, *args: str) -> str:
    """Run git in ``root`` and return its stdout (raises on failure)."""
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True,
                          env=env, timeout=60).stdout


def copy_tree(src: Path, dst: Path, limit: int | None = None) -> list[str]:
    """Copy the .py files under ``src`` to ``dst`` (at most ``limit``), return their relative paths."""
    copied = []
    for path in sorted(src.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(src)
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(rel.as_posix())
        if limit and len(copied) >= limit:
            break
    return copied


def make_real_repo(root: Path, celery_files: int = 40, kombu_files: int = 30) -> Path:
    """A git repository of real code: part of the installed celery and kombu sources, one commit."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    copy_tree(Path(celery.__file__).parent / "app", root / "celery_app", celery_files)
    copy_tree(Path(kombu.__file__).parent, root / "kombu", kombu_files)
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "real sources")
    return root


@pytest.fixture
def real_repo(tmp_path: Path) -> Path:
    """A fresh git repository of real celery and kombu sources."""
    return make_real_repo(tmp_path / "repo")


@pytest.fixture
def index_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An embedded index in a temporary home, with the feature-hashing embedder."""
    from config.settings import configure
    from workers import resources
    from workers.app import apply_settings

    home = tmp_path / "home"
    settings = configure(home=home, embedder="hashing")
    resources.reset()
    apply_settings(settings)
    yield home
    resources.reset()


def sync(root: Path, source: str = "paths", changes=(), repo_id: str = "repo", **options) -> dict:
    """Run one sync through the Celery tasks (eager, in-process) and return its summary."""
    from config.settings import get_settings
    from indexing.messages import SyncRequest
    from tasks.sync import plan

    request = SyncRequest(run_id=str(uuid.uuid4()), repo_id=repo_id, root=str(root), source=source,
                          collection=get_settings().collection, changes=list(changes), **options)
    return plan.apply_async(args=[request.model_dump(mode="json")]).get(disable_sync_subtasks=False)


def export_index(home: Path | None = None) -> list[dict]:
    """Every object of the current index, sorted by id (the ``codeindex export`` view)."""
    from config.settings import get_settings
    from workers import resources

    settings = get_settings()
    return list(resources.vector_store(settings, settings.collection).export())
