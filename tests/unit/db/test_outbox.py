"""The outbox on SQLite and the real PostgreSQL: rows made with the answer, claimed
atomically, retried with backoff, failed for good, retried by an operator; and the
CXR_RESULT_DESTINATIONS setting checked strictly."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session

from cxr_orient.dicomnet.addresses import parse_result_destination
from cxr_orient.dicomnet.delivery import backoff_s, retry_failed
from cxr_orient.dicomnet.sr import new_sr_uid
from cxr_orient.settings import Settings
from db import crud
from db.models import OrientationLabel, OutboxStatus, utcnow
from db.session import session_scope
from tests.utils.factories import prediction_record, register_version

DEST_A = "dicom://PACS@127.0.0.1:4242"
DEST_B = "dicomweb+http://127.0.0.1:8042/dicom-web"


def _instance(session: Session, uid: str) -> int:
    study = crud.get_or_create_study(session, study_instance_uid="1.2.3", patient_id="P")
    instance, _ = crud.add_instance(
        session,
        study=study,
        sop_instance_uid=uid,
        series_instance_uid="1.2.3.4",
        file_path=f"/x/{uid}.dcm",
        file_sha256="0" * 64,
        file_size=1,
        modality="DX",
        transfer_syntax_uid=None,
        header_view_position="PA",
    )
    return instance.id


def _record(instance_id: int, needs_review: bool = False) -> crud.PredictionRecord:
    return prediction_record(
        instance_id=instance_id,
        label=OrientationLabel.frontal,
        confidence=0.6 if needs_review else 0.99,
        p_frontal=0.99,
        p_lateral=0.01,
        header_agrees=True,
        needs_review=needs_review,
        decode_ms=1.0,
        inference_ms=1.0,
        batch_size=2,
        review_reason="low_confidence" if needs_review else None,
    )


def _answer_two(destinations: list[str]) -> list[int]:
    with session_scope() as session:
        ids = [_instance(session, "9.1"), _instance(session, "9.2")]
        model = register_version(session, "m1")
        crud.activate_model_version(session, version=model, actor="t", reason="in service")
        model_id = model.id
    with session_scope() as session:
        crud.record_predictions(
            session,
            model_version_id=model_id,
            worker="w",
            records=[_record(ids[0]), _record(ids[1], True)],
            result_destinations=destinations,
            new_report_uid=new_sr_uid,
        )
    with session_scope() as session:  # a redelivered message adds no row
        crud.record_predictions(
            session,
            model_version_id=model_id,
            worker="w",
            records=[_record(ids[0])],
            result_destinations=destinations,
            new_report_uid=new_sr_uid,
        )
    return ids


def test_rows_made_with_each_answer_one_uid_per_answer(migrated_db: str) -> None:
    _answer_two([DEST_A, DEST_B])
    with session_scope() as session:
        rows = crud.outbox_rows(session)
        assert len(rows) == 4, "2 answers (needs_review included) x 2 destinations"
        assert {r.status for r in rows} == {OutboxStatus.pending}
        by_prediction: dict[int | None, set[str]] = {}
        for r in rows:
            by_prediction.setdefault(r.prediction_id, set()).add(r.sr_sop_instance_uid)
        assert all(len(uids) == 1 for uids in by_prediction.values())
        uids = {u for us in by_prediction.values() for u in us}
        assert len(uids) == 2 and all(u.startswith("2.25.") and len(u) <= 64 for u in uids)
        summary = crud.outbox_summary(session)
    assert [(s.destination, s.pending, s.sent, s.failed) for s in summary] == [
        (DEST_A, 2, 0, 0),
        (DEST_B, 2, 0, 0),
    ]
    assert all(s.oldest_pending is not None for s in summary)


def test_the_report_uids_are_the_callers(migrated_db: str) -> None:
    """db mints no DICOM UID: each answer's report takes the next UID its caller's
    ``new_report_uid`` makes (one per answer, the same for every destination); and a
    destination without a UID source is refused before anything is written."""
    with session_scope() as session:
        ids = [_instance(session, "9.5"), _instance(session, "9.6")]
        model = register_version(session, "m1")
        crud.activate_model_version(session, version=model, actor="t", reason="in service")
        model_id = model.id
    made = iter(["1.2.3.999.1", "1.2.3.999.2"])
    with session_scope() as session:
        with pytest.raises(ValueError, match="new_report_uid"):
            crud.record_predictions(
                session,
                model_version_id=model_id,
                worker="w",
                records=[_record(ids[0])],
                result_destinations=[DEST_A],
            )
        assert (
            crud.record_predictions(
                session,
                model_version_id=model_id,
                worker="w",
                records=[_record(ids[0]), _record(ids[1])],
                result_destinations=[DEST_A, DEST_B],
                new_report_uid=lambda: next(made),
            )
            == 2
        )
        rows = crud.outbox_rows(session)
    assert sorted((r.sr_sop_instance_uid, r.destination) for r in rows) == [
        ("1.2.3.999.1", DEST_A),
        ("1.2.3.999.1", DEST_B),
        ("1.2.3.999.2", DEST_A),
        ("1.2.3.999.2", DEST_B),
    ]


def test_new_sr_uid_is_a_fresh_valid_uid() -> None:
    uids = {new_sr_uid() for _ in range(100)}
    assert len(uids) == 100
    assert all(re.fullmatch(r"2\.25\.[1-9][0-9]*", u) and len(u) <= 64 for u in uids)


def test_no_destinations_no_rows(migrated_db: str) -> None:
    _answer_two([])
    with session_scope() as session:
        assert crud.outbox_rows(session) == []


def test_a_candidate_s_answers_are_not_sent(migrated_db: str) -> None:
    """reclassify --model CANDIDATE answers in SQL only: the PACS hears the model in
    service."""
    ids = _answer_two([DEST_A])
    with session_scope() as session:
        candidate = register_version(session, "candidate").id
        before = len(crud.outbox_rows(session))
        assert (
            crud.record_predictions(
                session,
                model_version_id=candidate,
                worker="w",
                records=[_record(ids[0])],
                result_destinations=[DEST_A],
                new_report_uid=new_sr_uid,
            )
            == 1
        )
        assert len(crud.outbox_rows(session)) == before == 2


def test_claim_is_exclusive_leased_and_counts_attempts(migrated_db: str) -> None:
    _answer_two([DEST_A])
    with session_scope() as session:
        first = crud.claim_due_outbox(session, limit=1, lease_s=60)
    with session_scope() as session:
        second = crud.claim_due_outbox(session, limit=10, lease_s=60)
    with session_scope() as session:
        third = crud.claim_due_outbox(session, limit=10, lease_s=60)
    assert len(first) == 1 and len(second) == 1 and set(first).isdisjoint(second)
    assert third == [], "leased rows are not due"
    with session_scope() as session:
        work = crud.outbox_work(session, outbox_ids=first + second)
    assert [w.attempts for w in work] == [1, 1]
    assert {w.sop_instance_uid for w in work} == {"9.1", "9.2"}
    assert {w.model_name for w in work} == {"m1"}
    # Sent; retrying (due again after its backoff); failed for good.
    with session_scope() as session:
        crud.mark_outbox_sent(session, outbox_id=first[0])
        crud.mark_outbox_retry(
            session,
            outbox_id=second[0],
            error="down",
            next_attempt_at=utcnow() - timedelta(seconds=1),
        )
    with session_scope() as session:
        again = crud.claim_due_outbox(session, limit=10, lease_s=60)
    assert again == second, "a sent row is never claimed again"
    with session_scope() as session:
        crud.mark_outbox_failed(session, outbox_id=second[0], error="refused")
        crud.mark_outbox_sent(session, outbox_id=second[0])  # no effect: only pending
    with session_scope() as session:
        rows = {r.id: r for r in crud.outbox_rows(session)}
    assert rows[first[0]].status == OutboxStatus.sent and rows[first[0]].sent_at
    failed = rows[second[0]]
    assert (failed.status, failed.attempts, failed.last_error) == (
        OutboxStatus.failed,
        2,
        "refused",
    )
    # The operator retries it: pending and due now, its history kept.
    assert retry_failed(destination="dicom://PACS@127.0.0.1:4242/") == 1
    with session_scope() as session:
        assert crud.claim_due_outbox(session, limit=10, lease_s=60) == second
        row = {r.id: r for r in crud.outbox_rows(session)}[second[0]]
    assert row.attempts == 3 and row.last_error == "refused"


def test_backoff_doubles_up_to_the_cap() -> None:
    settings = Settings(outbox_backoff_s=5, outbox_backoff_max_s=60)
    assert [backoff_s(n, settings.results) for n in (1, 2, 3, 4, 5, 50)] == [5, 10, 20, 40, 60, 60]


@pytest.mark.parametrize(
    "value",
    [
        "http://pacs:8042",
        "dicom://pacs:104",
        "dicom://PACS@pacs",
        "dicom://PACS@pacs:104/x",
        "dicom://A\\B@pacs:104",
        "dicom://SEVENTEEN_CHARS_AE@pacs:104",
        "dicomweb+http://user@pacs:8042/dw",
        "dicomweb+http://:8042/dw",
        f"{DEST_A},{DEST_A}",
        "dicom://PACS@pacs:99999",
    ],
    ids=[
        "plain-http",
        "no-ae",
        "no-port",
        "path",
        "backslash",
        "long-ae",
        "user",
        "no-host",
        "twice",
        "bad-port",
    ],
)
def test_bad_destinations_fail_at_startup(value: str) -> None:
    with pytest.raises(ValidationError, match="CXR_RESULT_DESTINATIONS"):
        Settings(result_destinations=value)


def test_destinations_are_canonical() -> None:
    settings = Settings(
        result_destinations=" dicom://PACS@LocalHost:4242 , "
        "dicomweb+https://pacs.example/dicom-web/"
    )
    assert settings.results.destination_urls == [
        "dicom://PACS@localhost:4242",
        "dicomweb+https://pacs.example:443/dicom-web",
    ]
    web = parse_result_destination("dicomweb+http://h:8042/dicom-web")
    assert web.http_url == "http://h:8042/dicom-web"
    with pytest.raises(ValidationError, match="CXR_RESULT_CALLING_AE"):
        Settings(result_calling_ae="")


def test_delivery_is_scheduled_and_routed_by_settings(
    configure: Callable[..., None], tmp_path: Path
) -> None:
    from worker.celery import DELIVER_OUTBOX, make_app

    configure(data_dir=tmp_path, result_destinations=DEST_A, outbox_interval_s=2)
    app = make_app()
    assert app.conf.beat_schedule["deliver-outbox"]["schedule"] == 2
    assert app.amqp.router.route({}, DELIVER_OUTBOX)["queue"].name == "cxr-orient"
    configure(data_dir=tmp_path, result_destinations=DEST_A, outbox_queue="cxr-outbox")
    assert make_app().amqp.router.route({}, DELIVER_OUTBOX)["queue"].name == "cxr-outbox"
    configure(data_dir=tmp_path, result_destinations="")
    assert "deliver-outbox" not in make_app().conf.beat_schedule
