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
            conn.execute(
                text(
                    "INSERT INTO studies (study_instance_uid, patient_id, created_at) "
                    "VALUES ('1.2.3', 'P1', CURRENT_TIMESTAMP)"
                )
            )
        downgrade(database_url, "base")
        assert "studies" not in inspect(engine).get_table_names()
        upgrade(database_url)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO studies (study_instance_uid, patient_id, created_at) "
                    "VALUES ('1.2.3', 'P1', CURRENT_TIMESTAMP)"
                )
            )
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


def test_a_populated_first_release_database_upgrades_to_head(database_url: str) -> None:
    """Every revision on a database with rows in each table of revision 0001 (SQLite
    rebuilds a table to alter it, which foreign keys would refuse with children present),
    and the rows survive."""
    upgrade(database_url, "0001")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO studies (id, study_instance_uid, patient_id, created_at) "
                    "VALUES (1, '1.2.3', 'P1', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO instances (id, study_id, sop_instance_uid, file_path, "
                    "file_sha256, file_size, status, attempts, enqueued_at, updated_at) VALUES "
                    "(1, 1, '1.2.3.4', '/a.dcm', 'ab', 10, 'done', 1, CURRENT_TIMESTAMP, "
                    "CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO model_versions (id, name, architecture, file_path, sha256, "
                    "input_size, labels, temperature, review_threshold, metrics, training, state, "
                    "is_active, created_at) VALUES (1, 'm', 'compact', '/m.keras', 'cd', 256, "
                    "'[]', 1.0, 0.9, '{}', '{}', 'active', true, CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO predictions (instance_id, model_version_id, label, confidence, "
                    "p_frontal, p_lateral, needs_review, created_at) VALUES "
                    "(1, 1, 'frontal', 0.8, 0.8, 0.2, true, CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO labels (instance_id, label, source, created_at) VALUES "
                    "(1, 'frontal', 'test', CURRENT_TIMESTAMP)"
                )
            )
        upgrade(database_url)
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT p.file_sha256, p.review_reason, p.rotation, i.target_model_version_id "
                    "FROM predictions p JOIN instances i ON i.id = p.instance_id"
                )
            ).one()
            assert tuple(row) == ("ab", "low_confidence", None, None)
            assert conn.execute(text("SELECT count(*) FROM labels")).scalar_one() == 1
    finally:
        engine.dispose()


def test_0005_study_answers_up_and_down_with_data(database_url: str) -> None:
    """0005 adds studies.last_arrival_at, study_answers and the current_study_answers view;
    its downgrade turns waiting/out_of_scope instances into statuses 0004 knows."""
    upgrade(database_url, "0004")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO studies (id, study_instance_uid, patient_id, created_at) "
                    "VALUES (1, '1.2.3', 'P1', CURRENT_TIMESTAMP)"
                )
            )
        upgrade(database_url, "0005")
        with engine.begin() as conn:
            conn.execute(text("UPDATE studies SET last_arrival_at = CURRENT_TIMESTAMP"))
            for n, status in ((1, "waiting"), (2, "out_of_scope")):
                conn.execute(
                    text(
                        "INSERT INTO instances (id, study_id, sop_instance_uid, file_path, "
                        "file_sha256, file_size, status, attempts, enqueued_at, updated_at) VALUES "
                        f"({n}, 1, '1.2.3.{n}', '/{n}.dcm', 'ab', 10, '{status}', 0, "
                        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                    )
                )
            for sequence in (1, 2):
                conn.execute(
                    text(
                        "INSERT INTO study_answers (study_id, sequence, fingerprint, "
                        "instance_count, "
                        "frontal_count, lateral_count, needs_review_count, failed_count, "
                        "out_of_scope_count, header_agrees_count, header_disagrees_count, "
                        "no_frontal, no_lateral, header_disagreement, created_at) VALUES "
                        f"(1, {sequence}, 'f{sequence}', {sequence}, 0, 0, 0, 0, {sequence}, 0, 0, "
                        "true, true, false, CURRENT_TIMESTAMP)"
                    )
                )
            view = conn.execute(
                text(
                    "SELECT study_instance_uid, sequence, out_of_scope_count "
                    "FROM current_study_answers"
                )
            ).all()
            assert [tuple(r) for r in view] == [("1.2.3", 2, 2)]
        downgrade(database_url, "0004")
        names = inspect(engine)
        assert "study_answers" not in names.get_table_names()
        assert "current_study_answers" not in names.get_view_names()
        assert "last_arrival_at" not in {c["name"] for c in names.get_columns("studies")}
        with engine.connect() as conn:
            statuses = conn.execute(text("SELECT status FROM instances ORDER BY id")).scalars()
            assert list(statuses) == ["queued", "failed"]
        upgrade(database_url)
    finally:
        engine.dispose()
