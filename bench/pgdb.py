"""A PostgreSQL database of a benchmark's own, created on the local server and dropped
afterwards (the benchmarks that need PostgreSQL's plans and locking, not SQLite's)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

#: The server's admin connection (a database that exists); the tests use the same variable.
PG_ADMIN_DSN = os.environ.get("CXR_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def temporary_pg_database() -> Iterator[str]:
    """A new, empty database; yields its SQLAlchemy URL, drops it on the way out."""
    import psycopg

    name = f"cxr_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
