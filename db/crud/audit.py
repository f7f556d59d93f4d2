"""Audit views: answers per version, daily rates, one study's history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, false, func, select, true
from sqlalchemy.orm import Session

from cxr_orient.answer import flat
from db.crud.common import answer_of, current_answer_id
from db.models import (
    GroundTruthLabel,
    Instance,
    InstanceStatus,
    LabelValue,
    ModelVersion,
    Prediction,
    Study,
    StudyAnswer,
)


@dataclass(frozen=True)
class VersionCounts:
    name: str
    state: str
    is_active: bool
    answers: int
    needs_review: int
    header_disagrees: int
    activated_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def answers_per_version(session: Session) -> list[VersionCounts]:
    """Every model version with its number of answers, flagged ones and disagreements."""
    query = (
        select(
            ModelVersion.name,
            ModelVersion.state,
            ModelVersion.is_active,
            ModelVersion.activated_at,
            func.count(Prediction.id),
            func.coalesce(func.sum(case((Prediction.needs_review.is_(true()), 1), else_=0)), 0),
            func.coalesce(func.sum(case((Prediction.header_agrees.is_(false()), 1), else_=0)), 0),
        )
        .outerjoin(Prediction, Prediction.model_version_id == ModelVersion.id)
        .group_by(ModelVersion.id)
        .order_by(ModelVersion.id)
    )
    return [
        VersionCounts(
            name=n,
            state=s,
            is_active=bool(a),
            activated_at=at,
            answers=int(c),
            needs_review=int(r),
            header_disagrees=int(d),
        )
        for n, s, a, at, c, r, d in session.execute(query)
    ]


@dataclass(frozen=True)
class DailyRates:
    day: str
    answers: int
    needs_review: int
    header_known: int
    header_disagrees: int
    reviewed: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def daily_rates(session: Session, *, since: datetime) -> list[DailyRates]:
    """Per UTC day since ``since``: answers, flagged ones, answers with a header view and
    those disagreeing, and review labels recorded."""
    day = func.date(Prediction.created_at)
    answers = (
        select(
            day,
            func.count(),
            func.sum(case((Prediction.needs_review.is_(true()), 1), else_=0)),
            func.sum(case((Prediction.header_agrees.is_not(None), 1), else_=0)),
            func.sum(case((Prediction.header_agrees.is_(false()), 1), else_=0)),
        )
        .where(Prediction.created_at >= since)
        .group_by(day)
    )
    label_day = func.date(GroundTruthLabel.created_at)
    reviews = dict(
        (str(d), int(n))
        for d, n in session.execute(
            select(label_day, func.count())
            .where(GroundTruthLabel.source == "review", GroundTruthLabel.created_at >= since)
            .group_by(label_day)
        )
    )
    rows = {
        str(d): DailyRates(
            day=str(d),
            answers=int(c),
            needs_review=int(r or 0),
            header_known=int(k or 0),
            header_disagrees=int(x or 0),
            reviewed=reviews.get(str(d), 0),
        )
        for d, c, r, k, x in session.execute(answers)
    }
    for d, n in reviews.items():
        rows.setdefault(
            d,
            DailyRates(
                day=d, answers=0, needs_review=0, header_known=0, header_disagrees=0, reviewed=n
            ),
        )
    return [rows[d] for d in sorted(rows)]


def find_study_id(session: Session, *, study_instance_uid: str) -> int | None:
    return session.scalar(select(Study.id).where(Study.study_instance_uid == study_instance_uid))


@dataclass(frozen=True)
class AnswerHistory:
    """An instance of a study with every answer it got and every label."""

    instance_id: int
    status: str
    header_view: str | None
    current_prediction_id: int | None
    answers: list[dict[str, Any]]
    labels: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def study_history(session: Session, *, study_id: int) -> list[AnswerHistory]:
    """Every instance of the study, each with all its answers (oldest first, the current
    one marked) and labels: the audit view of one study. No UIDs."""
    instances = list(
        session.execute(
            select(Instance, current_answer_id())
            .where(Instance.study_id == study_id)
            .order_by(Instance.id)
        )
    )
    ids = [i.id for i, _ in instances]
    answers: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for p, name in session.execute(
        select(Prediction, ModelVersion.name)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Prediction.instance_id.in_(ids))
        .order_by(Prediction.id)
    ):
        answers[p.instance_id].append(
            {
                "prediction_id": p.id,
                "model_version": name,
                **flat(answer_of(p)),
                "created_at": p.created_at,
            }
        )
    labels: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for g in session.scalars(
        select(GroundTruthLabel)
        .where(GroundTruthLabel.instance_id.in_(ids))
        .order_by(GroundTruthLabel.id)
    ):
        labels[g.instance_id].append(
            {
                "label_id": g.id,
                "label": LabelValue(g.label).value,
                "source": g.source,
                "annotator": g.annotator,
                "created_at": g.created_at,
            }
        )
    return [
        AnswerHistory(
            instance_id=i.id,
            status=InstanceStatus(i.status).value,
            header_view=i.header_view_position,
            current_prediction_id=current,
            answers=answers[i.id],
            labels=labels[i.id],
        )
        for i, current in instances
    ]


def study_answer_rows(session: Session, *, study_id: int) -> list[StudyAnswer]:
    """The study-level answers of a study, oldest first."""
    return list(
        session.scalars(
            select(StudyAnswer)
            .where(StudyAnswer.study_id == study_id)
            .order_by(StudyAnswer.sequence)
        )
    )
