"""Review-page users and the login rate limit's failures."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from db.models import LoginFailure, User, UserRole


def add_user(session: Session, *, username: str, password_hash: str | None, role: UserRole) -> User:
    row = User(username=username, password_hash=password_hash, role=role)
    session.add(row)
    session.flush()
    return row


def find_user(session: Session, *, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def get_user(session: Session, *, user_id: int) -> User | None:
    return session.get(User, user_id)


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def set_user_password(session: Session, *, user_id: int, password_hash: str | None) -> None:
    """A new hash (or none); the session epoch moves on, so older cookies stop working."""
    session.execute(
        update(User)
        .where(User.id == user_id)
        .values(password_hash=password_hash, session_epoch=User.session_epoch + 1)
        .execution_options(synchronize_session="fetch")
    )


def disable_user(session: Session, *, user_id: int, now: datetime) -> None:
    session.execute(
        update(User)
        .where(User.id == user_id, User.disabled_at.is_(None))
        .values(disabled_at=now, session_epoch=User.session_epoch + 1)
        .execution_options(synchronize_session="fetch")
    )


def end_user_sessions(session: Session, *, user_id: int, epoch: int) -> None:
    """Logout: the epoch moves on if it is still ``epoch`` (the cookie's), so every cookie
    signed before stops working; a cookie of an older epoch changes nothing."""
    session.execute(
        update(User)
        .where(User.id == user_id, User.session_epoch == epoch)
        .values(session_epoch=User.session_epoch + 1)
        .execution_options(synchronize_session="fetch")
    )


def touch_user_login(session: Session, *, user_id: int, now: datetime) -> None:
    session.execute(
        update(User)
        .where(User.id == user_id)
        .values(last_login_at=now)
        .execution_options(synchronize_session=False)
    )


def count_login_failures(session: Session, *, username: str, address: str, since: datetime) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(LoginFailure)
            .where(
                LoginFailure.username == username,
                LoginFailure.address == address,
                LoginFailure.created_at >= since,
            )
        )
        or 0
    )


def add_login_failure(session: Session, *, username: str, address: str, now: datetime) -> None:
    session.add(LoginFailure(username=username, address=address, created_at=now))


def forget_login_failures(
    session: Session, *, before: datetime, username: str | None = None, address: str | None = None
) -> None:
    """Delete failures older than ``before`` (or, with a username and address, all of that
    pair's: a successful login starts afresh)."""
    query = delete(LoginFailure).where(LoginFailure.created_at < before)
    if username is not None and address is not None:
        query = delete(LoginFailure).where(
            LoginFailure.username == username, LoginFailure.address == address
        )
    session.execute(query.execution_options(synchronize_session=False))
