"""The layering of the code (pyproject's import-linter contracts) holds, and the contracts catch
what they are there to catch: an upward import and a cycle inside a folder, each named. Also
the rules of the task layer that a reader checks by eye: every task declares its kind and has
a short body, and product code hides no import inside a function without saying why."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("config", "indexing", "workers", "tasks", "beat", "api", "cli")
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(where: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the packages under ``where`` with its pyproject's contracts."""
    return subprocess.run([LINT_IMPORTS, "--no-cache", str(where / "pyproject.toml")], cwd=where,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(where)}, capture_output=True,
                          text=True, timeout=120)


def test_the_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.fixture
def copy_of_the_code(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint_imports(tmp_path).returncode == 0
    return tmp_path


def append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


@pytest.mark.parametrize(("module", "added", "broken", "named"), [
    ("indexing/ids.py", "import workers.runtime  # an upward import",
     "Layers: config < indexing < workers < tasks < beat < api < cli BROKEN", "indexing.ids -> workers.runtime"),
    ("indexing/sync.py", "import celery",
     "The domain (indexing) imports no Celery and no layer above it BROKEN", "indexing.sync -> celery"),
    ("workers/registry.py", "def _hidden():\n    from workers import runtime  # inside a function, still seen",
     "No import cycle inside a folder BROKEN", "- .registry -> .runtime (1 import)"),
], ids=["upward import", "celery in the domain", "cycle inside a folder"])
def test_a_broken_contract_fails_and_names_the_import(copy_of_the_code: Path, module: str, added: str, broken: str,
                                                      named: str) -> None:
    append(copy_of_the_code / module, added)
    result = lint_imports(copy_of_the_code)
    assert result.returncode == 1
    assert broken in result.stdout and named in result.stdout, result.stdout


def _product_modules():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_every_task_declares_its_kind_and_has_a_short_body() -> None:
    tasks = 0
    for path in sorted((ROOT / "tasks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "codeindex_task":
                    tasks += 1
                    assert {k.arg for k in decorator.keywords} >= {"kind"}, f"{path.name}: {node.name} has no kind"
                    body = node.body[1:] if isinstance(node.body[0], ast.Expr) else node.body  # the docstring
                    lines = body[-1].end_lineno - body[0].lineno + 1
                    assert lines <= 10, f"{path.name}: the body of {node.name} is {lines} lines"
    assert tasks >= 7  # plan, commit, fail, batch, check, rebalance, retention


def test_the_router_reads_kinds_not_names() -> None:
    source = (ROOT / "workers" / "routing.py").read_text()
    assert "codeindex." not in source and "startswith" not in source


def test_function_local_imports_say_why() -> None:
    """An import inside a function is allowed for a heavy or optional dependency, with a comment
    saying so on its line; never to dodge a cycle (import-linter sees those anyway)."""
    unexplained = []
    for path in _product_modules():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom) and "#" not in lines[inner.lineno - 1]:
                        unexplained.append(f"{path.relative_to(ROOT)}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
    assert not unexplained, "\n".join(unexplained)
