"""Study completeness (waiting instances, quiet studies) and the study answers' rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from db.crud.common import ID_CHUNK, chunked, current_answer_id
from db.models import (
    UNFINISHED_STATUSES,
    Instance,
    InstanceStatus,
    ModelVersion,
    OrientationLabel,
    Prediction,
    Study,
    StudyAnswer,
    utcnow,
)


def touch_study_arrivals(session: Session, *, study_ids: Iterable[int], at: datetime) -> None:
    """Note that instances of these studies arrived ``at`` (their quiet period restarts)."""
    ids = sorted(set(study_ids))
    if ids:
        session.execute(
            update(Study)
            .where(Study.id.in_(ids))
            .values(last_arrival_at=at)
            .execution_options(synchronize_session=False)
        )


def release_waiting(session: Session, *, arrived_before: datetime) -> list[int]:
    """Move the ``waiting`` instances of every study whose last arrival is before
    ``arrived_before`` to ``queued``; the ids moved. One compare-and-set statement: of
    concurrent callers, only the one whose UPDATE flipped a row gets its id (PostgreSQL
    re-checks ``status = 'waiting'`` on a row another transaction changed meanwhile;
    SQLite runs one writer at a time)."""
    now = utcnow()
    quiet = select(Study.id).where(
        Study.last_arrival_at.is_not(None), Study.last_arrival_at < arrived_before
    )
    moved = session.execute(
        update(Instance)
        .where(Instance.status == InstanceStatus.waiting, Instance.study_id.in_(quiet))
        .values(status=InstanceStatus.queued, enqueued_at=now, updated_at=now)
        .returning(Instance.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(moved.scalars())


def count_waiting(session: Session) -> tuple[int, int]:
    """(instances waiting for their study's quiet period, studies they belong to)."""
    row = session.execute(
        select(func.count(), func.count(func.distinct(Instance.study_id))).where(
            Instance.status == InstanceStatus.waiting
        )
    ).one()
    return int(row[0]), int(row[1])


@dataclass(frozen=True)
class StudyInstance:
    """One instance of a finished study, as the study-answer rule reads it
    (``cxr_orient.studies.study_answer``)."""

    instance_id: int
    status: InstanceStatus
    #: Its current answer (:func:`~db.crud.common.current_answer_id`), and that answer's
    #: fields; None when it has none.
    answer_id: int | None
    label: OrientationLabel | None
    needs_review: bool | None
    header_agrees: bool | None
    model_version: str | None


@dataclass(frozen=True)
class NewStudyAnswer:
    """A study's answer to record (what the rule made of its instances); the row's
    ``sequence`` is :func:`add_study_answers`'s. ``fingerprint`` names the inputs: a study
    whose newest row has the same one gets no new row."""

    fingerprint: str
    instance_count: int
    frontal_count: int
    lateral_count: int
    needs_review_count: int
    failed_count: int
    out_of_scope_count: int
    header_agrees_count: int
    header_disagrees_count: int
    no_frontal: bool
    no_lateral: bool
    header_disagreement: bool
    flags: str | None
    model_versions: str | None


def finished_studies(
    session: Session,
    *,
    instance_ids: Sequence[int] = (),
    study_ids: Sequence[int] = (),
) -> dict[int, list[StudyInstance]]:
    """The studies of ``instance_ids`` (and ``study_ids``) that have no waiting, queued
    or processing instance left, by id (ascending), each with its instances in id order.

    Called in the transaction that finished the instances, before
    :func:`add_study_answers`. The studies' rows are locked first (PostgreSQL), so of two
    workers finishing a study's last instances at once the second sees the first's
    commit: the answer is written once, by whichever is last.
    """
    ids = set(study_ids)
    for chunk in chunked(instance_ids, ID_CHUNK):
        ids.update(
            session.scalars(
                select(Instance.study_id)
                .where(Instance.id.in_(chunk), Instance.study_id.is_not(None))
                .distinct()
            )
        )
    if not ids:
        return {}
    ordered = sorted(ids)
    session.execute(
        select(Study.id).where(Study.id.in_(ordered)).order_by(Study.id).with_for_update()
    )
    busy = set(
        session.scalars(
            select(Instance.study_id)
            .where(Instance.study_id.in_(ordered), Instance.status.in_(UNFINISHED_STATUSES))
            .distinct()
        )
    )
    complete = [i for i in ordered if i not in busy]
    if not complete:
        return {}
    # The current answer's id as a column, then those answers by primary key: joining on
    # the correlated subquery made PostgreSQL evaluate it against every prediction.
    current = current_answer_id().label("answer_id")
    listed = session.execute(
        select(Instance.study_id, Instance.id, Instance.status, current)
        .where(Instance.study_id.in_(complete))
        .order_by(Instance.id)
    ).all()
    details: dict[int, tuple[Any, ...]] = {}
    for chunk in chunked([a for *_, a in listed if a is not None], ID_CHUNK):
        for row in session.execute(
            select(
                Prediction.id,
                Prediction.label,
                Prediction.needs_review,
                Prediction.header_agrees,
                ModelVersion.name,
            )
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(Prediction.id.in_(chunk))
        ):
            details[row[0]] = tuple(row[1:])
    studies: dict[int, list[StudyInstance]] = {i: [] for i in complete}
    for study_id, instance_id, status, answer_id in listed:
        label, needs_review, header_agrees, model_version = details.get(answer_id, (None,) * 4)
        studies[study_id].append(
            StudyInstance(
                instance_id=instance_id,
                status=InstanceStatus(status),
                answer_id=answer_id,
                label=None if label is None else OrientationLabel(label),
                needs_review=needs_review,
                header_agrees=header_agrees,
                model_version=model_version,
            )
        )
    return studies


def add_study_answers(session: Session, *, answers: Mapping[int, NewStudyAnswer]) -> int:
    """Add a ``study_answers`` row for each study (id -> its answer, from
    :func:`finished_studies` in this transaction) whose answer differs from its newest
    row's (by fingerprint); returns rows added."""
    if not answers:
        return 0
    other = aliased(StudyAnswer)
    newest = {
        a.study_id: a
        for a in session.scalars(
            select(StudyAnswer).where(
                StudyAnswer.study_id.in_(list(answers)),
                StudyAnswer.sequence
                == select(func.max(other.sequence))
                .where(other.study_id == StudyAnswer.study_id)
                .correlate(StudyAnswer)
                .scalar_subquery(),
            )
        )
    }
    fresh: list[StudyAnswer] = []
    for study_id, answer in answers.items():
        last = newest.get(study_id)
        if last is not None and last.fingerprint == answer.fingerprint:
            continue
        fresh.append(
            StudyAnswer(
                study_id=study_id,
                sequence=1 if last is None else last.sequence + 1,
                **asdict(answer),
            )
        )
    try:
        with session.begin_nested():
            session.add_all(fresh)
    except IntegrityError:
        # A sequence taken meanwhile (possible on SQLite only: no row lock; PostgreSQL
        # holds the study rows): one at a time, keeping those still free.
        kept = []
        for row in fresh:
            try:
                with session.begin_nested():
                    session.add(row)  # transient again after the rollback above
                kept.append(row)
            except IntegrityError:
                continue
        fresh = kept
    return len(fresh)


@dataclass(frozen=True)
class StudyAnswerRow:
    """A study's current (newest) answer, as ``results --by-study`` shows it."""

    study_instance_uid: str
    sequence: int
    instance_count: int
    frontal_count: int
    lateral_count: int
    needs_review_count: int
    failed_count: int
    out_of_scope_count: int
    header_agrees_count: int
    header_disagrees_count: int
    flags: str | None
    model_versions: str | None
    answered_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def current_study_answers(
    session: Session, *, study_instance_uid: str | None = None
) -> list[StudyAnswerRow]:
    """The newest answer of each study (of one study), by StudyInstanceUID: what the view
    ``current_study_answers`` holds."""
    newest = (
        select(func.max(StudyAnswer.sequence))
        .where(StudyAnswer.study_id == Study.id)
        .correlate(Study)
        .scalar_subquery()
    )
    query = (
        select(StudyAnswer, Study.study_instance_uid)
        .join(Study, Study.id == StudyAnswer.study_id)
        .where(StudyAnswer.sequence == newest)
        .order_by(Study.study_instance_uid)
    )
    if study_instance_uid is not None:
        query = query.where(Study.study_instance_uid == study_instance_uid)
    return [
        StudyAnswerRow(
            study_instance_uid=uid,
            sequence=a.sequence,
            instance_count=a.instance_count,
            frontal_count=a.frontal_count,
            lateral_count=a.lateral_count,
            needs_review_count=a.needs_review_count,
            failed_count=a.failed_count,
            out_of_scope_count=a.out_of_scope_count,
            header_agrees_count=a.header_agrees_count,
            header_disagrees_count=a.header_disagrees_count,
            flags=a.flags,
            model_versions=a.model_versions,
            answered_at=a.created_at,
        )
        for a, uid in session.execute(query)
    ]


def study_answer_history(session: Session, *, study_instance_uid: str) -> list[StudyAnswer]:
    """Every answer row of a study, oldest first."""
    return list(
        session.scalars(
            select(StudyAnswer)
            .join(Study, Study.id == StudyAnswer.study_id)
            .where(Study.study_instance_uid == study_instance_uid)
            .order_by(StudyAnswer.sequence)
        )
    )
