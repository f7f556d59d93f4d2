"""API tokens (stored as SHA-256; revocable)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.models import ApiToken


def add_api_token(
    session: Session, *, name: str, token_sha256: str, scopes: Sequence[str]
) -> ApiToken:
    row = ApiToken(name=name, token_sha256=token_sha256, scopes=",".join(scopes))
    session.add(row)
    session.flush()
    return row


def find_api_token_by_name(session: Session, *, name: str) -> ApiToken | None:
    return session.scalar(select(ApiToken).where(ApiToken.name == name))


def find_api_token_by_hash(session: Session, *, token_sha256: str) -> ApiToken | None:
    return session.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_sha256))


def list_api_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))


def revoke_api_token(session: Session, *, name: str, now: datetime) -> bool:
    """Revoke the named token; False when there is none, or it was revoked already."""
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def touch_api_token(session: Session, *, token_id: int, now: datetime, not_since: datetime) -> None:
    """Record a use, at most once per interval (``last_used_at`` before ``not_since``), so
    that a busy sender does not turn every request into a write."""
    session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < not_since),
        )
        .values(last_used_at=now)
        # No in-Python evaluation against loaded rows (SQLite hands back naive datetimes).
        .execution_options(synchronize_session=False)
    )
