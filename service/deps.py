"""Dependencies of the routes: the settings, a database session, and the calling
machine (a bearer token holding a scope)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cxr_orient.settings import Settings, get_settings
from cxr_orient.tokens import TokenInfo, verify_token
from db.session import session_scope

REALM = "cxr-orient"
logger = logging.getLogger(__name__)


def settings_dep() -> Settings:
    return get_settings()


def session_dep() -> Iterator[Session]:
    """One session per request: committed when the route returns, rolled back on error."""
    with session_scope() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(settings_dep)]
SessionDep = Annotated[Session, Depends(session_dep)]


def _unauthorized(detail: str, error: str | None) -> HTTPException:
    challenge = f'Bearer realm="{REALM}"'
    if error:
        challenge += f', error="{error}"'
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail,
                         headers={"WWW-Authenticate": challenge})


def bearer_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_scope(scope: str) -> Callable[..., TokenInfo]:
    """A dependency: the caller's token, which must be known, unrevoked and hold ``scope``
    (401 with WWW-Authenticate otherwise; 403 for a valid token without the scope).
    Its own short transaction, so a token's use is recorded whatever the route does."""

    def dependency(request: Request) -> TokenInfo:
        token = bearer_token(request)
        if token is None:
            raise _unauthorized("a bearer token is required", None)
        try:
            with session_scope() as session:
                info = verify_token(session, token=token)
        except SQLAlchemyError as exc:  # the database is down: try again later, not 500
            logger.error("token check: database unavailable (%s)", type(exc).__name__)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                detail="the database is unavailable; try again") from exc
        if info is None:
            raise _unauthorized("the token is unknown or revoked", "invalid_token")
        if scope not in info.scopes:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail=f"the token lacks the {scope!r} scope",
                headers={"WWW-Authenticate":
                         f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"'})
        request.state.token_name = info.name
        return info

    return dependency
