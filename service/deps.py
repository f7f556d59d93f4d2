"""Dependencies of the routes: the settings, a database session, the calling machine (a
bearer token holding a scope), the logged-in person (a session cookie, or a trusted
proxy's header) and what its role allows, and the CSRF check of forms."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from annotated_types import Interval
from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cxr_orient.settings import Settings, get_settings
from cxr_orient.tokens import TokenInfo, verify_token
from cxr_orient.users import UserInfo
from db.models import UserRole
from db.session import session_scope
from service.sessions import CSRF_FIELD, CSRF_HEADER, csrf_ok, session_user

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

#: The largest value a SQL BIGINT holds (SQLite's integer, PostgreSQL's bigint).
MAX_DB_INT = 2**63 - 1
#: Every integer a route takes from its URL (an id, a cursor, a count): checked here, at
#: the edge, so a number the database cannot hold is a 422, never an overflow (HTTP 500).
DbInt = Annotated[int, Interval(ge=0, le=MAX_DB_INT)]


def _unauthorized(detail: str, error: str | None) -> HTTPException:
    challenge = f'Bearer realm="{REALM}"'
    if error:
        challenge += f', error="{error}"'
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": challenge}
    )


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
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, detail="the database is unavailable; try again"
            ) from exc
        if info is None:
            raise _unauthorized("the token is unknown or revoked", "invalid_token")
        if scope not in info.scopes:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"the token lacks the {scope!r} scope",
                headers={
                    "WWW-Authenticate": f'Bearer realm="{REALM}", '
                    f'error="insufficient_scope", scope="{scope}"'
                },
            )
        request.state.token_name = info.name
        return info

    return dependency


# --- people: the session's user and what its role allows -----------------------------

#: What each role may do (docs/security.md, "Users and roles"). Tokens hold the same
#: names as scopes (``review``, ``audit``).
ROLE_CAN: dict[UserRole, frozenset[str]] = {
    UserRole.reviewer: frozenset({"review"}),
    UserRole.auditor: frozenset({"audit"}),
    UserRole.admin: frozenset({"review", "audit", "admin"}),
}


@dataclass(frozen=True)
class Caller:
    """Who is asking: a person (``user``) or a machine (``token``)."""

    name: str
    can: frozenset[str]
    user: UserInfo | None = None
    token: TokenInfo | None = None

    @property
    def annotator(self) -> str:
        return self.name if self.user is not None else f"token:{self.name}"


class LoginRequired(Exception):
    """Raised by a page dependency when nobody is logged in: the app answers with a
    redirect to the login page (see ``service.app``)."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


def current_user(request: Request, settings: SettingsDep) -> UserInfo | None:
    try:
        user = session_user(request, settings)
    except SQLAlchemyError as exc:
        logger.error("session check: database unavailable (%s)", type(exc).__name__)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail="the database is unavailable; try again"
        ) from exc
    if user is not None:
        request.state.user_name = user.username
    return user


def page_user(capability: str) -> Callable[..., Caller]:
    """A page dependency: a logged-in person allowed ``capability`` (else a redirect to
    the login page, or 403)."""

    def dependency(
        request: Request, user: Annotated[UserInfo | None, Depends(current_user)]
    ) -> Caller:
        if user is None:
            raise LoginRequired(request.url.path)
        can = ROLE_CAN[user.role]
        if capability not in can:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail=f"the {user.role.value} role may not do this"
            )
        return Caller(user.username, can, user=user)

    return dependency


def api_caller(capability: str) -> Callable[..., Caller]:
    """An API dependency: a bearer token holding the scope ``capability``, or a logged-in
    person allowed it; a person's unsafe request (POST...) must carry the session's
    CSRF token in X-CSRF-Token (a token's need not: no cookie, no cross-site forgery)."""
    by_token = require_scope(capability)

    def dependency(
        request: Request, user: Annotated[UserInfo | None, Depends(current_user)]
    ) -> Caller:
        if bearer_token(request) is not None:
            info = by_token(request)
            return Caller(info.name, frozenset(info.scopes), token=info)
        if user is None:
            raise _unauthorized("log in, or send a bearer token", None)
        can = ROLE_CAN[user.role]
        if capability not in can:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail=f"the {user.role.value} role may not do this"
            )
        if request.method not in {"GET", "HEAD", "OPTIONS"} and not csrf_ok(
            request, request.headers.get(CSRF_HEADER)
        ):
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="missing or wrong CSRF token")
        return Caller(user.username, can, user=user)

    return dependency


async def checked_form(request: Request) -> dict[str, str]:
    """A form's fields, after its CSRF token was checked (403 otherwise); a field with a
    NUL byte is a 400."""
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if any("\x00" in value for value in fields.values()):
        # PostgreSQL refuses NUL in text: a 400 here, never a database error (500) that
        # would log the typed value.
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="a form field holds a NUL byte")
    if not csrf_ok(request, fields.get(CSRF_FIELD)):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="missing or wrong CSRF token; reload the page"
        )
    return fields


CheckedForm = Annotated[dict[str, str], Depends(checked_form)]
