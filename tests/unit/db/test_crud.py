"""Database access functions on SQLite and the real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cxr_orient.settings import get_settings
from db import crud
from db.crud.common import UID_CHUNK, chunked
from db.models import InstanceStatus, OrientationLabel, utcnow
from db.session import session_scope
from tests.utils.factories import prediction_record, register_version


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


def _lapse(instance_id: int) -> None:
    """Make the instance's lease lapse now, as if its worker stopped renewing it."""
    from sqlalchemy import update

    with session_scope() as session:
        session.execute(
            update(crud.Instance)
            .where(crud.Instance.id == instance_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def test_claim_is_a_lease_exclusive_until_it_lapses(migrated_db: str) -> None:
    with session_scope() as session:
        instance, _ = _add(session, "2.1")
        instance_id = instance.id
    with session_scope() as session:
        assert crud.claim_for_processing(
            session,
            instance_id=instance_id,
            lease_s=20,
            claim_token="a" * 32,
            claimed_by="nodeA@h:1",
        )
        assert not crud.claim_for_processing(
            session, instance_id=instance_id, lease_s=20, claim_token="b" * 32
        )
        row = session.get(crud.Instance, instance_id)
        assert row is not None and row.claimed_by == "nodeA@h:1"
        assert row.lease_expires_at is not None
    _lapse(instance_id)
    with session_scope() as session:
        assert crud.claim_for_processing(
            session,
            instance_id=instance_id,
            lease_s=20,
            claim_token="b" * 32,
            claimed_by="nodeB@h:2",
        )
        row = session.get(crud.Instance, instance_id)
        assert row is not None and row.attempts == 2 and row.claim_token == "b" * 32


def test_renewal_keeps_a_slow_claim_and_only_the_holders(migrated_db: str) -> None:
    with session_scope() as session:
        a, _ = _add(session, "2.2")
        b, _ = _add(session, "2.3")
        ids = (a.id, b.id)
    with session_scope() as session:
        assert crud.claim_for_processing(
            session, instance_id=ids[0], lease_s=20, claim_token="a" * 32
        )
        assert crud.claim_for_processing(
            session, instance_id=ids[1], lease_s=20, claim_token="b" * 32
        )
    _lapse(ids[0])
    _lapse(ids[1])
    with session_scope() as session:  # holder a renews in time; b's worker is gone
        assert crud.renew_leases(session, claim_tokens=["a" * 32], lease_s=20) == 1
        assert crud.unfinished_instance_ids(session, lapsed_lease_s=20) == [ids[1]]
        assert crud.requeue_lapsed_claims(session, lease_s=20) == [ids[1]]
        assert crud.requeue_lapsed_claims(session, lease_s=20) == []  # re-sent once
        # the renewal after the reaper finds nothing of b's left to renew
        assert crud.renew_leases(session, claim_tokens=["b" * 32], lease_s=20) == 0
        reaped = crud.get_instance(session, instance_id=ids[1])
        assert reaped is not None and reaped.status == InstanceStatus.queued


def test_requeue_never_takes_a_live_lease(migrated_db: str) -> None:
    with session_scope() as session:
        instance, _ = _add(session, "2.4")
        instance_id = instance.id
    with session_scope() as session:
        assert crud.claim_for_processing(session, instance_id=instance_id, lease_s=20)
        assert crud.unfinished_instance_ids(session, lapsed_lease_s=20) == []
        crud.mark_queued(session, instance_ids=[instance_id], lease_s=20)
        row = crud.get_instance(session, instance_id=instance_id)
        assert row is not None and row.status == InstanceStatus.processing


def test_a_lapsed_claim_records_nothing_its_successor_records_once(migrated_db: str) -> None:
    """A worker cut off from the database past its lease comes back with answers: the
    instance was re-queued and claimed by another worker, whose answer alone counts."""
    with session_scope() as session:
        instance, _ = _add(session, "2.5")
        version = register_version(session, "m-lease")
        instance_id, version_id = instance.id, version.id
    with session_scope() as session:
        assert crud.claim_for_processing(
            session, instance_id=instance_id, lease_s=20, claim_token="a" * 32
        )
    _lapse(instance_id)
    with session_scope() as session:
        assert crud.requeue_lapsed_claims(session, lease_s=20) == [instance_id]
        assert crud.claim_for_processing(
            session, instance_id=instance_id, lease_s=20, claim_token="b" * 32
        )
    with session_scope() as session:  # the cut-off worker is back
        assert (
            crud.held_instance_ids(session, claim_token="a" * 32, instance_ids=[instance_id]) == []
        )
        assert (
            crud.record_predictions(
                session,
                model_version_id=version_id,
                worker="A",
                records=[_record(instance_id)],
                claim_token="a" * 32,
            )
            == 0
        )
        assert not crud.mark_failed(
            session,
            instance_id=instance_id,
            error_code="x",
            error_message="x",
            claim_token="a" * 32,
        )
    with session_scope() as session:
        assert (
            crud.record_predictions(
                session,
                model_version_id=version_id,
                worker="B",
                records=[_record(instance_id)],
                claim_token="b" * 32,
            )
            == 1
        )
        row = crud.get_instance(session, instance_id=instance_id)
        assert row is not None and row.status == InstanceStatus.done
        assert row.claim_token is None and row.lease_expires_at is None


def _record(
    instance_id: int, label: OrientationLabel = OrientationLabel.lateral
) -> crud.PredictionRecord:
    return prediction_record(
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
    assert rows[0].model_version == "m2"
    assert rows[0].answer is not None and rows[0].answer.label == "frontal"


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
    report = enqueue_paths([tmp_path / "notes.txt"], send=None, settings=get_settings())
    assert len(report.refused) == 1 and report.queued == []
    with session_scope() as session:
        rows = crud.results(session, instance_ids=report.instance_ids)
    assert [(r.status, r.error.split(":")[0] if r.error else None) for r in rows] == [
        ("failed", "not_dicom")
    ]


def test_chunked_splits_in_order_and_yields_nothing_for_nothing() -> None:
    assert list(chunked(range(12), 5)) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert list(chunked([], 5)) == []
    assert list(chunked((u for u in "abc"), 3)) == [["a", "b", "c"]]


def test_lookups_by_uid_span_more_than_one_chunk(migrated_db: str) -> None:
    """The UID lookups read their IN lists a chunk at a time: a list longer than one
    chunk finds every recorded UID, across the chunk boundary."""
    uids = [f"7.{n}" for n in range(UID_CHUNK + 3)]
    studies = {f"8.{n}": None for n in range(UID_CHUNK + 3)}
    with session_scope() as session:
        made = crud.get_or_create_studies(session, studies=studies)
        assert sorted(made) == sorted(studies)
        study = made["8.0"]
        crud.add_instances(
            session,
            new=[
                crud.NewInstance(
                    study=study,
                    sop_instance_uid=uid,
                    series_instance_uid=None,
                    file_path=f"/x/{uid}.dcm",
                    file_sha256="0" * 64,
                    file_size=1,
                    modality="CR",
                    transfer_syntax_uid=None,
                    header_view_position=None,
                )
                for uid in uids[1:]
            ],
        )
    with session_scope() as session:
        again = crud.get_or_create_studies(session, studies=studies)
        assert {s.id for s in again.values()} == {s.id for s in made.values()}
        asked = [*uids, "7.unknown"]
        assert crud.known_sop_instance_uids(session, sop_instance_uids=asked) == set(uids[1:])
        found = crud.find_instances_by_uids(session, sop_instance_uids=asked)
        assert sorted(found) == sorted(uids[1:])
        ids = [i.id for i in found.values()]
        assert crud.count_unfinished(session, instance_ids=ids) == len(uids) - 1
