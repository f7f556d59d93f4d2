"""Ground-truth labels (append-only: the newest row of an instance counts)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import GroundTruthLabel, Instance, LabelValue, OrientationLabel, Study


def add_label(
    session: Session,
    *,
    instance_id: int,
    label: OrientationLabel | LabelValue,
    source: str,
    annotator: str | None,
    projection: str | None = None,
) -> GroundTruthLabel:
    row = GroundTruthLabel(
        instance_id=instance_id,
        label=LabelValue(label.value),
        source=source,
        annotator=annotator,
        projection=projection,
    )
    session.add(row)
    return row


def labels_of(session: Session, *, instance_id: int) -> list[GroundTruthLabel]:
    """Every label of an instance, oldest first (the last one counts)."""
    return list(
        session.scalars(
            select(GroundTruthLabel)
            .where(GroundTruthLabel.instance_id == instance_id)
            .order_by(GroundTruthLabel.id)
        )
    )


def count_labels_after(session: Session, *, label_id: int) -> int:
    """Label rows added after ``label_id`` (labels are append-only, ids increase)."""
    return (
        session.scalar(
            select(func.count()).select_from(GroundTruthLabel).where(GroundTruthLabel.id > label_id)
        )
        or 0
    )


def latest_labels(session: Session) -> list[tuple[Instance, Study | None, GroundTruthLabel]]:
    """For each labelled instance, its latest label (append-only: the newest row wins)."""
    newest = (
        select(GroundTruthLabel.instance_id, func.max(GroundTruthLabel.id).label("lid"))
        .group_by(GroundTruthLabel.instance_id)
        .subquery()
    )
    query = (
        select(Instance, Study, GroundTruthLabel)
        .join(newest, newest.c.instance_id == Instance.id)
        .join(GroundTruthLabel, GroundTruthLabel.id == newest.c.lid)
        .outerjoin(Study, Study.id == Instance.study_id)
        .order_by(GroundTruthLabel.id)
    )
    return [(i, s, g) for i, s, g in session.execute(query)]
