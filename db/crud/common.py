"""What several domains of ``db.crud`` share: the chunked IN list, an instance's
current answer, an answer to and from its ``predictions`` columns, and the two
conditions the review queue and the spool purge both ask (awaiting review, labelled)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from sqlalchemy import select, true

from cxr_orient.answer import Answer, reasons_of
from db.models import GroundTruthLabel, Instance, ModelVersion, OrientationLabel, Prediction

T = TypeVar("T")

#: Values per ``IN (...)`` list: UIDs (up to 64 characters each) in 500s, ids in 5000s,
#: so a long list never meets a driver's bound-parameter limit.
UID_CHUNK = 500
ID_CHUNK = 5000


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in consecutive lists of at most ``size`` (the last one shorter), for
    queries that take them as an ``IN`` list; nothing for no items."""
    values = list(items)
    for start in range(0, len(values), size):
        yield values[start : start + size]


def answer_columns(answer: Answer) -> dict[str, Any]:
    """The ``predictions`` columns that hold ``answer`` (the one place an answer field
    meets its column, with :func:`answer_of`)."""
    return dict(
        label=OrientationLabel(answer.label),
        confidence=answer.confidence,
        p_frontal=answer.p_frontal,
        p_lateral=answer.p_lateral,
        header_agrees=answer.header_agrees,
        needs_review=answer.needs_review,
        review_reason=answer.review_reason,
        rotation=answer.rotation,
        mirrored=answer.mirrored,
        unusual_score=answer.unusual_score,
        projection=answer.projection,
        p_ap=answer.p_ap,
        projection_agrees=answer.projection_agrees,
        p_not_chest=answer.p_not_chest,
    )


def answer_of(prediction: Prediction) -> Answer:
    """The answer a ``predictions`` row holds (:func:`answer_columns` read back)."""
    return Answer(
        label=OrientationLabel(prediction.label).value,
        confidence=prediction.confidence,
        p_frontal=prediction.p_frontal,
        p_lateral=prediction.p_lateral,
        needs_review=prediction.needs_review,
        review_reasons=reasons_of(prediction.review_reason),
        rotation=prediction.rotation,
        mirrored=prediction.mirrored,
        unusual_score=prediction.unusual_score,
        header_agrees=prediction.header_agrees,
        projection=prediction.projection,
        p_ap=prediction.p_ap,
        projection_agrees=prediction.projection_agrees,
        p_not_chest=prediction.p_not_chest,
    )


def current_answer_id() -> Any:
    """The id of an instance's current answer, correlated to ``Instance``: the answer of
    the version most recently put in service (``activated_at``, so a promotion and a
    rollback both move it); versions never activated (candidates answering through
    ``reclassify --model``) rank below every activated one, newer registration first."""
    return (
        select(Prediction.id)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Prediction.instance_id == Instance.id)
        .order_by(
            ModelVersion.activated_at.is_(None),
            ModelVersion.activated_at.desc(),
            ModelVersion.id.desc(),
            Prediction.id.desc(),
        )
        .limit(1)
        .correlate(Instance)
        .scalar_subquery()
    )


def awaiting_review() -> Any:
    """The instance's current answer (:func:`current_answer_id`) needs review."""
    return (
        select(Prediction.needs_review)
        .where(Prediction.id == current_answer_id())
        .correlate(Instance)
        .scalar_subquery()
        .is_(true())
    )


def labelled() -> Any:
    """EXISTS a ground-truth label of the instance, correlated to ``Instance``."""
    return (
        select(GroundTruthLabel.id)
        .where(GroundTruthLabel.instance_id == Instance.id)
        .correlate(Instance)
        .exists()
    )
