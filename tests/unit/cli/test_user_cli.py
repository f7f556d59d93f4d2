"""``cxr-orient user create|list|disable|set-password`` through click's CliRunner, on
SQLite: what an operator types in the README, and the clean errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import main
from cxr_orient.users import LoginRefused, authenticate
from db import crud
from db.session import session_scope
from tests.utils.embedded import embedded_setup


@pytest.fixture(autouse=True)
def _embedded(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded_setup(tmp_path, configure, monkeypatch)


def cli(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin, catch_exceptions=True)


def _login(name: str, password: str) -> str:
    with session_scope() as session:
        return authenticate(
            session, username=name, password=password, address="cli", max_failures=5, window_s=60
        ).role.value


def test_create_list_set_password_disable() -> None:
    made = cli(
        "user", "create", "Alice", "--role", "admin", "--password-stdin", stdin="a long password!\n"
    )
    assert made.exit_code == 0, made.output
    assert "user alice (admin) created" in made.output
    prompted = cli("user", "create", "bob", stdin="another password\nanother password\n")
    assert prompted.exit_code == 0, prompted.output
    assert _login("alice", "a long password!") == "admin"
    assert _login("bob", "another password") == "reviewer"
    listed = cli("user", "list").output.splitlines()
    assert [line.split()[:3] for line in listed] == [
        ["alice", "admin", "password"],
        ["bob", "reviewer", "password"],
    ]
    changed = cli("user", "set-password", "bob", "--password-stdin", stdin="a third one!!\n")
    assert changed.exit_code == 0, changed.output
    assert _login("bob", "a third one!!") == "reviewer"
    assert cli("user", "disable", "bob").exit_code == 0
    with pytest.raises(LoginRefused):
        _login("bob", "a third one!!")
    assert "DISABLED" in cli("user", "list").output


def test_sso_only_users_have_no_password() -> None:
    assert cli("user", "create", "carol", "--no-password").exit_code == 0
    with session_scope() as session:
        carol = crud.find_user(session, username="carol")
        assert carol is not None and carol.password_hash is None
    with pytest.raises(LoginRefused):
        _login("carol", "")


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("create", "x", "--password-stdin"), "short\n", "at least 12 characters"),
        (("create", "bad name", "--no-password"), None, "username 'bad name'"),
        (("disable", "nobody"), None, "no user named 'nobody'"),
        (("set-password", "nobody", "--no-password"), None, "no user named 'nobody'"),
    ],
    ids=["short-password", "bad-name", "disable-unknown", "password-unknown"],
)
def test_clean_errors(args: tuple[str, ...], stdin: str | None, message: str) -> None:
    result = cli("user", *args, stdin=stdin)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_a_user_twice_is_refused() -> None:
    assert cli("user", "create", "dan", "--no-password").exit_code == 0
    again = cli("user", "create", "DAN", "--no-password")
    assert again.exit_code != 0 and "a user named 'dan' exists" in again.output
