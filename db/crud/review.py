"""The review queue: current, unlabelled answers by filter, and one item."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, false, select, true
from sqlalchemy.orm import Session

from cxr_orient.answer import Answer, flat
from db.crud.common import answer_of, current_answer_id, labelled
from db.models import (
    GroundTruthLabel,
    Instance,
    InstanceStatus,
    ModelVersion,
    Prediction,
    UidConflict,
)

#: The queue's filters: flagged answers (``needs_review``), answers whose header names
#: the other view, out of scope (refused by the accept policy, or flagged as an unusual
#: image by the model), instances with a uid conflict.
REVIEW_FILTERS = ("flagged", "disagree", "out_of_scope", "uid_conflict")


@dataclass(frozen=True)
class ReviewItem:
    """An instance awaiting review with its current answer (none for a policy refusal).
    No patient identifiers and no UIDs: the page shows and links by internal ids."""

    instance_id: int
    study_id: int | None
    status: str
    modality: str | None
    header_view: str | None
    error_code: str | None
    file_purged: bool
    enqueued_at: datetime
    prediction_id: int | None = None
    answer: Answer | None = None
    model_version: str | None = None
    answered_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """Flat: the instance's fields and the answer's (:func:`cxr_orient.answer.flat`)."""
        row = {k: v for k, v in self.__dict__.items() if k != "answer"}
        return {**row, **flat(self.answer)}


def _review_item(
    instance: Instance, prediction: Prediction | None, model_name: str | None
) -> ReviewItem:
    answered: dict[str, Any] = {}
    if prediction is not None:
        answered = {
            "prediction_id": prediction.id,
            "answer": answer_of(prediction),
            "model_version": model_name,
            "answered_at": prediction.created_at,
        }
    return ReviewItem(
        instance_id=instance.id,
        study_id=instance.study_id,
        status=InstanceStatus(instance.status).value,
        modality=instance.modality,
        header_view=instance.header_view_position,
        error_code=instance.error_code,
        file_purged=instance.file_purged_at is not None,
        enqueued_at=instance.enqueued_at,
        **answered,
    )


def _answered_queue(
    session: Session, condition: Any, *, after: int, limit: int
) -> list[tuple[Instance, Prediction, str]]:
    """Current, unlabelled answers meeting ``condition``, in instance order from ``after``.

    Walked in rounds, keyset on ``instance_id`` through the partial indexes on predictions
    (the two common conditions): a round takes the next unlabelled candidates in order,
    then keeps those that are their instance's current answer. One query for all
    of it would leave the order to the planner, which at 100,000 answers chose to check
    every answer's currency before sorting (a second per page, measured)."""
    picked: list[int] = []
    cursor = after
    batch = max(4 * limit, 32)
    labelled = (
        select(GroundTruthLabel.id)
        .where(GroundTruthLabel.instance_id == Prediction.instance_id)
        .correlate(Prediction)
        .exists()
    )
    while len(picked) < limit:
        candidates = session.execute(
            select(Prediction.instance_id, Prediction.id)
            .where(condition, Prediction.instance_id > cursor, ~labelled)
            .order_by(Prediction.instance_id, Prediction.id)
            .limit(batch)
        ).all()
        if not candidates:
            break
        full = len(candidates) == batch
        if full:  # an instance cut by the limit is taken whole in the next round
            last = candidates[-1][0]
            whole = [c for c in candidates if c[0] != last]
            candidates = whole or candidates
        cursor = candidates[-1][0]
        current: dict[int, int | None] = dict(
            session.execute(
                select(Instance.id, current_answer_id()).where(
                    Instance.id.in_({i for i, _ in candidates})
                )
            ).all()
        )
        picked += [p for i, p in candidates if current.get(i) == p]
        if not full:
            break
        batch = min(2 * batch, 5000)  # a long reviewed stretch: fewer, larger rounds
    if not picked:
        return []
    rows = session.execute(
        select(Instance, Prediction, ModelVersion.name)
        .join(Prediction, Prediction.instance_id == Instance.id)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Prediction.id.in_(picked[:limit]))
        .order_by(Instance.id)
    )
    return [(i, p, n) for i, p, n in rows]


def review_queue(
    session: Session, *, kind: str = "flagged", after: int = 0, limit: int = 50
) -> list[ReviewItem]:
    """Instances awaiting review (no label yet), oldest (lowest instance id) first, from
    instance id ``after`` on: ``kind`` one of :data:`REVIEW_FILTERS`."""
    if kind not in REVIEW_FILTERS:
        raise ValueError(f"unknown review filter {kind!r}; choose from {REVIEW_FILTERS}")
    if kind == "flagged":
        # "= true" / "= false", not IS: the form the partial indexes' predicates match.
        rows = _answered_queue(session, Prediction.needs_review == true(), after=after, limit=limit)
    elif kind == "disagree":
        rows = _answered_queue(
            session, Prediction.header_agrees == false(), after=after, limit=limit
        )
    elif kind == "uid_conflict":
        conflicted = (
            select(UidConflict.id)
            .where(UidConflict.instance_id == Prediction.instance_id)
            .correlate(Prediction)
            .exists()
        )
        rows = _answered_queue(session, conflicted, after=after, limit=limit)
    else:
        unusual = _answered_queue(
            session,
            and_(
                Prediction.needs_review == true(),
                Prediction.review_reason.contains("unusual_image", autoescape=True),
            ),
            after=after,
            limit=limit,
        )
        refused = (
            select(Instance)
            .where(
                Instance.status == InstanceStatus.out_of_scope,
                Instance.id > after,
                Instance.study_id.is_not(None),
                ~labelled(),
            )
            .order_by(Instance.id)
            .limit(limit)
        )
        items = [_review_item(i, p, n) for i, p, n in unusual]
        items += [_review_item(i, None, None) for i in session.scalars(refused)]
        return sorted(items, key=lambda item: item.instance_id)[:limit]
    return [_review_item(i, p, n) for i, p, n in rows]


def review_item(session: Session, *, instance_id: int) -> ReviewItem | None:
    """One instance with its current answer, whether or not it awaits review."""
    row = session.execute(
        select(Instance, Prediction, ModelVersion.name)
        .select_from(Instance)
        .outerjoin(Prediction, Prediction.id == current_answer_id())
        .outerjoin(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Instance.id == instance_id)
    ).first()
    if row is None:
        return None
    return _review_item(row[0], row[1], row[2])
