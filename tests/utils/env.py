"""Fixtures' building blocks: throwaway databases, settings from the environment.

A test that needs a migrated database gets a copy of one migrated once per run (per
test process under pytest-xdist): :func:`migrate_from_template`. PostgreSQL copies the
template database (``CREATE DATABASE ... TEMPLATE``), SQLite the template file; both are
what ``db.migrate.upgrade()`` on the empty database would leave, without running every
migration again for each test. :func:`drop_templates` (the session's end) removes them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis
from sqlalchemy.engine import make_url

PG_ADMIN_DSN = os.environ.get("CXR_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
#: Where the integration tests find Redis; pointing these at a closed port shows which
#: tests need it (the unit tier needs no server: ``make unit``).
REDIS_HOST = os.environ.get("CXR_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("CXR_TEST_REDIS_PORT", "6379"))

_templates: dict[str, str] = {}  # "postgresql" -> database name, "sqlite" -> file path


def pg_url_for(name: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def _drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@contextmanager
def temporary_pg_database(template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database, empty or a copy of ``template``; dropped afterwards
    (connections terminated)."""
    name = f"cxr_test_{uuid.uuid4().hex[:10]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield pg_url_for(name)
    finally:
        _drop_pg_database(name)


def _pg_template() -> str:
    """The run's migrated PostgreSQL database (made on first use), to copy from."""
    if "postgresql" not in _templates:
        from db.migrate import upgrade

        name = f"cxr_tpl_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        _templates["postgresql"] = name
        upgrade(pg_url_for(name))  # its engine is disposed: no session left on it
    return _templates["postgresql"]


def _sqlite_template() -> Path:
    """The run's migrated SQLite file (made on first use), to copy from."""
    if "sqlite" not in _templates:
        from db.migrate import upgrade

        path = Path(tempfile.mkdtemp(prefix="cxr-template-")) / "cxr.db"
        _templates["sqlite"] = str(path)
        upgrade(f"sqlite:///{path}")  # its engine is disposed: the WAL is checkpointed
    return Path(_templates["sqlite"])


def migrate_from_template(url: str) -> None:
    """Bring the *empty* database at ``url`` to head as ``db.migrate.upgrade(url)`` would:
    it becomes a copy of the run's migrated template. A database that holds tables is
    refused (this is no way to upgrade data)."""
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite":
        target = Path(database)
        if database in ("", ":memory:"):
            raise ValueError(f"no file to copy the template into: {url}")
        if target.exists() and target.stat().st_size:
            with sqlite3.connect(target) as conn:
                tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise ValueError(f"{url} is not empty")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_sqlite_template(), target)
        return
    shared = make_url(PG_ADMIN_DSN.replace("postgresql://", "postgresql+psycopg://", 1))
    if (parsed.host, parsed.port or 5432) != (shared.host, shared.port or 5432):
        # A private cluster of the test's own (tests/utils/faults.py) holds no template:
        # migrate it for real.
        from db.migrate import upgrade

        upgrade(url)
        return
    template = _pg_template()
    admin_base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    with psycopg.connect(f"{admin_base}/{database}", autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN "
            "('pg_catalog', 'information_schema')"
        ).fetchone()
    if tables and tables[0]:
        raise ValueError(f"{url} is not empty")
    _drop_pg_database(database)
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}" TEMPLATE "{template}"')


@contextmanager
def migrated_database(backend: str, sqlite_file: Path) -> Iterator[str]:
    """A new database at head on ``backend`` ("sqlite": ``sqlite_file``, "postgresql": a
    temporary database), a copy of the run's template; a PostgreSQL one is dropped
    afterwards."""
    if backend == "sqlite":
        url = f"sqlite:///{sqlite_file}"
        migrate_from_template(url)
        yield url
    else:
        with temporary_pg_database(template=_pg_template()) as url:
            yield url


def drop_templates() -> None:
    """Remove the run's templates (the session's end)."""
    if name := _templates.pop("postgresql", None):
        _drop_pg_database(name)
    if path := _templates.pop("sqlite", None):
        shutil.rmtree(Path(path).parent, ignore_errors=True)


def redis_available() -> bool:
    try:
        return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def flush_redis_db(number: int) -> None:
    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number).flushdb()
