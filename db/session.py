"""One engine per process, built from settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from cxr_orient.settings import get_settings


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout for concurrent workers,
    and its file's folder is created (the first `cxr-orient db upgrade` of a fresh
    ``./cxr-orient-data`` must not fail on a folder nobody made)."""
    if url.startswith("sqlite"):
        _make_sqlite_folder(url)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        # A worker cut off from the database (link down, host partitioned) must notice
        # within seconds, not after the kernel's ~15 min of TCP retransmissions: connects
        # time out, idle connections are probed, unacknowledged writes give up after 20 s.
        connect_args = {
            "connect_timeout": 10,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": 20000,
        }
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=connect_args
    )


def _make_sqlite_folder(url: str) -> None:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    # Not ours to create (no permission): SQLite's own "unable to open" names the problem.
    with suppress(OSError):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


_ENGINES: dict[str, Engine] = {}


def configured_database_url() -> str:
    """``CXR_DATABASE_URL`` (or the embedded SQLite file): the one URL of this process.
    The engine is a process-wide resource built on first use, so this module reads the
    settings itself (the one reader outside the processes' entry modules)."""
    return get_settings().storage.effective_database_url


def get_engine() -> Engine:
    """The process-wide engine for ``CXR_DATABASE_URL``."""
    url = configured_database_url()
    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = make_engine(url)
    return engine


def dispose_engines(*, close: bool = True) -> None:
    """Drop every engine and its pooled connections (tests changing the URL). After fork,
    ``close=False``: the connections inherited are the parent's; closing them here would
    end the parent's sessions (SQLAlchemy's advice for forked processes)."""
    while _ENGINES:
        _, engine = _ENGINES.popitem()
        engine.dispose(close=close)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    factory = sessionmaker(bind=engine or get_engine(), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
