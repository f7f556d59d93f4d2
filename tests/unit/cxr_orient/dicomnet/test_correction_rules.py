"""When a correction is made: the faults an answer finds, the view the replacement
states, the rule (CXR_CORRECTION_RULES, off by default), the settings checked strictly;
and the rule's corrections recorded with the answer, in its transaction (SQLite and
PostgreSQL): once per original, only for the model in service, a reversal once."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session

from cxr_orient.answer import Answer
from cxr_orient.dicomnet.corrections import (
    Correction,
    Turn,
    corrected_instance_uid,
    rejection_note_uid,
)
from cxr_orient.dicomnet.corrections.decisions import (
    correct_instance,
    offer_for,
    reverse_correction,
)
from cxr_orient.dicomnet.corrections.rules import (
    AnswerFacts,
    faults_of,
    plan_correction,
    rule_allows,
    rule_correction,
)
from cxr_orient.errors import CorrectionError
from cxr_orient.settings import CorrectionSettings, Settings
from db import crud
from db.models import OutboxStatus
from db.session import session_scope
from tests.utils.factories import register_version

WHEN = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)
PACS = "dicom://PACS@127.0.0.1:4242"
ALL = frozenset({"turned", "mirrored", "header_view", "header_projection"})


def _facts(
    label: str = "lateral",
    rotation: int | None = 90,
    mirrored: bool | None = None,
    header: str | None = "PA",
    needs_review: bool = False,
    projection: str | None = None,
) -> AnswerFacts:
    return AnswerFacts(label, rotation, mirrored, header, needs_review, projection)


@pytest.mark.parametrize(
    ("facts", "faults", "view"),
    [
        (_facts(), ("turned", "header_view"), "LL"),
        (_facts(rotation=0), ("header_view",), "LL"),
        (_facts(header="RL", rotation=270), ("turned",), "RL"),
        (_facts(header=None, rotation=180), ("turned",), "LL"),
        (_facts("frontal", 0, True, "AP"), ("mirrored",), "AP"),
        (_facts("frontal", 90, False, "PA"), ("turned",), "PA"),
        (_facts("frontal", 0, False, "PA", projection="AP"), ("header_projection",), "AP"),
        (_facts("frontal", 0, False, "LL", projection="PA"), ("header_view",), "PA"),
    ],
    ids=[
        "lateral-turned-said-pa",
        "lateral-said-pa",
        "rl-turned",
        "no-header-turned",
        "frontal-mirrored",
        "frontal-turned",
        "projection-wrong",
        "frontal-said-ll-projection",
    ],
)
def test_faults_and_the_view_stated(facts: AnswerFacts, faults: tuple[str, ...], view: str) -> None:
    assert faults_of(facts) == faults
    plan = plan_correction(facts)
    assert plan is not None and plan.faults == faults and plan.view == view
    assert plan.turn == Turn.from_answer(facts.rotation, facts.mirrored)


@pytest.mark.parametrize(
    "facts",
    [
        _facts(rotation=0, header="LL"),  # nothing wrong
        _facts(rotation=0, header="LLD"),  # decubitus: neither view, not called wrong
        _facts(rotation=None),  # no orientation head: the turn is unknown
        _facts("frontal", 0, False, "LL"),  # header said lateral, no projection: PA or AP?
        _facts("lateral", 0, None, "LL", projection="AP"),  # a lateral has no projection
    ],
    ids=[
        "upright-ll",
        "decubitus",
        "no-orientation-head",
        "frontal-no-projection",
        "lateral-projection",
    ],
)
def test_no_correction_planned(facts: AnswerFacts) -> None:
    assert plan_correction(facts) is None


def test_the_rule_needs_every_fault_enabled_and_no_review() -> None:
    plan = plan_correction(_facts())
    assert plan is not None
    assert rule_allows(plan, _facts(), frozenset({"turned", "header_view"}))
    assert not rule_allows(plan, _facts(), frozenset({"turned"}))
    assert not rule_allows(plan, _facts(), frozenset())
    assert not rule_allows(plan, _facts(needs_review=True), ALL)


def test_rule_correction_records_the_uids_the_builders_make() -> None:
    record = rule_correction(
        _facts(),
        enabled=ALL,
        instance_id=7,
        original_sop_instance_uid="1.2.3.4",
        model_name="m3",
        decided_at=WHEN,
    )
    assert record is not None
    assert record.replacement_sop_instance_uid == corrected_instance_uid(
        "1.2.3.4", Correction(Turn(90), "LL", "anyone", WHEN)
    )
    assert record.rejection_note_uid == rejection_note_uid(["1.2.3.4"])
    assert (record.faults, record.view, record.decided_via) == ("turned,header_view", "LL", "rule")
    assert record.decided_by == "model m3 (rule turned, header_view)"
    assert (
        rule_correction(
            _facts(),
            enabled=frozenset(),
            instance_id=7,
            original_sop_instance_uid="1.2.3.4",
            model_name="m3",
            decided_at=WHEN,
        )
        is None
    )


def test_settings_off_by_default_and_checked() -> None:
    default = Settings(_env_file=None).corrections
    assert default.destination_urls == [] and default.rule_faults == set()
    chosen = Settings(
        correction_rules=" Header_View ,turned",
        correction_destinations=f"{PACS}, dicomweb+http://h:80/dicom-web",
    )
    assert chosen.corrections.correction_rules == ["turned", "header_view"]
    assert chosen.corrections.destination_urls == [PACS, "dicomweb+http://h:80/dicom-web"]
    with pytest.raises(ValidationError, match="unknown fault upside_down"):
        Settings(correction_rules="turned,upside_down")
    with pytest.raises(ValidationError, match="twice"):
        Settings(correction_destinations=f"{PACS},{PACS}")
    with pytest.raises(ValidationError, match="scheme"):
        Settings(correction_destinations="ftp://pacs")


# ------------------------------------------------------------------ recorded


def _instance(session: Session, uid: str, view: str = "PA") -> int:
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
        header_view_position=view,
    )
    return instance.id


def _lateral_turned(instance_id: int) -> crud.PredictionRecord:
    return crud.PredictionRecord(
        instance_id=instance_id,
        answer=Answer(
            label="lateral",
            confidence=0.99,
            p_frontal=0.01,
            p_lateral=0.99,
            needs_review=False,
            header_agrees=False,
            rotation=90,
        ),
        decode_ms=1.0,
        inference_ms=1.0,
        batch_size=1,
    )


def _record(model_id: int, instance_id: int, uid: str) -> int:
    decided = rule_correction(
        _facts(),
        enabled=ALL,
        instance_id=instance_id,
        original_sop_instance_uid=uid,
        model_name="m",
        decided_at=WHEN,
    )
    assert decided is not None
    with session_scope() as session:
        return crud.record_predictions(
            session,
            model_version_id=model_id,
            worker="w",
            records=[_lateral_turned(instance_id)],
            corrections={instance_id: decided},
            correction_destinations=[PACS],
        )


def test_a_rule_correction_is_recorded_with_its_answer_once(migrated_db: str) -> None:
    with session_scope() as session:
        first, second = _instance(session, "9.1"), _instance(session, "9.2")
        model = register_version(session, "m1")
        crud.activate_model_version(session, version=model, actor="t", reason="in service")
        candidate = register_version(session, "m2")
        model_id, candidate_id = model.id, candidate.id
    assert _record(model_id, first, "9.1") == 1
    assert _record(model_id, first, "9.1") == 0  # a redelivered message: nothing more
    assert _record(candidate_id, second, "9.2") == 1  # not in service: no correction
    with session_scope() as session:
        rows = crud.correction_rows(session)
        outbox = crud.outbox_rows(session)
        (answer,) = [a for a in [crud.answer_to_correct(session, instance_id=first)] if a]
    assert [(r.instance_id, r.faults, r.view, r.pending, r.delivered_at) for r in rows] == [
        (first, "turned,header_view", "LL", 1, None)
    ]
    assert [(o.correction_id, o.prediction_id, o.destination, o.status) for o in outbox] == [
        (rows[0].id, None, PACS, OutboxStatus.pending)
    ]
    assert outbox[0].sr_sop_instance_uid == rows[0].replacement_sop_instance_uid
    assert answer.answer.rotation == 90 and answer.header_view == "PA"


def test_a_person_corrects_once_and_reverses_once(migrated_db: str) -> None:
    with session_scope() as session:
        first = _instance(session, "9.1")
        model = register_version(session, "m1")
        crud.activate_model_version(session, version=model, actor="t", reason="in service")
        crud.record_predictions(
            session, model_version_id=model.id, worker="w", records=[_lateral_turned(first)]
        )
    off = CorrectionSettings(_env_file=None)
    with session_scope() as session:
        assert offer_for(session, instance_id=first, corrections=off) is None
        with pytest.raises(CorrectionError, match="corrections are off"):
            correct_instance(
                session, instance_id=first, decided_by="reviewer r", via="review", corrections=off
            )
    on = Settings(correction_destinations=PACS).corrections
    with session_scope() as session:
        offer = offer_for(session, instance_id=first, corrections=on)
        assert offer is not None and offer.view == "LL"
        made = correct_instance(
            session,
            instance_id=first,
            decided_by="reviewer r",
            via="review",
            corrections=on,
            now=WHEN,
        )
    with session_scope() as session:
        assert offer_for(session, instance_id=first, corrections=on) is None
        with pytest.raises(CorrectionError, match="corrected already"):
            correct_instance(
                session, instance_id=first, decided_by="reviewer s", via="review", corrections=on
            )
    with session_scope() as session:
        undone = reverse_correction(
            session, correction_id=made, decided_by="ops o", reason="wrong", now=WHEN
        )
    with session_scope() as session, pytest.raises(CorrectionError, match="reversed already"):
        reverse_correction(session, correction_id=made, decided_by="ops o", reason="again")
    with session_scope() as session:
        rows = {r.id: r for r in crud.correction_rows(session)}
        assert crud.correction_of_instance(session, instance_id=first) == made
        assert offer_for(session, instance_id=first, corrections=on) is None
        with pytest.raises(CorrectionError, match="no correction"):
            reverse_correction(session, correction_id=undone, decided_by="o", reason="r")
    assert rows[undone].reverses_id == made and rows[undone].action == "reverse"
    assert rows[undone].rejection_note_uid == rejection_note_uid(
        [rows[made].replacement_sop_instance_uid]
    )


def test_a_stored_answers_projection_is_what_a_person_corrects_from(migrated_db: str) -> None:
    """The review page's and the CLI's offer read the projection the prediction recorded
    (predictions.projection): a frontal stored upright whose header says PA and whose
    model said AP is offered a header_projection correction stating AP; one whose model
    abstained (no projection) is offered nothing."""
    with session_scope() as session:
        said_ap, abstained = _instance(session, "9.1"), _instance(session, "9.2")
        model = register_version(session, "m1")
        crud.activate_model_version(session, version=model, actor="t", reason="in service")
        frontal = Answer(
            label="frontal",
            confidence=0.99,
            p_frontal=0.99,
            p_lateral=0.01,
            needs_review=False,
            header_agrees=True,
            rotation=0,
            mirrored=False,
        )
        crud.record_predictions(
            session,
            model_version_id=model.id,
            worker="w",
            records=[
                crud.PredictionRecord(
                    instance_id=said_ap,
                    answer=replace(frontal, projection="AP", p_ap=0.97, projection_agrees=False),
                ),
                crud.PredictionRecord(instance_id=abstained, answer=replace(frontal, p_ap=0.6)),
            ],
        )
    on = Settings(correction_destinations=PACS).corrections
    with session_scope() as session:
        offer = offer_for(session, instance_id=said_ap, corrections=on)
        assert offer is not None
        assert (offer.faults, offer.view) == (("header_projection",), "AP")
        assert offer_for(session, instance_id=abstained, corrections=on) is None
