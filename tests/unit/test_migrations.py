"""Migrations: one head, and a full downgrade/upgrade that keeps working with data."""

from __future__ import annotations

from sqlalchemy import inspect, text

from db.migrate import downgrade, heads, upgrade
from db.models import Base
from db.session import make_engine


def test_single_head() -> None:
    assert len(heads()) == 1


def test_upgrade_creates_every_model_table(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_downgrade_to_base_and_back_with_data(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO studies (study_instance_uid, patient_id, created_at) "
                "VALUES ('1.2.3', 'P1', CURRENT_TIMESTAMP)"))
        downgrade(database_url, "base")
        assert "studies" not in inspect(engine).get_table_names()
        upgrade(database_url)
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO studies (study_instance_uid, patient_id, created_at) "
                "VALUES ('1.2.3', 'P1', CURRENT_TIMESTAMP)"))
            assert conn.execute(text("SELECT count(*) FROM studies")).scalar_one() == 1
    finally:
        engine.dispose()


def test_models_match_migrations(database_url: str) -> None:
    """Autogenerate finds nothing to do: the migrations and the models agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
