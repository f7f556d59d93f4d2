"""Corrections decided by a person: a reviewer who confirms the fault the answer found
(the review page's key), an operator on the command line; and reversals (a rejection note
of an earlier correction's replacement). Each is one ``corrections`` row with its outbox
rows, in the caller's transaction; rule corrections are the worker's
(:func:`.rules.rule_correction`, recorded with the answer)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from cxr_orient.dicomnet.corrections.rejection import rejection_note_uid
from cxr_orient.dicomnet.corrections.rules import (
    AnswerFacts,
    CorrectionPlan,
    correction_record,
    plan_correction,
)
from cxr_orient.errors import CorrectionError
from cxr_orient.settings import CorrectionSettings
from db import crud
from db.models import CorrectionAction, utcnow

__all__ = ["correct_instance", "facts_of", "offer_for", "reverse_correction"]


def facts_of(found: crud.AnswerToCorrect) -> AnswerFacts:
    """The rules' facts of a stored answer, its projection (PA / AP) as the prediction
    recorded it (``predictions.projection``; None where the model abstained or has no
    PA/AP head: a frontal's view then comes from its header)."""
    answer = found.answer
    return AnswerFacts(
        answer.label,
        answer.rotation,
        answer.mirrored,
        found.header_view,
        answer.needs_review,
        answer.projection,
    )


def offer_for(
    session: Session, *, instance_id: int, corrections: CorrectionSettings
) -> CorrectionPlan | None:
    """The correction a reviewer may send for the instance's current answer (None:
    corrections are off, nothing is wrong, it is corrected already, or the view cannot be
    stated)."""
    if not corrections.correction_destinations:
        return None
    answer = crud.answer_to_correct(session, instance_id=instance_id)
    if answer is None or answer.file_replaced or not answer.sop_instance_uid:
        return None
    if crud.correction_of_instance(session, instance_id=instance_id) is not None:
        return None
    return plan_correction(facts_of(answer))


def correct_instance(
    session: Session,
    *,
    instance_id: int,
    decided_by: str,
    via: str,
    corrections: CorrectionSettings,
    now: datetime | None = None,
) -> int:
    """Record the correction of the instance's current answer (confirmed by
    ``decided_by``); returns its id. Raises :class:`CorrectionError` saying why not."""
    destinations = corrections.destination_urls
    if not destinations:
        raise CorrectionError("corrections are off: CXR_CORRECTION_DESTINATIONS is empty")
    answer = crud.answer_to_correct(session, instance_id=instance_id)
    if answer is None:
        raise CorrectionError(f"instance {instance_id} has no answer to correct from")
    if answer.file_replaced or not answer.sop_instance_uid:
        raise CorrectionError(
            f"instance {instance_id}: its file was replaced since the "
            "answer, or it has no SOP Instance UID"
        )
    if crud.correction_of_instance(session, instance_id=instance_id) is not None:
        raise CorrectionError(f"instance {instance_id} is corrected already")
    plan = plan_correction(facts_of(answer))
    if plan is None:
        raise CorrectionError(
            f"instance {instance_id}: nothing to correct in its answer, or its view cannot "
            "be stated (a frontal whose header names no PA/AP and no projection answer)"
        )
    record = correction_record(
        plan,
        instance_id=instance_id,
        prediction_id=answer.prediction_id,
        file_sha256=answer.file_sha256,
        original_sop_instance_uid=answer.sop_instance_uid,
        decided_via=via,
        decided_by=decided_by[:128],
        decided_at=now or utcnow(),
    )
    found = crud.add_correction(session, record=record, destinations=destinations)
    if found is None:
        raise CorrectionError(f"instance {instance_id}: its original is rejected already")
    return found


def reverse_correction(
    session: Session,
    *,
    correction_id: int,
    decided_by: str,
    reason: str,
    via: str = "cli",
    now: datetime | None = None,
) -> int:
    """Record the reversal of correction ``correction_id``: a rejection note of its
    replacement, sent where the correction went; returns the reversal's id."""
    undone = crud.correction(session, correction_id=correction_id)
    if undone is None or undone.action != CorrectionAction.correct:
        raise CorrectionError(f"no correction {correction_id} to reverse")
    destinations = crud.destinations_of(session, correction_id=correction_id)
    record = crud.CorrectionRecord(
        action=CorrectionAction.reverse,
        instance_id=undone.instance_id,
        prediction_id=undone.prediction_id,
        faults=undone.faults,
        rotation=undone.rotation,
        mirrored=undone.mirrored,
        view=undone.view,
        file_sha256=undone.file_sha256,
        original_sop_instance_uid=undone.original_sop_instance_uid,
        replacement_sop_instance_uid=undone.replacement_sop_instance_uid,
        rejection_note_uid=rejection_note_uid([undone.replacement_sop_instance_uid]),
        decided_via=via,
        decided_by=decided_by[:128],
        decided_at=now or utcnow(),
        reason=reason,
        reverses_id=correction_id,
    )
    found = crud.add_correction(session, record=record, destinations=destinations)
    if found is None:
        raise CorrectionError(f"correction {correction_id} is reversed already")
    return found
