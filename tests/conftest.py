"""Shared fixtures. Settings-changing fixtures restore the environment afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cxr_orient.settings import reset_settings_cache
from db.session import dispose_engines
from tests.utils.env import temporary_pg_database


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set CXR_* variables for the test; the settings cache and engines follow."""

    def apply(**values: object) -> None:
        for key, value in values.items():
            monkeypatch.setenv(f"CXR_{key.upper()}", str(value))
        reset_settings_cache()
        dispose_engines()

    yield apply
    dispose_engines()
    reset_settings_cache()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cxr.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with temporary_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs on SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cxr.db'}"
    else:
        with temporary_pg_database() as url:
            yield url


@pytest.fixture
def migrated_db(database_url: str, configure: Callable[..., None], tmp_path: Path) -> str:
    """An empty, fully migrated database configured as CXR_DATABASE_URL."""
    from db.migrate import upgrade

    configure(database_url=database_url, data_dir=tmp_path / "data",
              ingest_root=tmp_path)
    upgrade()
    return database_url
