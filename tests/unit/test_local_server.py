"""config/local.py (the thin client's settings) agrees with config/settings.py and cli.common.setup."""

from __future__ import annotations

from pathlib import Path

from cli.client import _reads_stdin
from config.local import daemon_on_demand, embedded, local_server, option_value
from config.settings import Settings
from tests.conftest import git


def test_defaults_and_names_are_the_settings() -> None:
    fields = Settings.model_fields
    assert fields["daemon"].default is False and daemon_on_demand({}) is False
    assert daemon_on_demand({"CODEINDEX_DAEMON": "true"}) and Settings(daemon="true").daemon
    for env in ({}, {"CODEINDEX_BROKER_URL": "memory://"}, {"CODEINDEX_BROKER_URL": "redis://127.0.0.1:6379/0"}):
        assert embedded(env) == Settings(**{k.removeprefix("CODEINDEX_").lower(): v for k, v in env.items()}).eager


def test_home_is_the_one_the_cli_uses(tmp_path: Path) -> None:
    root = tmp_path / "work"
    (root / "src" / "deep").mkdir(parents=True)
    git(root, "init", "-q")
    inside = root / "src" / "deep"
    expected = Settings().home_for(root)
    assert local_server(["sync"], inside, {}).home == expected == root.resolve() / ".codeindex"
    assert local_server(["status", "--root", "../.."], inside, {}).home == expected
    assert local_server(["status", f"--root={root}"], tmp_path, {}).home == expected
    outside = tmp_path / "plain"
    outside.mkdir()
    assert local_server(["search", "x"], outside, {}).home == outside.resolve() / ".codeindex"
    relative = local_server(["sync"], inside, {"CODEINDEX_HOME": "idx"}).home
    assert relative == Settings(home=inside / "idx").home_for(root) == inside.resolve() / "idx"


def test_option_values_and_which_commands_read_stdin() -> None:
    assert option_value(["a", "--root", "x", "--root=y"], "--root") == "y"
    assert option_value(["--rooted", "x"], "--root") is None
    assert _reads_stdin(["sync"]) and _reads_stdin(["sync", "--stdin", "-0"]) and _reads_stdin(["sync", "--json"])
    assert not _reads_stdin(["sync", "--detect-changes"]) and not _reads_stdin(["sync", "--all"])
    assert not _reads_stdin(["sync", "--changes", "f"]) and not _reads_stdin(["sync", "--changes=f"])
    assert _reads_stdin(["search", "--queries", "-"]) and not _reads_stdin(["search", "--queries", "q.txt"])
    assert not _reads_stdin(["status"]) and not _reads_stdin(["export"])
