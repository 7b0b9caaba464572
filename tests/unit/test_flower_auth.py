"""Flower's authentication from the settings (workers/flower.py): basic-auth users from the
setting or its file, Flower's OAuth variables, and errors that never quote a password."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config.settings import Settings
from indexing.errors import UsageError
from workers.flower import auth_environment, basic_auth_users, oauth_environment

OAUTH = {"flower_auth": r".*@example\.com", "flower_auth_provider": "flower.views.auth.GithubLoginHandler",
         "flower_oauth2_key": "client-id", "flower_oauth2_secret": "client-secret",
         "flower_oauth2_redirect_uri": "https://flower.example.com/login"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Flower setting from this machine's environment."""
    for name in [n for n in os.environ if n.upper().startswith(("FLOWER_", "CODEINDEX_FLOWER_"))]:
        monkeypatch.delenv(name)


def test_users_from_the_setting_and_from_its_file(clean_env, tmp_path: Path) -> None:
    inline = Settings(flower_basic_auth="ann:pw:with:colons, bob:x2")
    assert basic_auth_users(inline) == ["ann:pw:with:colons", "bob:x2"]
    assert "pw:with" not in repr(inline) and "pw:with" not in str(inline.model_dump())
    users = tmp_path / "users"
    users.write_text("ann:one\n\n  bob:two  \n")
    assert basic_auth_users(Settings(flower_basic_auth_file=users)) == ["ann:one", "bob:two"]
    assert auth_environment(Settings(flower_basic_auth_file=users)) == {"FLOWER_BASIC_AUTH": "ann:one,bob:two"}
    assert basic_auth_users(Settings()) == [] and auth_environment(Settings()) == {}
    assert basic_auth_users(Settings(flower_basic_auth="  ")) == []


def test_the_environment_names_are_read(clean_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ann:from-flower")
    assert basic_auth_users(Settings()) == ["ann:from-flower"]
    monkeypatch.setenv("CODEINDEX_FLOWER_BASIC_AUTH", "ann:ours")
    assert basic_auth_users(Settings()) == ["ann:ours"]


@pytest.mark.parametrize("entry, problem", [
    ("ann", "user 1 is not user:password"),
    ("ann:", "user 1 is not user:password"),
    (":secret-pw", "user 1 is not user:password"),
    ("ann:ok\nbob:has,comma-pw", "user 2 holds a ','"),
    ("\n\n", "names no user:password"),
])
def test_bad_users_are_refused_without_quoting_them(clean_env, tmp_path: Path, entry: str, problem: str) -> None:
    users = tmp_path / "users"
    users.write_text(entry)
    with pytest.raises(UsageError, match=problem) as caught:
        basic_auth_users(Settings(flower_basic_auth_file=users))
    assert "secret-pw" not in str(caught.value) and "comma-pw" not in str(caught.value)


def test_file_errors_and_both_settings(clean_env, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read CODEINDEX_FLOWER_BASIC_AUTH_FILE .*No such file"):
        basic_auth_users(Settings(flower_basic_auth_file=tmp_path / "missing"))
    users = tmp_path / "users"
    users.write_text("ann:pw")
    with pytest.raises(UsageError, match="set one of"):
        basic_auth_users(Settings(flower_basic_auth="bob:pw", flower_basic_auth_file=users))


def test_oauth_needs_every_part(clean_env) -> None:
    assert oauth_environment(Settings(**OAUTH)) == {
        "FLOWER_AUTH": r".*@example\.com", "FLOWER_AUTH_PROVIDER": "flower.views.auth.GithubLoginHandler",
        "FLOWER_OAUTH2_KEY": "client-id", "FLOWER_OAUTH2_SECRET": "client-secret",
        "FLOWER_OAUTH2_REDIRECT_URI": "https://flower.example.com/login"}
    partial = {k: v for k, v in OAUTH.items() if k not in ("flower_oauth2_secret", "flower_auth_provider")}
    with pytest.raises(UsageError, match="needs CODEINDEX_FLOWER_AUTH_PROVIDER, CODEINDEX_FLOWER_OAUTH2_SECRET"):
        oauth_environment(Settings(**partial))
    with pytest.raises(UsageError, match="not a pattern Flower accepts"):
        oauth_environment(Settings(**{**OAUTH, "flower_auth": "*@*.example.com"}))
    both = auth_environment(Settings(**OAUTH, flower_basic_auth="ann:pw"))
    assert both["FLOWER_BASIC_AUTH"] == "ann:pw" and both["FLOWER_AUTH"] == OAUTH["flower_auth"]
