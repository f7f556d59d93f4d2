"""The review page's sessions: the cookie's signing key, the logged-in user in the signed
cookie, the CSRF token every form carries, and who the caller is (a session, or a
trusted single-sign-on proxy's header).

The session is Starlette's ``SessionMiddleware``: the cookie holds ``{"uid", "epoch",
"csrf"}`` signed with itsdangerous (HMAC-SHA1 over the key, timestamped: it expires after
``CXR_SESSION_MAX_AGE_S``), HttpOnly, SameSite=Lax, Secure with
``CXR_SESSION_COOKIE_SECURE``. Nothing secret or identifying is in it. The ``epoch`` is
the user's ``session_epoch``: logging out, a password change or a disable bumps it, so
the cookies signed before (a copied one too) stop working at once; logging out thus ends
that user's sessions in every browser.

The key is ``CXR_SESSION_KEY`` when set; otherwise one made at the first start and
kept in ``<CXR_DATA_DIR>/session-key`` (0600), so a restart keeps everybody logged in
and nobody has to invent a secret to try the page.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from fastapi import Request

from cxr_orient.settings import Settings
from cxr_orient.users import UserInfo, end_sessions, user_by_name, user_for_session
from db.session import session_scope
from service.clients import client_address, peer_is_trusted_proxy

logger = logging.getLogger(__name__)
KEY_FILE = "session-key"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


def session_key(settings: Settings) -> str:
    """CXR_SESSION_KEY, or the key kept under the data dir (made once, 0600)."""
    if settings.http.session_key is not None:
        return settings.http.session_key.get_secret_value()
    path = Path(settings.storage.data_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
            logger.info("session key made in %s (set CXR_SESSION_KEY to choose one)", path)
    key = path.read_text().strip()
    if len(key) < 32:
        raise RuntimeError(f"{path}: the session key is shorter than 32 characters")
    return key


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use): forms carry it in a hidden field,
    scripts in the X-CSRF-Token header."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_ok(request: Request, submitted: str | None) -> bool:
    expected = request.session.get("csrf")
    return (
        isinstance(expected, str)
        and bool(expected)
        and submitted is not None
        and hmac.compare_digest(expected.encode(), submitted.encode())
    )


def log_in(request: Request, user: UserInfo) -> None:
    """A fresh session for ``user`` (a new CSRF token too: nothing carried over)."""
    request.session.clear()
    request.session.update(
        {"uid": user.id, "epoch": user.session_epoch, "csrf": secrets.token_urlsafe(32)}
    )


def log_out(request: Request) -> None:
    """End the session server side (the user's session epoch moves on, so a copy of the
    cookie is worthless: :func:`cxr_orient.users.end_sessions`), then clear the cookie."""
    uid, epoch = request.session.get("uid"), request.session.get("epoch")
    if isinstance(uid, int) and isinstance(epoch, int):
        with session_scope() as session:
            end_sessions(session, user_id=uid, epoch=epoch)
    request.session.clear()


def session_user(request: Request, settings: Settings) -> UserInfo | None:
    """Who is asking: the trusted proxy's user header (CXR_TRUSTED_USER_HEADER, from a
    socket peer among CXR_TRUSTED_PROXIES only: :mod:`service.clients`), else the session
    cookie's user; None: nobody."""
    header = settings.http.trusted_user_header
    if header:
        name = request.headers.get(header)
        if name is not None:
            if peer_is_trusted_proxy(request, settings):
                with session_scope() as session:
                    user = user_by_name(session, username=name)
                if user is None:
                    logger.warning("trusted proxy named an unknown or disabled user")
                return user
            logger.warning(
                "%s header from an untrusted address ignored (%s)",
                header,
                client_address(request, settings),
            )
    uid, epoch = request.session.get("uid"), request.session.get("epoch")
    if not isinstance(uid, int) or not isinstance(epoch, int):
        return None
    with session_scope() as session:
        return user_for_session(session, user_id=uid, epoch=epoch)
