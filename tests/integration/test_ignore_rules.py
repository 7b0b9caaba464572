"""Ignore rules that change under an index: after random edits of ``.gitignore`` files (rules
added and removed, nested files, negations, anchored and directory patterns) on a real tree,
each committed and followed by an incremental sync, the index equals a fresh full index of the
same commit: newly ignored files are gone, newly un-ignored ones are in."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import celery
import kombu
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import copy_tree, export_index, git, sync
from tests.integration.test_sync_exact import fresh_full_index

#: Where the edited .gitignore files live: the root and directories of the tree below.
PLACES = ["", "kombu", "kombu/asynchronous", "celery_app"]
#: Rules built from the tree's real names, of every kind gitignore knows.
RULES = ["*.py", "__init__.py", "/kombu", "asynchronous/", "!__init__.py", "**/base*.py", "*utils*",
         "!kombu/asynchronous/", "timer.py", "/celery_app/*.py", "# a comment", "!**/timer.py", "[a-c]*.py"]

edits = st.lists(st.tuples(st.sampled_from(PLACES), st.sampled_from(RULES), st.booleans()),
                 min_size=1, max_size=3)


def build_tree(root: Path) -> None:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    copy_tree(Path(kombu.__file__).parent, root / "kombu", 24)
    copy_tree(Path(kombu.__file__).parent / "asynchronous", root / "kombu" / "asynchronous", 8)
    copy_tree(Path(celery.__file__).parent / "app", root / "celery_app", 10)
    (root / ".gitignore").write_text(".codeindex/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "tree")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=edits)
def test_random_ignore_rule_edits_keep_the_index_exact(steps, tmp_path: Path, index_home: Path) -> None:
    from config.settings import configure, get_settings
    from workers import runtime

    work = tmp_path / uuid.uuid4().hex[:8]
    root = work / "repo"
    build_tree(root)
    configure(home=work / "home", embedder=get_settings().embedder)
    runtime.reset()
    try:
        assert sync(root, "all")["errors"] == 0
        rules: dict[str, list[str]] = {place: [] for place in PLACES}
        for place, rule, add in steps:
            if add:
                rules[place].append(rule)
            elif rule in rules[place]:
                rules[place].remove(rule)
            else:
                rules[place] = rules[place][1:]  # remove the oldest, so every step edits something
            path = root / place / ".gitignore"
            base = [".codeindex/"] if place == "" else []
            path.write_text("\n".join(base + rules[place]) + "\n")
            git(root, "add", "-A", "-f", str(path))
            git(root, "commit", "-q", "--allow-empty", "-m", f"{'+' if add else '-'} {rule} in /{place}")
            summary = sync(root, "detect", force=True)
            assert summary["errors"] == 0, summary
            current, fresh = export_index(), fresh_full_index(root, work)
            assert [o["path"] for o in current] == [o["path"] for o in fresh], (steps, rules)
            assert current == fresh
    finally:
        configure(home=index_home, embedder="hashing")
        runtime.reset()
        shutil.rmtree(work, ignore_errors=True)
