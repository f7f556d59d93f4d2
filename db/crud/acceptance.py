"""Acceptance plans: the answered films a plan is drawn from, the plan and its items,
the plan's review queue, and the rows its report is made of."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.crud.common import current_answer_id
from db.models import (
    AcceptanceItem,
    AcceptancePlan,
    GroundTruthLabel,
    Instance,
    InstanceStatus,
    LabelValue,
    OrientationLabel,
    Prediction,
)


@dataclass(frozen=True)
class AnsweredFilm:
    """A finished instance and its current answer (what a plan samples)."""

    instance_id: int
    prediction_id: int
    label: str
    needs_review: bool
    review_reason: str | None
    header_agrees: bool | None
    modality: str | None
    manufacturer: str | None
    manufacturer_model: str | None


def answered_films(session: Session) -> list[AnsweredFilm]:
    """Every ``done`` instance with its current answer, in instance order."""
    rows = session.execute(
        select(
            Instance.id,
            Prediction.id,
            Prediction.label,
            Prediction.needs_review,
            Prediction.review_reason,
            Prediction.header_agrees,
            Instance.modality,
            Instance.manufacturer,
            Instance.manufacturer_model,
        )
        .join(Prediction, Prediction.id == current_answer_id())
        .where(Instance.status == InstanceStatus.done)
        .order_by(Instance.id)
    )
    return [
        AnsweredFilm(
            i,
            p,
            OrientationLabel(label).value,
            bool(review),
            reason,
            agrees,
            modality,
            maker,
            model,
        )
        for i, p, label, review, reason, agrees, modality, maker, model in rows
    ]


def add_acceptance_plan(
    session: Session,
    *,
    name: str,
    actor: str,
    seed: int,
    population: int,
    design: dict[str, Any],
    items: Sequence[tuple[int, int, bool, list[str]]],
) -> AcceptancePlan:
    """A plan and its items, each (instance id, prediction id, core, strata)."""
    plan = AcceptancePlan(name=name, actor=actor, seed=seed, population=population, design=design)
    session.add(plan)
    session.flush()
    session.add_all(
        AcceptanceItem(plan_id=plan.id, instance_id=i, prediction_id=p, core=core, strata=strata)
        for i, p, core, strata in items
    )
    session.flush()
    return plan


def find_acceptance_plan(session: Session, *, name: str) -> AcceptancePlan | None:
    return session.scalar(select(AcceptancePlan).where(AcceptancePlan.name == name))


def get_acceptance_plan(session: Session, *, plan_id: int) -> AcceptancePlan | None:
    return session.get(AcceptancePlan, plan_id)


@dataclass(frozen=True)
class PlanProgress:
    plan: AcceptancePlan
    items: int
    labelled: int


def acceptance_plans(session: Session) -> list[PlanProgress]:
    """Every plan, newest first, with how many of its items are labelled."""
    counts = (
        select(
            AcceptanceItem.plan_id,
            func.count().label("films"),
            func.count(AcceptanceItem.label_id).label("labelled"),
        )
        .group_by(AcceptanceItem.plan_id)
        .subquery()
    )
    rows = session.execute(
        select(AcceptancePlan, counts.c.films, counts.c.labelled)
        .outerjoin(counts, counts.c.plan_id == AcceptancePlan.id)
        .order_by(AcceptancePlan.id.desc())
    )
    return [PlanProgress(p, items or 0, labelled or 0) for p, items, labelled in rows]


@dataclass(frozen=True)
class PlanItemRow:
    """One item of a plan for its queue page (no model answer: the review is blind)."""

    instance_id: int
    core: bool
    strata: list[str]
    label: str | None
    projection: str | None
    annotator: str | None
    labelled_at: datetime | None


def acceptance_items(session: Session, *, plan_id: int) -> list[PlanItemRow]:
    """The plan's items in instance order, with the label recorded through its queue."""
    rows = session.execute(
        select(AcceptanceItem, GroundTruthLabel.label, GroundTruthLabel.annotator)
        .outerjoin(GroundTruthLabel, GroundTruthLabel.id == AcceptanceItem.label_id)
        .where(AcceptanceItem.plan_id == plan_id)
        .order_by(AcceptanceItem.instance_id)
    )
    return [
        PlanItemRow(
            item.instance_id,
            item.core,
            list(item.strata),
            LabelValue(label).value if label is not None else None,
            item.projection,
            annotator,
            item.labelled_at,
        )
        for item, label, annotator in rows
    ]


def acceptance_item(session: Session, *, plan_id: int, instance_id: int) -> AcceptanceItem | None:
    return session.scalar(
        select(AcceptanceItem).where(
            AcceptanceItem.plan_id == plan_id, AcceptanceItem.instance_id == instance_id
        )
    )


def next_unlabelled_item(session: Session, *, plan_id: int, after: int) -> int | None:
    """The next unlabelled item's instance id after ``after``, else the first one (the
    queue wraps); None when every item is labelled."""
    for start in (after, 0):
        found = session.scalar(
            select(AcceptanceItem.instance_id)
            .where(
                AcceptanceItem.plan_id == plan_id,
                AcceptanceItem.label_id.is_(None),
                AcceptanceItem.instance_id > start,
                AcceptanceItem.instance_id != after,
            )
            .order_by(AcceptanceItem.instance_id)
            .limit(1)
        )
        if found is not None:
            return int(found)
    return None


def set_acceptance_label(
    session: Session, *, item: AcceptanceItem, label: GroundTruthLabel, projection: str | None
) -> None:
    """Point the item at the label just recorded through the plan's queue."""
    item.label_id = label.id
    item.projection = projection
    item.labelled_at = label.created_at


@dataclass(frozen=True)
class ReportRow:
    """One item of a plan with the answer it measures and the reviewer's label."""

    instance_id: int
    core: bool
    strata: tuple[str, ...]
    predicted: str
    needs_review: bool
    review_reason: str | None
    header_view: str | None
    header_agrees: bool | None
    truth: str | None
    truth_projection: str | None
    annotator: str | None
    labelled_at: datetime | None
    #: The answer's PA/AP (None: the model abstained, or has no PA/AP head).
    predicted_projection: str | None = None
    #: The answer's probability of AP (None: the model has no PA/AP head, or a lateral).
    p_ap: float | None = None


def acceptance_report_rows(session: Session, *, plan_id: int) -> list[ReportRow]:
    """Every item of the plan, in instance order, for its report."""
    rows = session.execute(
        select(
            AcceptanceItem,
            Prediction,
            Instance.header_view_position,
            GroundTruthLabel.label,
            GroundTruthLabel.annotator,
        )
        .join(Prediction, Prediction.id == AcceptanceItem.prediction_id)
        .join(Instance, Instance.id == AcceptanceItem.instance_id)
        .outerjoin(GroundTruthLabel, GroundTruthLabel.id == AcceptanceItem.label_id)
        .where(AcceptanceItem.plan_id == plan_id)
        .order_by(AcceptanceItem.instance_id)
    ).all()
    return [
        ReportRow(
            instance_id=item.instance_id,
            core=item.core,
            strata=tuple(item.strata),
            predicted=OrientationLabel(prediction.label).value,
            needs_review=bool(prediction.needs_review),
            review_reason=prediction.review_reason,
            header_view=header_view,
            header_agrees=prediction.header_agrees,
            truth=LabelValue(label).value if label is not None else None,
            truth_projection=item.projection,
            annotator=annotator,
            labelled_at=item.labelled_at,
            predicted_projection=prediction.projection,
            p_ap=prediction.p_ap,
        )
        for item, prediction, header_view, label, annotator in rows
    ]
