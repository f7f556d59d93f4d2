"""cxr_orient.tokens and the `cxr-orient token` verbs: hashed storage, verification,
revocation, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import main
from cxr_orient.tokens import (
    LAST_USED_RESOLUTION,
    TOKEN_PREFIX,
    TokenError,
    create_token,
    hash_token,
    list_tokens,
    revoke_token,
    verify_token,
)
from db.models import ApiToken, utcnow
from db.session import session_scope
from tests.utils.embedded import embedded_setup


def test_hash_is_the_hex_sha256_of_the_token() -> None:
    assert hash_token("cxr_abc") == hashlib.sha256(b"cxr_abc").hexdigest()


def test_created_tokens_are_random_prefixed_and_stored_as_hashes_only(migrated_db: str) -> None:
    with session_scope() as session:
        first = create_token(session, name="pacs-1", scopes=["stow"])
        second = create_token(session, name="pacs-2", scopes=["stow"])
    assert first.startswith(TOKEN_PREFIX) and first != second
    assert len(first) - len(TOKEN_PREFIX) >= 43  # 32 bytes, base64url
    with session_scope() as session:
        rows = list(session.scalars(select(ApiToken).order_by(ApiToken.name)))
        assert [r.token_sha256 for r in rows] == [hash_token(first), hash_token(second)]
        for row in rows:
            assert first not in (row.name, row.scopes, row.token_sha256)
        assert rows[0].scopes == "stow" and rows[0].revoked_at is None


def test_verify_accepts_the_token_and_records_its_use(migrated_db: str) -> None:
    with session_scope() as session:
        token = create_token(session, name="pacs", scopes=["stow"])
    with session_scope() as session:
        info = verify_token(session, token=token)
    assert info is not None and info.name == "pacs" and info.scopes == ("stow",)
    with session_scope() as session:
        used = list_tokens(session)[0].last_used_at
    assert used is not None
    # Within the resolution a use is not written again; after it, it is.
    with session_scope() as session:
        verify_token(session, token=token, now=used + LAST_USED_RESOLUTION / 2)
    with session_scope() as session:
        assert list_tokens(session)[0].last_used_at == used
    later = used + LAST_USED_RESOLUTION + timedelta(seconds=1)
    with session_scope() as session:
        verify_token(session, token=token, now=later)
    with session_scope() as session:
        assert list_tokens(session)[0].last_used_at == later


@pytest.mark.parametrize(
    "presented", ["", "cxr_", "cxr_wrong", "x" * 500], ids=["empty", "prefix", "wrong", "long"]
)
def test_verify_refuses_unknown_tokens(migrated_db: str, presented: str) -> None:
    with session_scope() as session:
        token = create_token(session, name="pacs", scopes=["stow"])
        assert verify_token(session, token=presented) is None
        assert verify_token(session, token=token[:-1]) is None


def test_a_revoked_token_is_refused_and_kept_listed(migrated_db: str) -> None:
    with session_scope() as session:
        token = create_token(session, name="pacs", scopes=["stow"])
    with session_scope() as session:
        revoke_token(session, name="pacs")
    with session_scope() as session:
        assert verify_token(session, token=token) is None
        listed = list_tokens(session)
        assert [t.name for t in listed] == ["pacs"] and listed[0].revoked_at is not None
        with pytest.raises(TokenError, match="revoked already"):
            revoke_token(session, name="pacs")
        with pytest.raises(TokenError, match="no token named"):
            revoke_token(session, name="other")
        with pytest.raises(TokenError, match="exists"):
            create_token(session, name="pacs", scopes=["stow"])


@pytest.mark.parametrize(
    "name, scopes",
    [("", ["stow"]), ("a b", ["stow"]), ("../x", ["stow"]), ("ok", ["admin"]), ("ok", [])],
    ids=["empty-name", "space", "path", "unknown-scope", "no-scope"],
)
def test_bad_names_and_scopes_are_refused(migrated_db: str, name: str, scopes: list[str]) -> None:
    with session_scope() as session, pytest.raises(TokenError):
        create_token(session, name=name, scopes=scopes)


def test_token_verbs(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded_setup(tmp_path, configure, monkeypatch)
    runner = CliRunner()
    created = runner.invoke(main, ["token", "create", "modality-1", "--scope", "stow"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith(TOKEN_PREFIX) and "\n" not in token
    with session_scope() as session:
        assert verify_token(session, token=token) is not None
    again = runner.invoke(main, ["token", "create", "modality-1"])
    assert again.exit_code != 0 and "exists" in again.output
    listed = runner.invoke(main, ["token", "list"])
    assert listed.exit_code == 0 and "modality-1" in listed.stdout and token not in listed.stdout
    assert "last used 20" in listed.stdout and "REVOKED" not in listed.stdout
    revoked = runner.invoke(main, ["token", "revoke", "modality-1"])
    assert revoked.exit_code == 0, revoked.output
    assert (
        "REVOKED " + utcnow().strftime("%Y-%m-%d") in runner.invoke(main, ["token", "list"]).stdout
    )
    with session_scope() as session:
        assert verify_token(session, token=token) is None
    missing = runner.invoke(main, ["token", "revoke", "nobody"])
    assert missing.exit_code != 0 and "no token named" in missing.output
