"""Repositories served by URL for tests: a bare repository (``file://``) whose history is built
from real source trees (the installed celery and kombu packages) by commits that add, modify,
rename and delete files, and the fresh embedded full index of any of its commits, the yardstick
every index must equal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import celery
import kombu

from tests.conftest import copy_tree, git

CLI = str(Path(sys.executable).with_name("codeindex"))


@dataclass
class History:
    """A work repository at ``work``, pushed to the bare ``bare`` (``url``: ``file://``).

    :meth:`commit` applies one step and pushes it; ``commits`` lists the pushed commits, oldest
    first. ``steps`` are the changes still to replay (:meth:`replay`)."""

    work: Path
    bare: Path
    branch: str = "main"
    commits: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, message: str) -> str:
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "--allow-empty", "-m", message)
        git(self.work, "push", "-q", str(self.bare), f"HEAD:refs/heads/{self.branch}")
        head = git(self.work, "rev-parse", "HEAD").strip()
        self.commits.append(head)
        return head

    def replay(self) -> Iterator[str]:
        """Five more commits, each yielded once pushed: modify, add, rename and delete, then all
        four kinds at once (``list(history.replay())`` makes them all)."""
        py = sorted(p for p in self.work.rglob("*.py") if ".git" not in p.parts)
        py[0].write_text(py[0].read_text() + "\n\ndef added_by_replay():\n    return 'modified'\n")
        yield self.commit("modify one file")
        source = Path(kombu.__file__).parent / "transport"
        copy_tree(source, self.work / "kombu_transport", 6)
        yield self.commit("add six files")
        git(self.work, "mv", py[1].relative_to(self.work).as_posix(), "renamed_module.py")
        yield self.commit("rename one file")
        py[2].unlink()
        yield self.commit("delete one file")
        py[3].write_text(py[3].read_text().replace("def ", "def  ", 1))
        git(self.work, "mv", py[4].relative_to(self.work).as_posix(), "kombu_transport/moved.py")
        py[5].unlink()
        (self.work / "brand_new.py").write_text("VALUE = 42\n")
        yield self.commit("modify, rename, delete and add at once")


def make_history(workdir: Path, name: str = "repo", *, celery_files: int = 30, kombu_files: int = 20,
                 branch: str = "main") -> History:
    """A history of real code with one first commit, pushed to ``<workdir>/<name>.git``."""
    work = workdir / f"{name}-work"
    work.mkdir(parents=True)
    git(work, "init", "-q", "-b", branch)
    copy_tree(Path(celery.__file__).parent / "app", work / "celery_app", celery_files)
    copy_tree(Path(kombu.__file__).parent, work / "kombu", kombu_files)
    (work / ".gitignore").write_text("*.log\nbuild/\n")
    bare = workdir / f"{name}.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", branch, str(bare)], check=True, timeout=60)
    history = History(work, bare, branch)
    history.commit("real sources")
    return history


def fresh_export(url: str, commit: str, workdir: Path, repo_id: str, extra_env: dict | None = None) -> list[dict]:
    """A fresh full index of ``commit`` of the repository at ``url``: a clean checkout indexed by
    path in the embedded mode, in a new home (``codeindex export`` lines, sorted by id)."""
    clone = workdir / f"checkout-{uuid.uuid4().hex[:8]}"
    subprocess.run(["git", "clone", "-q", url, str(clone)], check=True, capture_output=True, timeout=120)
    git(clone, "checkout", "-q", commit)
    home = workdir / f"fresh-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEINDEX_")}
    env.update({"CODEINDEX_EMBEDDER": "hashing", "CODEINDEX_HOME": str(home), **(extra_env or {})})
    try:
        subprocess.run([CLI, "sync", "--all", "--root", str(clone), "--repo", repo_id, "--format", "json"],
                       env=env, check=True, capture_output=True, timeout=300)
        export = subprocess.run([CLI, "export", "--root", str(clone)], env=env, check=True, capture_output=True,
                                text=True, timeout=120)
    finally:
        shutil.rmtree(clone, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    return [json.loads(line) for line in export.stdout.splitlines() if line.strip()]


def differences(current: list[dict], fresh: list[dict]) -> str:
    """What differs between two exports, for a failure message ("" when they are equal)."""
    if current == fresh:
        return ""
    fresh_ids = {o["id"] for o in fresh}
    current_ids = [o["id"] for o in current]
    extra = sorted((o["path"], o["chunk_index"]) for o in current if o["id"] not in fresh_ids)
    missing = sorted((o["path"], o["chunk_index"]) for o in fresh if o["id"] not in set(current_ids))
    changed = sorted(o["path"] for o, f in zip(current, fresh) if o != f)
    return (f"{len(current)} objects ({len(set(current_ids))} distinct ids) where a fresh index has {len(fresh)}; "
            f"extra {extra[:10]}; missing {missing[:10]}; differing {changed[:10]}")
