"""Database access functions on SQLite and the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from db import crud
from db.models import InstanceStatus, OrientationLabel
from db.session import session_scope
from tests.utils.factories import register_version


def _add(session, uid: str, study: str = "1.2.3", view: str | None = "PA"):
    s = crud.get_or_create_study(session, study_instance_uid=study, patient_id="P1")
    return crud.add_instance(
        session,
        study=s,
        sop_instance_uid=uid,
        series_instance_uid=None,
        file_path=f"/x/{uid}.dcm",
        file_sha256="0" * 64,
        file_size=1,
        modality="CR",
        transfer_syntax_uid=None,
        header_view_position=view,
    )


def test_add_instance_is_idempotent_by_sop_uid(migrated_db: str) -> None:
    with session_scope() as session:
        first, created = _add(session, "1.1")
        again, created_again = _add(session, "1.1")
        assert created and not created_again
        assert first.id == again.id
        assert crud.status_counts(session)["queued"] == 1


def test_claim_is_exclusive_and_reclaims_only_stale(migrated_db: str) -> None:
    with session_scope() as session:
        instance, _ = _add(session, "2.1")
        instance_id = instance.id
    fresh = crud.stale_cutoff(3600)
    with session_scope() as session:
        assert crud.claim_for_processing(session, instance_id=instance_id, stale_before=fresh)
        assert not crud.claim_for_processing(session, instance_id=instance_id, stale_before=fresh)
    later = crud.stale_cutoff(-60)  # everything counts as stale
    with session_scope() as session:
        assert crud.claim_for_processing(session, instance_id=instance_id, stale_before=later)
        row = session.get(crud.Instance, instance_id)
        assert row is not None and row.attempts == 2


def _record(
    instance_id: int, label: OrientationLabel = OrientationLabel.lateral
) -> crud.PredictionRecord:
    return crud.PredictionRecord(
        instance_id=instance_id,
        label=label,
        confidence=0.97,
        p_frontal=0.03,
        p_lateral=0.97,
        header_agrees=False,
        needs_review=False,
        decode_ms=1.0,
        inference_ms=1.0,
        batch_size=1,
    )


def test_predictions_are_added_once_per_model_version(migrated_db: str) -> None:
    with session_scope() as session:
        instance, _ = _add(session, "3.1")
        m1, m2 = register_version(session, "m1"), register_version(session, "m2")
        ids = (instance.id, m1.id, m2.id)
    instance_id, m1_id, m2_id = ids
    with session_scope() as session:
        assert (
            crud.record_predictions(
                session, model_version_id=m1_id, records=[_record(instance_id)], worker="w"
            )
            == 1
        )
    with session_scope() as session:  # a redelivered message adds nothing
        assert (
            crud.record_predictions(
                session, model_version_id=m1_id, records=[_record(instance_id)], worker="w"
            )
            == 0
        )
    with session_scope() as session:  # a new model adds a row, never overwrites
        assert (
            crud.record_predictions(
                session,
                model_version_id=m2_id,
                records=[_record(instance_id, OrientationLabel.frontal)],
                worker="w",
            )
            == 1
        )
        rows = crud.results(session)
    assert len(rows) == 1
    assert rows[0].status == InstanceStatus.done.value
    assert rows[0].model_version == "m2" and rows[0].label == "frontal"


def test_failed_rows_keep_their_reason_and_done_is_final(migrated_db: str) -> None:
    with session_scope() as session:
        bad, _ = _add(session, "4.1")
        good, _ = _add(session, "4.2")
        model = register_version(session)
        crud.mark_failed(session, instance_id=bad.id, error_code="not_dicom", error_message="x")
        crud.record_predictions(
            session, model_version_id=model.id, records=[_record(good.id)], worker="w"
        )
        crud.mark_failed(session, instance_id=good.id, error_code="late", error_message="y")
        by_uid = {r.sop_instance_uid: r for r in crud.results(session)}
    assert by_uid["4.1"].status == "failed" and by_uid["4.1"].error == "not_dicom: x"
    assert by_uid["4.2"].status == "done" and by_uid["4.2"].error is None


def test_activation_keeps_one_active_and_records_events(migrated_db: str) -> None:
    from sqlalchemy import select

    from db.models import ModelEvent, ModelVersion

    with session_scope() as session:
        m1, m2 = register_version(session, "m1"), register_version(session, "m2")
        crud.activate_model_version(session, version=m1, actor="t", reason="first")
        crud.activate_model_version(session, version=m2, actor="t", reason="better")
        active = session.scalars(select(ModelVersion).where(ModelVersion.is_active)).all()
        assert [v.name for v in active] == ["m2"]
        actions = session.scalars(select(ModelEvent.action).order_by(ModelEvent.id)).all()
    assert actions == ["register", "register", "promote", "promote"]


def test_unreadable_files_are_recorded_once(migrated_db: str) -> None:
    with session_scope() as session:
        _, created = crud.add_unreadable_file(
            session,
            file_path="/x/a.txt",
            file_sha256="b",
            file_size=3,
            error_code="not_dicom",
            error_message="no",
        )
        _, again = crud.add_unreadable_file(
            session,
            file_path="/x/a.txt",
            file_sha256="b",
            file_size=3,
            error_code="not_dicom",
            error_message="no",
        )
        assert created and not again
        assert crud.status_counts(session)["failed"] == 1


def test_enqueue_report_names_refused_files_too(migrated_db: str, tmp_path: Path) -> None:
    """A file refused at ingest is a failed row the report (and --wait) accounts for."""
    from cxr_orient.ingest import enqueue_paths

    (tmp_path / "notes.txt").write_text("not an image")
    report = enqueue_paths([tmp_path / "notes.txt"], send=None)
    assert len(report.refused) == 1 and report.queued == []
    with session_scope() as session:
        rows = crud.results(session, instance_ids=report.instance_ids)
    assert [(r.status, r.error.split(":")[0] if r.error else None) for r in rows] == [
        ("failed", "not_dicom")
    ]
