"""When a film is corrected, and what the correction says: the faults an answer finds in
the stored film and its header, the view the replacement states, and the rule that lets
a worker send a correction on its own (CXR_CORRECTION_RULES) or a reviewer confirm one.

Faults (:data:`cxr_orient.settings.CORRECTION_FAULTS`):

- ``turned``: the film is stored rotated (the answer's ``rotation`` is 90, 180 or 270);
- ``mirrored``: a frontal stored mirrored left-right (the model leaves a lateral's
  facing open: never a fault there);
- ``header_view``: the header's View Position names the other view (PA on a lateral);
  a header with no View Position, or one that names neither view (decubitus, oblique),
  is not called wrong;
- ``header_projection``: a frontal's header says PA and the model's projection AP, or
  the other way; only with a model that answers the projection.

The replacement's view: a lateral keeps the header's LL or RL and is LL otherwise (the
model does not tell left from right lateral; LL is the standard chest lateral); a
frontal takes the model's projection when it gives one, else the header's PA or AP. A
frontal whose header names neither (the header said lateral) and whose model gives no
projection cannot be stated: no correction is planned (:func:`plan_correction` gives
None) by rule or review.

A rule correction needs an answer of the model in service that needs no review (above
the review threshold and not an unusual image) and every fault it finds enabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cxr_orient.dicomnet.corrections.geometry import Turn
from cxr_orient.dicomnet.corrections.rejection import rejection_note_uid
from cxr_orient.dicomnet.corrections.replacement import Correction, corrected_instance_uid
from cxr_orient.imaging.header import view_to_label
from db.crud import CorrectionRecord
from db.models import CorrectionAction

__all__ = [
    "AnswerFacts",
    "CorrectionPlan",
    "correction_record",
    "faults_of",
    "plan_correction",
    "rule_allows",
    "rule_correction",
]

_FRONTAL_VIEWS = ("PA", "AP")
_LATERAL_VIEWS = ("LL", "RL")


@dataclass(frozen=True)
class AnswerFacts:
    """What the rules read of one answer and its instance."""

    label: str
    rotation: int | None
    mirrored: bool | None
    #: The header's View Position as stored (None: none).
    header_view: str | None
    needs_review: bool
    #: The model's PA / AP for a frontal (None: abstained, or a model without the
    #: projection head). The worker hands in its answer's; a stored answer gives the
    #: projection its prediction recorded (``predictions.projection``).
    projection: str | None = None


@dataclass(frozen=True)
class CorrectionPlan:
    faults: tuple[str, ...]
    turn: Turn
    view: str

    def describe(self) -> str:
        return ", ".join(self.faults)


def _header(facts: AnswerFacts) -> str:
    return (facts.header_view or "").strip().upper()


def faults_of(facts: AnswerFacts) -> tuple[str, ...]:
    """The faults the answer finds, in :data:`CORRECTION_FAULTS` order."""
    found = []
    if facts.rotation not in (None, 0):
        found.append("turned")
    if facts.label == "frontal" and facts.mirrored:
        found.append("mirrored")
    said = view_to_label(facts.header_view)
    if said is not None and said != facts.label:
        found.append("header_view")
    if (
        facts.label == "frontal"
        and facts.projection in _FRONTAL_VIEWS
        and _header(facts) in _FRONTAL_VIEWS
        and _header(facts) != facts.projection
    ):
        found.append("header_projection")
    return tuple(found)


def _view(facts: AnswerFacts) -> str | None:
    header = _header(facts)
    if facts.label == "lateral":
        return header if header in _LATERAL_VIEWS else "LL"
    if facts.projection in _FRONTAL_VIEWS:
        return facts.projection
    return header if header in _FRONTAL_VIEWS else None


def plan_correction(facts: AnswerFacts) -> CorrectionPlan | None:
    """What a correction of this answer would do; None when nothing is wrong, the model
    has no orientation head (the turn is unknown), or the view cannot be stated."""
    if facts.rotation is None or facts.label not in ("frontal", "lateral"):
        return None
    faults = faults_of(facts)
    view = _view(facts)
    if not faults or view is None:
        return None
    return CorrectionPlan(faults, Turn.from_answer(facts.rotation, facts.mirrored), view)


def rule_allows(plan: CorrectionPlan, facts: AnswerFacts, enabled: frozenset[str]) -> bool:
    """CXR_CORRECTION_RULES: every fault enabled, and no review needed."""
    return bool(enabled) and not facts.needs_review and set(plan.faults) <= enabled


def correction_record(
    plan: CorrectionPlan,
    *,
    instance_id: int,
    prediction_id: int,
    file_sha256: str,
    original_sop_instance_uid: str,
    decided_via: str,
    decided_by: str,
    decided_at: datetime,
) -> CorrectionRecord:
    """The audit row of a correction, its UIDs made as the builders make them."""
    correction = Correction(plan.turn, plan.view, decided_by, decided_at)
    return CorrectionRecord(
        action=CorrectionAction.correct,
        instance_id=instance_id,
        prediction_id=prediction_id,
        faults=",".join(plan.faults),
        rotation=plan.turn.rotation,
        mirrored=plan.turn.mirrored,
        view=plan.view,
        file_sha256=file_sha256,
        original_sop_instance_uid=original_sop_instance_uid,
        replacement_sop_instance_uid=corrected_instance_uid(original_sop_instance_uid, correction),
        rejection_note_uid=rejection_note_uid([original_sop_instance_uid]),
        decided_via=decided_via,
        decided_by=decided_by,
        decided_at=decided_at,
    )


def rule_correction(
    facts: AnswerFacts,
    *,
    enabled: frozenset[str],
    instance_id: int,
    original_sop_instance_uid: str | None,
    model_name: str,
    decided_at: datetime,
) -> CorrectionRecord | None:
    """The worker's correction of a new answer under CXR_CORRECTION_RULES, or None. The
    prediction id and the bytes are filled in when the answer is recorded."""
    if not enabled or not original_sop_instance_uid:
        return None
    plan = plan_correction(facts)
    if plan is None or not rule_allows(plan, facts, enabled):
        return None
    return correction_record(
        plan,
        instance_id=instance_id,
        prediction_id=0,
        file_sha256="",
        original_sop_instance_uid=original_sop_instance_uid,
        decided_via="rule",
        decided_by=f"model {model_name} (rule {plan.describe()})",
        decided_at=decided_at,
    )
