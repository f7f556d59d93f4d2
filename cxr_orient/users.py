"""People who log in to the review page: create, list, disable, set a password, and the
password check with its rate limit.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second
recommended profile); a hash made with older parameters is upgraded at the next
successful login. A username that does not exist costs the same argon2 verification as
a wrong password (against a dummy hash), so timing does not tell which names exist.

The rate limit counts failed logins per (username, client address) in the database
(``login_failures``), so it holds across restarts and several ``serve`` processes:
after ``CXR_LOGIN_MAX_FAILURES`` within ``CXR_LOGIN_WINDOW_S`` further attempts are
refused before any password is checked. A success clears that pair's count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Session

from cxr_orient.errors import CxrError
from db import crud
from db.models import User, UserRole, utcnow

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "PASSWORD_HASHER",
    "LoginRefused",
    "LoginThrottled",
    "UserError",
    "UserInfo",
    "authenticate",
    "create_user",
    "disable_user",
    "end_sessions",
    "hash_password",
    "list_users",
    "set_password",
    "user_by_name",
    "user_for_session",
]

MIN_PASSWORD_LENGTH = 12
_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
#: The hasher every password is hashed and checked with (argon2-cffi's defaults: RFC 9106's
#: low-memory profile, 64 MiB, three passes, four lanes). Read at each call, so a test
#: process may swap in a cheaper one (tests/conftest.py); a stored hash records its own
#: parameters, so any hasher checks any hash.
PASSWORD_HASHER = PasswordHasher()


@cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    """A hash no password matches, made by ``hasher``: what an unknown username is checked
    against, at the cost of a known one."""
    return hasher.hash("not a password of anybody")


_dummy_hash(PASSWORD_HASHER)  # made at import: the first unknown name costs no more


class UserError(CxrError):
    code = "user"


class LoginRefused(CxrError):
    """Wrong username or password, or a disabled user (one message for all three)."""

    code = "login_refused"


class LoginThrottled(CxrError):
    """Too many failed logins for this username from this address."""

    code = "login_throttled"


@dataclass(frozen=True)
class UserInfo:
    """A user as the service sees it: never the hash."""

    id: int
    username: str
    role: UserRole
    session_epoch: int
    has_password: bool
    created_at: datetime
    last_login_at: datetime | None
    disabled_at: datetime | None

    @property
    def active(self) -> bool:
        return self.disabled_at is None


def _info(row: User) -> UserInfo:
    return UserInfo(
        row.id,
        row.username,
        UserRole(row.role),
        row.session_epoch,
        row.password_hash is not None,
        row.created_at,
        row.last_login_at,
        row.disabled_at,
    )


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return PASSWORD_HASHER.hash(password)


def _normal_name(username: str) -> str:
    return username.strip().lower()


def create_user(session: Session, *, username: str, role: str, password: str | None) -> UserInfo:
    """A new user; ``password`` None: single sign-on only (CXR_TRUSTED_USER_HEADER)."""
    name = _normal_name(username)
    if not _NAME.match(name):
        raise UserError(
            f"username {username!r}: lower-case letters, digits, '.', '_', '@' or '-', at most 64"
        )
    try:
        chosen = UserRole(role)
    except ValueError as exc:
        raise UserError(
            f"role {role!r}: choose from {', '.join(r.value for r in UserRole)}"
        ) from exc
    if crud.find_user(session, username=name) is not None:
        raise UserError(f"a user named {name!r} exists")
    hashed = hash_password(password) if password is not None else None
    return _info(crud.add_user(session, username=name, password_hash=hashed, role=chosen))


def list_users(session: Session) -> list[UserInfo]:
    return [_info(row) for row in crud.list_users(session)]


def _existing(session: Session, username: str) -> User:
    row = crud.find_user(session, username=_normal_name(username))
    if row is None:
        raise UserError(f"no user named {username!r}")
    return row


def set_password(session: Session, *, username: str, password: str | None) -> None:
    """A new password (None: none, single sign-on only); the user's sessions end."""
    row = _existing(session, username)
    crud.set_user_password(
        session, user_id=row.id, password_hash=hash_password(password) if password else None
    )


def disable_user(session: Session, *, username: str) -> None:
    """The user can no longer log in and its sessions end; the row stays (labels name it)."""
    row = _existing(session, username)
    if row.disabled_at is not None:
        raise UserError(f"user {row.username!r} is disabled already")
    crud.disable_user(session, user_id=row.id, now=utcnow())


def end_sessions(session: Session, *, user_id: int, epoch: int) -> None:
    """Logout, server side: the user's sessions of ``epoch`` (the logged-out cookie's, and
    any copy of it, in every browser) stop working at once."""
    crud.end_user_sessions(session, user_id=user_id, epoch=epoch)


def authenticate(
    session: Session,
    *,
    username: str,
    password: str,
    address: str,
    max_failures: int,
    window_s: int,
    now: datetime | None = None,
) -> UserInfo:
    """The user whose password this is. Raises :class:`LoginThrottled` before checking
    anything when the pair (username, address) failed too often lately, and
    :class:`LoginRefused` (recording a failure) for a wrong name or password or a
    disabled user. The caller commits either way (failures must be kept)."""
    now = now or utcnow()
    name = _normal_name(username)[:64]
    address = address[:64]
    since = now - timedelta(seconds=window_s)
    if (
        crud.count_login_failures(session, username=name, address=address, since=since)
        >= max_failures
    ):
        raise LoginThrottled("too many failed logins; wait a few minutes and try again")
    row = crud.find_user(session, username=name)
    stored = row.password_hash if row is not None and row.password_hash else None
    try:
        PASSWORD_HASHER.verify(stored or _dummy_hash(PASSWORD_HASHER), password)
        good = stored is not None
    except (VerificationError, InvalidHashError):
        good = False
    if not good or row is None or row.disabled_at is not None:
        crud.add_login_failure(session, username=name, address=address, now=now)
        crud.forget_login_failures(session, before=since)
        raise LoginRefused("wrong username or password")
    if PASSWORD_HASHER.check_needs_rehash(stored or ""):
        crud.set_user_password(
            session, user_id=row.id, password_hash=PASSWORD_HASHER.hash(password)
        )
        session.refresh(row)
    crud.forget_login_failures(session, before=now, username=name, address=address)
    crud.touch_user_login(session, user_id=row.id, now=now)
    return _info(row)


def user_for_session(session: Session, *, user_id: int, epoch: int) -> UserInfo | None:
    """The user a session cookie names, if it still may act: enabled, and its sessions not
    ended since (password changed, disabled)."""
    row = crud.get_user(session, user_id=user_id)
    if row is None or row.disabled_at is not None or row.session_epoch != epoch:
        return None
    return _info(row)


def user_by_name(session: Session, *, username: str) -> UserInfo | None:
    """An enabled user by name (the trusted proxy header's), else None."""
    row = crud.find_user(session, username=_normal_name(username))
    if row is None or row.disabled_at is not None:
        return None
    return _info(row)
