"""Every SQL block in docs/auditing.md runs, on SQLite and PostgreSQL, and returns
the rows it promises for a small, known history written through ``db.crud``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine

from cxr_orient.dicomnet.corrections.rules import (
    AnswerFacts,
    correction_record,
    plan_correction,
)
from cxr_orient.dicomnet.sr import new_sr_uid
from cxr_orient.studies import record_study_answers
from db import crud
from db.models import Instance, InstanceStatus, OrientationLabel, UidConflictAction
from db.session import make_engine, session_scope
from tests.utils.factories import prediction_record, register_version

AUDITING_MD = Path(__file__).resolve().parents[3] / "docs" / "auditing.md"
QUERY_BLOCK = re.compile(
    r"<!-- audit-query: (?P<name>[\w-]+)(?: dialect: (?P<dialect>\w+))? -->\s*"
    r"```sql\n(?P<sql>.*?)```",
    re.DOTALL,
)
DIALECTS = ("sqlite", "postgresql")
OUTBOX_DESTINATION = "dicom://PACS@pacs:104"
CORRECTION_DESTINATION = "dicom://IOCM@archive:104"


def audit_queries() -> dict[str, dict[str, str]]:
    """{query name: {dialect: sql}}; a block without a dialect serves both."""
    queries: dict[str, dict[str, str]] = {}
    for match in QUERY_BLOCK.finditer(AUDITING_MD.read_text()):
        dialects = [match["dialect"]] if match["dialect"] else list(DIALECTS)
        for dialect in dialects:
            assert dialect in DIALECTS, f"unknown dialect {dialect!r} in {match['name']}"
            by_dialect = queries.setdefault(match["name"], {})
            assert dialect not in by_dialect, f"{match['name']} given twice for {dialect}"
            by_dialect[dialect] = match["sql"].strip()
    return queries


def _prediction(
    instance_id: int,
    label: str,
    confidence: float,
    *,
    agrees: bool | None,
    review: bool = False,
    rotation: int | None = None,
    mirrored: bool | None = None,
    unusual: float | None = None,
    projection: str | None = None,
    p_ap: float | None = None,
    projection_agrees: bool | None = None,
) -> crud.PredictionRecord:
    p_lateral = confidence if label == "lateral" else 1 - confidence
    return prediction_record(
        instance_id=instance_id,
        label=OrientationLabel(label),
        confidence=confidence,
        p_frontal=1 - p_lateral,
        p_lateral=p_lateral,
        header_agrees=agrees,
        needs_review=review,
        decode_ms=5.0,
        inference_ms=2.0,
        batch_size=4,
        rotation=rotation,
        mirrored=mirrored,
        unusual_score=unusual,
        projection=projection,
        p_ap=p_ap,
        projection_agrees=projection_agrees,
        review_reason=",".join(
            r
            for r, on in (
                ("low_confidence", review and unusual is None),
                ("unusual_image", unusual is not None and unusual > 2.0),
            )
            if on
        )
        or None,
    )


def _populate() -> dict[str, int]:
    """The known history; returns instance ids by short name."""
    ids: dict[str, int] = {}
    with session_scope() as session:
        study = crud.get_or_create_study(session, study_instance_uid="1.2.840.1", patient_id="P1")
        session.flush()
        views = {"i1": "PA", "i2": "PA", "i3": None, "i4": "AP", "i6": "PA", "i7": "LL", "i8": "LL"}
        for name, view in views.items():
            instance, created = crud.add_instance(
                session,
                study=study,
                sop_instance_uid=f"1.2.840.1.{name[1:]}",
                series_instance_uid="1.2.840.1.0",
                file_path=f"/archive/{name}.dcm",
                file_sha256="0" * 64,
                file_size=1000,
                modality="DX",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                header_view_position=view,
            )
            assert created
            ids[name] = instance.id
        unreadable, _ = crud.add_unreadable_file(
            session,
            file_path="/archive/notes.txt",
            file_sha256="1" * 64,
            file_size=12,
            error_code="not_dicom",
            error_message="file '/archive/notes.txt' has no DICOM preamble",
        )
        ids["i5"] = unreadable.id

        def register(name: str) -> Any:
            return register_version(session, name, sha256="2" * 64, metrics={"accuracy": 0.97})

        v1 = register("compact-v1")
        crud.activate_model_version(session, version=v1, actor="test", reason="first model")
        crud.record_predictions(
            session,
            model_version_id=v1.id,
            records=[_prediction(ids["i1"], "frontal", 0.98, agrees=True)],
            worker="w1",
        )
        v2 = register("compact-v2")
        crud.activate_model_version(session, version=v2, actor="retrain", reason="better")
        crud.record_predictions(
            session,
            model_version_id=v2.id,
            records=[
                _prediction(
                    ids["i1"],
                    "frontal",
                    0.97,
                    agrees=True,
                    rotation=0,
                    mirrored=True,
                    unusual=0.9,
                    projection="AP",
                    p_ap=0.91,
                    projection_agrees=False,
                ),
                _prediction(ids["i2"], "lateral", 0.95, agrees=False, rotation=90, unusual=1.1),
                _prediction(
                    ids["i3"],
                    "frontal",
                    0.60,
                    agrees=None,
                    review=True,
                    rotation=0,
                    mirrored=False,
                    unusual=3.5,
                    p_ap=0.6,
                ),
                _prediction(ids["i8"], "lateral", 0.55, agrees=True, review=True),
            ],
            worker="w1",
            result_destinations=[OUTBOX_DESTINATION],
            new_report_uid=new_sr_uid,
        )
        # Their SRs: i1's delivered, i2's refused for good, i3's and i8's pending.
        outbox = crud.outbox_rows(session)
        crud.mark_outbox_sent(session, outbox_id=outbox[0].id)
        crud.mark_outbox_failed(
            session, outbox_id=outbox[1].id, error="delivery_refused: C-STORE status 0xA900"
        )
        # i2 (a lateral stored turned, its header saying otherwise) corrected by a
        # reviewer; its objects not sent yet.
        plan = plan_correction(AnswerFacts("lateral", 90, None, "PA", False))
        assert plan is not None and outbox[1].prediction_id is not None
        crud.add_correction(
            session,
            record=correction_record(
                plan,
                instance_id=ids["i2"],
                prediction_id=outbox[1].prediction_id,
                file_sha256="0" * 64,
                original_sop_instance_uid=_uid("i2"),
                decided_via="review",
                decided_by="reviewer rita",
                decided_at=datetime(2026, 12, 7, tzinfo=UTC),
            ),
            destinations=[CORRECTION_DESTINATION],
        )
        # A reclassify with the retired compact-v1 answers i2 after compact-v2 did: the
        # newer row, but not the current answer (compact-v2 was put in service later).
        run = crud.create_reclassify_run(
            session,
            actor="dr-a",
            model_version_id=v1.id,
            study_instance_uid="1.2.840.1",
            since=None,
            include_failed=False,
        )
        crud.record_predictions(
            session,
            model_version_id=v1.id,
            records=[_prediction(ids["i2"], "frontal", 0.90, agrees=True)],
            worker="w2",
        )
        run.cursor_instance_id, run.sent, run.skipped = ids["i8"], 1, 5
        run.finished_at = datetime.now(UTC)
        crud.mark_failed(
            session,
            instance_id=ids["i4"],
            error_code="unsupported_photometric",
            error_message="PhotometricInterpretation RGB is not a greyscale radiograph",
        )
        # Two files with known SOPInstanceUIDs and other bytes: a re-send of i6 kept first,
        # and a file naming another study for i2 (never moved, even under replace).
        for name, study_uid, policy in (
            ("i6", "1.2.840.1", "keep_first"),
            ("i2", "1.2.840.9", "replace"),
        ):
            crud.add_uid_conflict(
                session,
                instance_id=ids[name],
                known_status=InstanceStatus.queued if name == "i6" else InstanceStatus.done,
                study_instance_uid=study_uid,
                study_matches=study_uid == "1.2.840.1",
                known_file_path=f"/archive/{name}.dcm",
                known_file_sha256="0" * 64,
                known_file_size=1000,
                new_file_path=f"/archive/resent/{name}.dcm",
                new_file_sha256="3" * 64,
                new_file_size=1001,
                policy=policy,
                action=UidConflictAction.kept_first,
                detail="test",
            )
        assert crud.claim_for_processing(
            session, instance_id=ids["i7"], lease_s=20, claimed_by="node-a@host:1"
        )
        session.execute(  # its worker died an hour ago: the lease lapsed, nobody reaped it
            update(Instance)
            .where(Instance.id == ids["i7"])
            .values(
                updated_at=datetime.now(UTC) - timedelta(hours=1),
                lease_expires_at=datetime.now(UTC) - timedelta(hours=1),
            )
        )
        crud.add_label(
            session,
            instance_id=ids["i1"],
            label=OrientationLabel.frontal,
            source="qa",
            annotator="dr-a",
            projection="PA",
        )
        crud.add_label(
            session,
            instance_id=ids["i3"],
            label=OrientationLabel.frontal,
            source="qa",
            annotator="dr-a",
        )
        session.flush()
        crud.add_label(
            session,
            instance_id=ids["i3"],
            label=OrientationLabel.lateral,
            source="radiologist",
            annotator="dr-b",
        )
    ids.update(_populate_studies())
    return ids


def _populate_studies() -> dict[str, int]:
    """Study 1.2.840.2: a CT, out of scope (a first study answer), then an MR (a second);
    study 1.2.840.3: an instance held for its quiet period."""
    ids: dict[str, int] = {}
    for name, study_uid, modality, status in (
        ("ct", "1.2.840.2", "CT", InstanceStatus.out_of_scope),
        ("mr", "1.2.840.2", "MR", InstanceStatus.out_of_scope),
        ("held", "1.2.840.3", "DX", InstanceStatus.waiting),
    ):
        with session_scope() as session:
            study = crud.get_or_create_study(session, study_instance_uid=study_uid, patient_id="P2")
            instance, _ = crud.add_instance(
                session,
                study=study,
                sop_instance_uid=f"{study_uid}.{name}",
                series_instance_uid=None,
                file_path=f"/archive/{name}.dcm",
                file_sha256="4" * 64,
                file_size=100,
                modality=modality,
                transfer_syntax_uid=None,
                header_view_position=None,
                status=status,
                error_code="out_of_scope" if modality != "DX" else None,
                error_message=(
                    f"modality: Modality {modality!r} is not one of CR, DX (CXR_ACCEPT_MODALITIES)"
                )
                if modality != "DX"
                else None,
            )
            ids[name] = instance.id
            if status == InstanceStatus.waiting:
                crud.touch_study_arrivals(session, study_ids=[study.id], at=datetime.now(UTC))
            record_study_answers(session, instance_ids=[instance.id])
    return ids


def _uid(name: str) -> str:
    return f"1.2.840.1.{name[1:]}"


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def check_latest_answer(rows: list[Any]) -> None:
    got = {r.sop_instance_uid: (r.status, r.label, r.model_version, r.error_code) for r in rows}
    assert got == {
        _uid("i1"): ("done", "frontal", "compact-v2", None),
        _uid("i2"): ("done", "lateral", "compact-v2", None),
        _uid("i3"): ("done", "frontal", "compact-v2", None),
        _uid("i4"): ("failed", None, None, "unsupported_photometric"),
        None: ("failed", None, None, "not_dicom"),
        _uid("i6"): ("queued", None, None, None),
        _uid("i7"): ("processing", None, None, None),
        _uid("i8"): ("done", "lateral", "compact-v2", None),
        "1.2.840.2.ct": ("out_of_scope", None, None, "out_of_scope"),
        "1.2.840.2.mr": ("out_of_scope", None, None, "out_of_scope"),
        "1.2.840.3.held": ("waiting", None, None, None),
    }
    i2 = next(r for r in rows if r.sop_instance_uid == _uid("i2"))
    assert _bool(i2.header_agrees) is False
    assert i2.header_view_position == "PA"
    assert i2.p_lateral == pytest.approx(0.95)


def check_status_counts(rows: list[Any]) -> None:
    expected = [
        ("done", 4),
        ("failed", 2),
        ("out_of_scope", 2),
        ("processing", 1),
        ("queued", 1),
        ("waiting", 1),
    ]
    assert [tuple(r) for r in rows] == expected


def check_header_disagreements(rows: list[Any]) -> None:
    assert [(r.sop_instance_uid, r.header_view_position, r.predicted) for r in rows] == [
        (_uid("i2"), "PA", "lateral")
    ]


def check_failures_by_reason(rows: list[Any]) -> None:
    assert [(r.error_code, r.failures) for r in rows] == [
        ("not_dicom", 1),
        ("unsupported_photometric", 1),
    ]
    assert all(r.first_seen is not None and r.last_seen is not None for r in rows)


def check_failures_per_day(rows: list[Any]) -> None:
    assert len(rows) in (1, 2)  # 2 only if the test ran across midnight UTC
    assert sum(r.failures for r in rows) == 2
    today = datetime.now(UTC).date()
    assert {str(r.day) for r in rows} <= {str(today), str(today - timedelta(days=1))}


def check_stuck_processing(rows: list[Any]) -> None:
    assert [(r.sop_instance_uid, r.attempts) for r in rows] == [(_uid("i7"), 1)]


def check_answers_by_model(rows: list[Any]) -> None:
    got = [
        (r.model_version, r.answers, r.frontal, r.lateral, r.needs_review, r.header_disagreements)
        for r in rows
    ]
    assert got == [("compact-v1", 2, 2, 0, 0, 0), ("compact-v2", 4, 2, 2, 2, 1)]
    assert float(rows[1].mean_confidence) == pytest.approx((0.97 + 0.95 + 0.60 + 0.55) / 4)


def check_changed_between(rows: list[Any]) -> None:
    got = [(r.sop_instance_uid, r.label_a, r.confidence_a, r.label_b, r.confidence_b) for r in rows]
    assert got == [(_uid("i2"), "frontal", pytest.approx(0.90), "lateral", pytest.approx(0.95))]
    assert rows[0].study_instance_uid == "1.2.840.1" and rows[0].header_view_position == "PA"


def check_reclassify_runs(rows: list[Any]) -> None:
    got = [
        (
            r.actor,
            r.model_version,
            r.study_instance_uid,
            r.since,
            _bool(r.include_failed),
            r.sent,
            r.skipped,
        )
        for r in rows
    ]
    assert got == [("dr-a", "compact-v1", "1.2.840.1", None, False, 1, 5)]
    assert rows[0].cursor_instance_id > 0 and rows[0].finished_at is not None


def check_uid_conflicts(rows: list[Any]) -> None:
    got = [
        (
            r.sop_instance_uid,
            r.instance_study,
            r.file_study,
            _bool(r.study_matches),
            r.policy,
            r.action,
            r.known_status,
            r.new_file_path,
        )
        for r in rows
    ]
    assert got == [
        (
            _uid("i6"),
            "1.2.840.1",
            "1.2.840.1",
            True,
            "keep_first",
            "kept_first",
            "queued",
            "/archive/resent/i6.dcm",
        ),
        (
            _uid("i2"),
            "1.2.840.1",
            "1.2.840.9",
            False,
            "replace",
            "kept_first",
            "done",
            "/archive/resent/i2.dcm",
        ),
    ]
    assert {(r.known_file_sha256, r.new_file_sha256, r.current_file_sha256) for r in rows} == {
        ("0" * 64, "3" * 64, "0" * 64)
    }
    assert all(r.created_at is not None for r in rows)


def check_needs_review(rows: list[Any]) -> None:
    assert [r.sop_instance_uid for r in rows] == [_uid("i8"), _uid("i2")]


def check_model_history(rows: list[Any]) -> None:
    assert [(r.model_version, r.action, r.actor, r.previous_model) for r in rows] == [
        ("compact-v1", "register", "test", None),
        ("compact-v1", "promote", "test", None),
        ("compact-v2", "register", "test", None),
        ("compact-v2", "promote", "retrain", "compact-v1"),
    ]


def check_model_versions(rows: list[Any]) -> None:
    assert [(r.name, r.state, _bool(r.is_active)) for r in rows] == [
        ("compact-v1", "retired", False),
        ("compact-v2", "active", True),
    ]


def check_label_vs_prediction(rows: list[Any]) -> None:
    got = [(r.sop_instance_uid, r.true_label, r.annotator, r.predicted, r.correct) for r in rows]
    assert got == [
        (_uid("i1"), "frontal", "dr-a", "frontal", 1),
        (_uid("i3"), "lateral", "dr-b", "frontal", 0),
    ]


def check_accuracy_by_model(rows: list[Any]) -> None:
    assert [tuple(r) for r in rows] == [("compact-v1", 1, 1), ("compact-v2", 2, 1)]


def check_stored_turned(rows: list[Any]) -> None:
    # i1 mirrored, i2 turned 90 (a lateral: mirrored unknown); i3 upright; i8's answer
    # comes from a model without the head (NULLs) and is not listed.
    got = {(r.sop_instance_uid, r.rotation, _bool(r.mirrored)) for r in rows}
    assert got == {(_uid("i1"), 0, True), (_uid("i2"), 90, None)}


def check_unusual_images(rows: list[Any]) -> None:
    assert [(r.sop_instance_uid, r.review_reason) for r in rows] == [(_uid("i3"), "unusual_image")]
    assert rows[0].unusual_score == 3.5


def check_out_of_scope(rows: list[Any]) -> None:
    assert [(r.sop_instance_uid, r.modality, r.error_message.split(":")[0]) for r in rows] == [
        ("1.2.840.2.ct", "CT", "modality"),
        ("1.2.840.2.mr", "MR", "modality"),
    ]


def check_current_study_answers(rows: list[Any]) -> None:
    # Study 1 has work unfinished (i6 queued, i7 processing): no answer yet.
    assert [
        (
            r.study_instance_uid,
            r.sequence,
            r.frontal_count,
            r.lateral_count,
            r.out_of_scope_count,
            r.flags,
        )
        for r in rows
    ] == [("1.2.840.2", 2, 0, 0, 2, "no_frontal,no_lateral")]


def check_study_answer_history(rows: list[Any]) -> None:
    assert [
        (r.study_instance_uid, r.sequence, r.instance_count, r.out_of_scope_count) for r in rows
    ] == [("1.2.840.2", 1, 1, 1), ("1.2.840.2", 2, 2, 2)]


def check_waiting_studies(rows: list[Any]) -> None:
    assert [(r.study_instance_uid, r.waiting) for r in rows] == [("1.2.840.3", 1)]
    assert rows[0].last_arrival_at is not None


def check_outbox(rows: list[Any]) -> None:
    assert [tuple(r[:4]) for r in rows] == [
        (CORRECTION_DESTINATION, 1, 0, 0),
        (OUTBOX_DESTINATION, 2, 1, 1),
    ]
    assert rows[1].oldest_pending is not None and rows[1].most_attempts == 0


def check_corrections(rows: list[Any]) -> None:
    assert [
        (
            r.original,
            r.action,
            r.faults,
            r.view,
            r.decided_via,
            r.decided_by,
            r.pending,
            r.last_sent,
        )
        for r in rows
    ] == [(_uid("i2"), "correct", "turned,header_view", "LL", "review", "reviewer rita", 1, None)]
    assert rows[0].replacement_sop_instance_uid.startswith("2.25.")


def check_outbox_reports(rows: list[Any]) -> None:
    assert [(r.sop_instance_uid, r.status) for r in rows] == [
        (_uid("i1"), "sent"),
        (_uid("i2"), "failed"),
        (_uid("i3"), "pending"),
        (_uid("i8"), "pending"),
    ]
    assert rows[1].last_error.startswith("delivery_refused")
    assert len({r.sr_sop_instance_uid for r in rows}) == 4
    assert rows[0].sent_at is not None and rows[2].sent_at is None


def check_projections(rows: list[Any]) -> None:
    """i1: the model says AP where the header says PA; i3: p_ap but no projection
    (abstained, no header view); i1's first answer (compact-v1, no head) is not current."""
    got = [
        (
            r.sop_instance_uid,
            r.header_view_position,
            r.projection,
            round(r.p_ap, 2),
            _bool(r.projection_agrees),
            r.model_version,
        )
        for r in rows
    ]
    assert got == [
        (_uid("i1"), "PA", "AP", 0.91, False, "compact-v2"),
        (_uid("i3"), None, None, 0.6, None, "compact-v2"),
    ]


