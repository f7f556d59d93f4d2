"""Labelling a plan's films on the review page: one decision gives the same ``labels``
row as the review queue's (source ``review``, so it feeds retraining too), plus PA or
AP for a frontal, kept on the plan's item."""

from __future__ import annotations

from sqlalchemy.orm import Session

from cxr_orient.acceptance.plan import AcceptanceError
from cxr_orient.review import record_review
from db import crud
from db.models import AcceptanceItem

__all__ = ["ACCEPTANCE_DECISIONS", "record_acceptance_label"]

#: Decision key -> (label, projection): the plan's buttons.
ACCEPTANCE_DECISIONS: dict[str, tuple[str, str | None]] = {
    "frontal_pa": ("frontal", "PA"),
    "frontal_ap": ("frontal", "AP"),
    "frontal": ("frontal", None),
    "lateral": ("lateral", None),
    "not_chest": ("not_chest", None),
}


def record_acceptance_label(
    session: Session, *, plan_id: int, instance_id: int, decision: str, annotator: str
) -> AcceptanceItem:
    """Record ``decision`` (a key of :data:`ACCEPTANCE_DECISIONS`) for the plan's film."""
    found = ACCEPTANCE_DECISIONS.get(decision)
    if found is None:
        raise AcceptanceError(
            f"decision {decision!r}: choose from {', '.join(ACCEPTANCE_DECISIONS)}"
        )
    item = crud.acceptance_item(session, plan_id=plan_id, instance_id=instance_id)
    if item is None:
        raise AcceptanceError(f"instance {instance_id} is not in plan {plan_id}")
    label, projection = found
    row = record_review(session, instance_id=instance_id, decision=label, annotator=annotator)
    crud.set_acceptance_label(session, item=item, label=row, projection=projection)
    session.flush()
    return item
