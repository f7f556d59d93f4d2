"""API tokens for machines (STOW-RS senders, scripts using the review and audit API):
created by ``cxr-orient token create``, sent as ``Authorization: Bearer <token>``, stored
as their SHA-256 only.

A token is 32 random bytes (``secrets.token_urlsafe``), shown once. Why a plain SHA-256
and not argon2 or bcrypt: those are slow on purpose so that a stolen hash of a *password*
(a few dozen bits of entropy) cannot be brute-forced; a 256-bit random token cannot be
brute-forced whatever the hash, so slowness buys nothing and would cost tens of
milliseconds of CPU on every request (a denial-of-service lever). An unsalted fast hash
also lets a request find its row through a unique index, with no scan over every token.
The stored and computed digests are compared with :func:`hmac.compare_digest` (constant
time); the lookup by digest leaks at most something about the hash of the guess, which
says nothing about a token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from cxr_orient.errors import CxrError
from db import crud
from db.models import ApiToken, utcnow

__all__ = [
    "KNOWN_SCOPES",
    "TOKEN_PREFIX",
    "TokenError",
    "TokenInfo",
    "create_token",
    "hash_token",
    "list_tokens",
    "revoke_token",
    "verify_token",
]

#: What a token may be allowed to do: send instances (STOW-RS), the review API (read the
#: queue, record labels), the audit API (read).
KNOWN_SCOPES = frozenset({"stow", "review", "audit"})
#: Makes a leaked token recognisable (secret scanners, log greps); not part of the secret.
TOKEN_PREFIX = "cxr_"
#: ``last_used_at`` is written at most this often per token.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class TokenError(CxrError):
    code = "token"


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never the token itself."""

    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def hash_token(token: str) -> str:
    """Hex SHA-256 of the token as sent."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _info(row: ApiToken) -> TokenInfo:
    scopes = tuple(s for s in row.scopes.split(",") if s)
    return TokenInfo(row.name, scopes, row.created_at, row.last_used_at, row.revoked_at)


def create_token(session: Session, *, name: str, scopes: Sequence[str]) -> str:
    """A new token named ``name`` with ``scopes``; returns the token (the only time it is
    seen: only its hash is stored)."""
    if not _NAME.match(name):
        raise TokenError(f"token name {name!r}: letters, digits, '.', '_' or '-', at most 128")
    unknown = sorted(set(scopes) - KNOWN_SCOPES)
    if unknown or not scopes:
        raise TokenError(f"scopes {list(scopes)!r}: choose from {sorted(KNOWN_SCOPES)}")
    if crud.find_api_token_by_name(session, name=name) is not None:
        raise TokenError(f"a token named {name!r} exists (revoked ones keep their name)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    crud.add_api_token(
        session, name=name, token_sha256=hash_token(token), scopes=sorted(set(scopes))
    )
    return token


def verify_token(session: Session, *, token: str, now: datetime | None = None) -> TokenInfo | None:
    """The token's info when ``token`` is a known, unrevoked token, else None; records its
    use. Whether it holds the scope a route needs is the caller's check (403)."""
    digest = hash_token(token)
    row = crud.find_api_token_by_hash(session, token_sha256=digest)
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        return None
    if row.revoked_at is not None:
        return None
    now = now or utcnow()
    crud.touch_api_token(session, token_id=row.id, now=now, not_since=now - LAST_USED_RESOLUTION)
    return _info(row)


def list_tokens(session: Session) -> list[TokenInfo]:
    return [_info(row) for row in crud.list_api_tokens(session)]


def revoke_token(session: Session, *, name: str) -> None:
    if not crud.revoke_api_token(session, name=name, now=utcnow()):
        known = crud.find_api_token_by_name(session, name=name)
        if known is None:
            raise TokenError(f"no token named {name!r}")
        raise TokenError(f"token {name!r} was revoked already")