def check_projection_coverage(rows: list[Any]) -> None:
    got = [(r.model_version, r.frontals, r.projection_stated, r.header_disagrees) for r in rows]
    assert got == [("compact-v2", 2, 1, 1)]


def check_projection_labels(rows: list[Any]) -> None:
    got = [(r.sop_instance_uid, r.true_projection, r.annotator, r.predicted) for r in rows]
    assert got == [(_uid("i1"), "PA", "dr-a", "AP")]


CHECKS = {
    "out-of-scope": check_out_of_scope,
    "current-study-answers": check_current_study_answers,
    "study-answer-history": check_study_answer_history,
    "waiting-studies": check_waiting_studies,
    "outbox": check_outbox,
    "outbox-reports": check_outbox_reports,
    "corrections": check_corrections,
    "latest-answer": check_latest_answer,
    "status-counts": check_status_counts,
    "header-disagreements": check_header_disagreements,
    "failures-by-reason": check_failures_by_reason,
    "failures-per-day": check_failures_per_day,
    "stuck-processing": check_stuck_processing,
    "answers-by-model": check_answers_by_model,
    "changed-between": check_changed_between,
    "reclassify-runs": check_reclassify_runs,
    "needs-review": check_needs_review,
    "model-history": check_model_history,
    "model-versions": check_model_versions,
    "label-vs-prediction": check_label_vs_prediction,
    "accuracy-by-model": check_accuracy_by_model,
    "uid-conflicts": check_uid_conflicts,
    "stored-turned": check_stored_turned,
    "projections": check_projections,
    "projection-coverage": check_projection_coverage,
    "projection-labels": check_projection_labels,
    "unusual-images": check_unusual_images,
}


def test_every_documented_query_has_a_check_for_both_databases() -> None:
    queries = audit_queries()
    assert set(queries) == set(CHECKS), "a query in docs/auditing.md without a check, or vice versa"
    for name, by_dialect in queries.items():
        assert set(by_dialect) == set(DIALECTS), f"{name} is missing a dialect"


def _run(engine: Engine, sql: str) -> list[Any]:
    # Run verbatim, as an auditor pastes it (no SQLAlchemy bind-parameter parsing).
    with engine.connect() as conn:
        return list(conn.exec_driver_sql(sql).fetchall())


def test_documented_queries_return_the_expected_rows(migrated_db: str) -> None:
    _populate()
    dialect = "sqlite" if migrated_db.startswith("sqlite") else "postgresql"
    engine = make_engine(migrated_db)
    try:
        for name, by_dialect in audit_queries().items():
            rows = _run(engine, by_dialect[dialect])
            try:
                CHECKS[name](rows)
            except AssertionError as exc:
                raise AssertionError(f"{name} on {dialect}: {exc}\nrows: {rows}") from exc
    finally:
        engine.dispose()
