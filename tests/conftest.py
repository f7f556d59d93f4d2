"""Shared fixtures. Settings-changing fixtures restore the environment afterwards.

Tiers are defined by what a test needs, not by its folder alone: a test that gets the
real PostgreSQL (``pg_url``, or the ``postgresql`` side of ``database_url`` and
``migrated_db``) is marked
``pg``, one under tests/integration or that gets Redis (``redis_url``) ``integration``,
here at collection. ``make unit`` runs ``-m "not integration and not pg"``: no server.

Under ``pytest -n 4 --dist loadgroup`` (``make test``) the tests of one file run in one test
process (they may share module fixtures and module state), except integration tests that
use no module-scoped fixture and tests marked ``spread``: those go one by one to whichever
process is free, so one file of slow tests (killed workers, outages) does not keep one
process busy while the other idles. Hypothesis runs the ``ci`` profile unless
HYPOTHESIS_PROFILE names another (``thorough``: the nightly count).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from argon2 import PasswordHasher
from hypothesis import settings

from cxr_orient.settings import reset_settings_cache
from db.session import dispose_engines
from tests.utils.env import drop_templates, migrated_database, temporary_pg_database

if TYPE_CHECKING:
    from cxr_orient.modelstore import Classifier

#: Fixtures that need a server: a test using one is marked so (see the module's text).
_SERVER_FIXTURES = {"pg_url": "pg", "redis_url": "integration"}
_INTEGRATION = Path(__file__).resolve().parent / "integration"

#: Bounded examples for every run of the suite (sized for the decoder fuzzer,
#: tests/unit/cxr_orient/imaging/test_fuzz_decode.py); the property checked is the same
#: at any count, and each run draws new examples (hypothesis replays a failure it saved
#: before).
settings.register_profile("ci", max_examples=1000, deadline=None)
#: What a nightly or a hunt for a decoder bug runs (HYPOTHESIS_PROFILE=thorough).
settings.register_profile("thorough", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _spread(item: pytest.Item, integration: bool) -> bool:
    """Whether ``item`` may run in another test process than the rest of its file: marked
    ``spread``, or an integration test (they keep no state in their module) that uses no
    fixture shared wider than one test but narrower than the session."""
    if any(item.iter_markers("spread")):
        return True
    info = getattr(item, "_fixtureinfo", None)
    if not integration or info is None:
        return False
    return all(
        d.scope in ("function", "session") for defs in info.name2fixturedefs.values() for d in defs
    )


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    grouping = config.pluginmanager.hasplugin("xdist")  # -p no:xdist: one process, no groups
    for item in items:
        integration = _INTEGRATION in Path(str(item.path)).resolve().parents
        if (
            grouping
            and not any(item.iter_markers("xdist_group"))
            and not _spread(item, integration)
        ):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
        needs = {
            mark
            for fixture, mark in _SERVER_FIXTURES.items()
            if fixture in getattr(item, "fixturenames", ())
        }
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("db_backend") == "postgresql":
            needs.add("pg")
        if integration:
            needs.add("integration")
        for mark in sorted(needs):
            item.add_marker(mark)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    drop_templates()


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
def db_backend(request: pytest.FixtureRequest) -> str:
    """The two databases a test using ``database_url`` or ``migrated_db`` runs on."""
    return str(request.param)


@pytest.fixture
def database_url(db_backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database: each test using this runs on SQLite and on the real PostgreSQL."""
    if db_backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'cxr.db'}"
    else:
        with temporary_pg_database() as url:
            yield url


@pytest.fixture
def migrated_db(db_backend: str, configure: Callable[..., None], tmp_path: Path) -> Iterator[str]:
    """An empty, fully migrated database configured as CXR_DATABASE_URL, on SQLite and on
    PostgreSQL: a copy of the run's migrated template (what ``upgrade()`` would leave)."""
    with migrated_database(db_backend, tmp_path / "cxr.db") as url:
        configure(database_url=url, data_dir=tmp_path / "data", ingest_root=tmp_path)
        yield url
        dispose_engines()  # before the database is dropped


#: argon2id at its lowest cost (8 KiB, one pass, one lane): what the tests hash and check
#: in their own process. The product's cost (argon2-cffi's defaults, RFC 9106's low-memory
#: profile: 64 MiB, three passes, four lanes) is some 0.1 CPU-s a hash, and the unit tier
#: hashes and verifies passwords hundreds of times; the test marked ``production_hash``
#: (tests/unit/cxr_orient/test_users.py) checks that cost, and processes the tests start
#: (``cxr-orient user create``, ``serve``) always run at it.
_CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture(autouse=True)
def cheap_password_hashes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("production_hash"):
        return
    from cxr_orient import users

    monkeypatch.setattr(users, "PASSWORD_HASHER", _CHEAP_HASHER)


@pytest.fixture(scope="session")
def shipped_models() -> Callable[..., Classifier]:
    """``shipped_models(name)``: the shipped checkpoint ``name`` (the default model when
    no name is given) as a :class:`~cxr_orient.modelstore.Classifier`, its SHA-256
    checked, loaded once per test process and shared by the tests that ask for it (a
    load takes seconds; a Classifier holds nothing a prediction changes)."""
    from cxr_orient.modelstore import Classifier
    from cxr_orient.settings import SHIPPED_MODEL

    @cache
    def load(name: str = SHIPPED_MODEL.stem) -> Classifier:
        return Classifier.from_checkpoint(SHIPPED_MODEL.parent / f"{name}.keras")

    return load
