"""Database access as small keyword-only functions. Callers own the session/transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import (
    GroundTruthLabel,
    Instance,
    InstanceStatus,
    ModelEvent,
    ModelVersion,
    OrientationLabel,
    Prediction,
    Study,
    utcnow,
)

# --- studies and instances -------------------------------------------------------


def get_or_create_study(
    session: Session, *, study_instance_uid: str, patient_id: str | None
) -> Study:
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
    if study is not None:
        return study
    try:
        with session.begin_nested():
            study = Study(study_instance_uid=study_instance_uid, patient_id=patient_id)
            session.add(study)
    except IntegrityError:  # another ingest created it meanwhile
        study = session.scalars(
            select(Study).where(Study.study_instance_uid == study_instance_uid)
        ).one()
    return study


def get_instance(session: Session, *, instance_id: int) -> Instance | None:
    return session.get(Instance, instance_id)


def find_instance_by_uid(session: Session, *, sop_instance_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def add_instance(
    session: Session,
    *,
    study: Study,
    sop_instance_uid: str,
    series_instance_uid: str | None,
    file_path: str,
    file_sha256: str,
    file_size: int,
    modality: str | None,
    transfer_syntax_uid: str | None,
    header_view_position: str | None,
) -> tuple[Instance, bool]:
    """Record a queued instance; (existing, False) when the SOPInstanceUID is known."""
    existing = find_instance_by_uid(session, sop_instance_uid=sop_instance_uid)
    if existing is not None:
        return existing, False
    instance = Instance(
        study_id=study.id,
        sop_instance_uid=sop_instance_uid,
        series_instance_uid=series_instance_uid,
        file_path=file_path,
        file_sha256=file_sha256,
        file_size=file_size,
        modality=modality,
        transfer_syntax_uid=transfer_syntax_uid,
        header_view_position=header_view_position,
        status=InstanceStatus.queued,
    )
    try:
        with session.begin_nested():
            session.add(instance)
    except IntegrityError:
        found = find_instance_by_uid(session, sop_instance_uid=sop_instance_uid)
        if found is None:
            raise
        return found, False
    return instance, True


def add_unreadable_file(
    session: Session,
    *,
    file_path: str,
    file_sha256: str,
    file_size: int,
    error_code: str,
    error_message: str,
) -> tuple[Instance, bool]:
    """Record a file refused at ingest (no usable header); idempotent by path and hash."""
    existing = session.scalar(
        select(Instance).where(
            Instance.sop_instance_uid.is_(None),
            Instance.file_path == file_path,
            Instance.file_sha256 == file_sha256,
        )
    )
    if existing is not None:
        return existing, False
    now = utcnow()
    instance = Instance(
        study_id=None,
        sop_instance_uid=None,
        file_path=file_path,
        file_sha256=file_sha256,
        file_size=file_size,
        status=InstanceStatus.failed,
        error_code=error_code,
        error_message=error_message,
        finished_at=now,
    )
    session.add(instance)
    session.flush()
    return instance, True


def claim_for_processing(session: Session, *, instance_id: int, stale_before: datetime) -> bool:
    """Atomically move an instance to ``processing``; False if another worker has it or
    it is finished. A ``processing`` row untouched since ``stale_before`` is reclaimable."""
    result = session.execute(
        update(Instance)
        .where(
            Instance.id == instance_id,
            or_(
                Instance.status == InstanceStatus.queued,
                and_(
                    Instance.status == InstanceStatus.processing, Instance.updated_at < stale_before
                ),
            ),
        )
        .values(
            status=InstanceStatus.processing,
            attempts=Instance.attempts + 1,
            started_at=utcnow(),
            updated_at=utcnow(),
        )
    )
    return bool(getattr(result, "rowcount", 0))


def mark_failed(session: Session, *, instance_id: int, error_code: str, error_message: str) -> None:
    session.execute(
        update(Instance)
        .where(Instance.id == instance_id, Instance.status != InstanceStatus.done)
        .values(
            status=InstanceStatus.failed,
            error_code=error_code,
            error_message=error_message[:4000],
            finished_at=utcnow(),
            updated_at=utcnow(),
        )
    )


def mark_queued(session: Session, *, instance_ids: Sequence[int]) -> None:
    if instance_ids:
        session.execute(
            update(Instance)
            .where(
                Instance.id.in_(instance_ids),
                Instance.status != InstanceStatus.done,
                Instance.status != InstanceStatus.failed,
            )
            .values(status=InstanceStatus.queued, updated_at=utcnow())
        )


@dataclass(frozen=True)
class PredictionRecord:
    instance_id: int
    label: OrientationLabel
    confidence: float
    p_frontal: float
    p_lateral: float
    header_agrees: bool | None
    needs_review: bool
    decode_ms: float | None
    inference_ms: float | None
    batch_size: int | None


def record_predictions(
    session: Session,
    *,
    model_version_id: int,
    records: Iterable[PredictionRecord],
    worker: str | None,
) -> int:
    """Insert predictions and mark their instances done; returns rows inserted.

    An instance that already has an answer from this model version keeps it (a
    redelivered message must not add a second row).
    """
    records = list(records)
    if not records:
        return 0
    ids = [r.instance_id for r in records]
    already = set(
        session.scalars(
            select(Prediction.instance_id).where(
                Prediction.model_version_id == model_version_id, Prediction.instance_id.in_(ids)
            )
        )
    )
    fresh = [r for r in records if r.instance_id not in already]
    session.add_all(
        Prediction(
            instance_id=r.instance_id,
            model_version_id=model_version_id,
            label=r.label,
            confidence=r.confidence,
            p_frontal=r.p_frontal,
            p_lateral=r.p_lateral,
            header_agrees=r.header_agrees,
            needs_review=r.needs_review,
            decode_ms=r.decode_ms,
            inference_ms=r.inference_ms,
            batch_size=r.batch_size,
            worker=worker,
        )
        for r in fresh
    )
    now = utcnow()
    session.execute(
        update(Instance)
        .where(Instance.id.in_(ids))
        .values(
            status=InstanceStatus.done,
            error_code=None,
            error_message=None,
            finished_at=now,
            updated_at=now,
        )
    )
    return len(fresh)


def interrupted_instance_ids(session: Session, *, instance_ids: Sequence[int]) -> list[int]:
    """Those of ``instance_ids`` still unfinished whose processing already started once
    and never ended (their worker died: they may be what killed it)."""
    return list(
        session.scalars(
            select(Instance.id).where(
                Instance.id.in_(instance_ids),
                Instance.attempts > 0,
                Instance.status.in_([InstanceStatus.queued, InstanceStatus.processing]),
            )
        )
    )


def unfinished_instance_ids(
    session: Session, *, stale_before: datetime | None = None, queued: bool = True
) -> list[int]:
    """Instances to (re)send: ``queued`` ones (unless ``queued`` is False) and
    ``processing`` ones not touched since ``stale_before`` (all when it is None)."""
    condition = Instance.status == InstanceStatus.processing
    if stale_before is not None:
        condition = and_(condition, Instance.updated_at < stale_before)
    if queued:
        condition = or_(Instance.status == InstanceStatus.queued, condition)
    return list(session.scalars(select(Instance.id).where(condition).order_by(Instance.id)))


def status_counts(session: Session, *, instance_ids: Sequence[int] | None = None) -> dict[str, int]:
    query = select(Instance.status, func.count()).group_by(Instance.status)
    if instance_ids is not None:
        query = query.where(Instance.id.in_(instance_ids))
    counts = {status.value: 0 for status in InstanceStatus}
    for status, n in session.execute(query):
        counts[InstanceStatus(status).value] = n
    return counts


def count_unfinished(session: Session, *, instance_ids: Sequence[int]) -> int:
    total = 0
    for chunk_start in range(0, len(instance_ids), 5000):
        chunk = instance_ids[chunk_start : chunk_start + 5000]
        total += (
            session.scalar(
                select(func.count())
                .select_from(Instance)
                .where(
                    Instance.id.in_(chunk),
                    Instance.status.in_([InstanceStatus.queued, InstanceStatus.processing]),
                )
            )
            or 0
        )
    return total


# --- results ---------------------------------------------------------------------


@dataclass(frozen=True)
class ResultRow:
    sop_instance_uid: str | None
    study_instance_uid: str | None
    file_path: str
    status: str
    label: str | None
    confidence: float | None
    p_lateral: float | None
    needs_review: bool | None
    header_view: str | None
    header_agrees: bool | None
    model_version: str | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def results(
    session: Session,
    *,
    study_instance_uid: str | None = None,
    instance_ids: Sequence[int] | None = None,
) -> list[ResultRow]:
    """One row per instance with its latest prediction (by any model version)."""
    latest = (
        select(Prediction.instance_id, func.max(Prediction.id).label("pid"))
        .group_by(Prediction.instance_id)
        .subquery()
    )
    query = (
        select(Instance, Study.study_instance_uid, Prediction, ModelVersion.name)
        .outerjoin(Study, Study.id == Instance.study_id)
        .outerjoin(latest, latest.c.instance_id == Instance.id)
        .outerjoin(Prediction, Prediction.id == latest.c.pid)
        .outerjoin(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .order_by(Study.study_instance_uid, Instance.id)
    )
    if study_instance_uid is not None:
        query = query.where(Study.study_instance_uid == study_instance_uid)
    if instance_ids is not None:
        query = query.where(Instance.id.in_(instance_ids))
    rows = []
    for instance, study_uid, prediction, model_name in session.execute(query):
        error = None
        if instance.error_code:
            error = f"{instance.error_code}: {instance.error_message or ''}".rstrip(": ")
        rows.append(
            ResultRow(
                sop_instance_uid=instance.sop_instance_uid,
                study_instance_uid=study_uid,
                file_path=instance.file_path,
                status=InstanceStatus(instance.status).value,
                label=OrientationLabel(prediction.label).value if prediction else None,
                confidence=prediction.confidence if prediction else None,
                p_lateral=prediction.p_lateral if prediction else None,
                needs_review=prediction.needs_review if prediction else None,
                header_view=instance.header_view_position,
                header_agrees=prediction.header_agrees if prediction else None,
                model_version=model_name,
                error=error,
            )
        )
    return rows


# --- model versions --------------------------------------------------------------


def active_model_version(session: Session) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion)
        .where(ModelVersion.is_active.is_(True))
        .order_by(ModelVersion.activated_at.desc())
        .limit(1)
    )


def find_model_version(session: Session, *, name: str) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.name == name))


def list_model_versions(session: Session) -> list[ModelVersion]:
    """Every registered version, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))


def previously_active_model_version(session: Session) -> ModelVersion | None:
    """The retired version that was activated most recently: what a rollback restores."""
    return session.scalar(
        select(ModelVersion)
        .where(ModelVersion.state == "retired", ModelVersion.activated_at.is_not(None))
        .order_by(ModelVersion.activated_at.desc())
        .limit(1)
    )


def highest_trained_label_id(session: Session) -> int:
    """The newest label any registered version was trained with (0 when none)."""
    return max(
        (int(v.training.get("highest_label_id", 0) or 0)
         for v in session.scalars(select(ModelVersion))),
        default=0,
    )


def register_model_version(
    session: Session,
    *,
    name: str,
    architecture: str,
    file_path: str,
    sha256: str,
    input_size: int,
    labels: Sequence[str],
    temperature: float,
    review_threshold: float,
    metrics: dict[str, Any],
    training: dict[str, Any],
    actor: str,
    reason: str,
) -> ModelVersion:
    version = ModelVersion(
        name=name,
        architecture=architecture,
        file_path=file_path,
        sha256=sha256,
        input_size=input_size,
        labels=list(labels),
        temperature=temperature,
        review_threshold=review_threshold,
        metrics=metrics,
        training=training,
        state="candidate",
        is_active=False,
    )
    session.add(version)
    session.flush()
    record_model_event(
        session,
        model_version_id=version.id,
        action="register",
        actor=actor,
        reason=reason,
        details={"sha256": sha256, "file_path": file_path},
    )
    return version


def activate_model_version(
    session: Session,
    *,
    version: ModelVersion,
    actor: str,
    reason: str,
    action: str = "promote",
    details: dict[str, Any] | None = None,
) -> None:
    """Make ``version`` the one active model; the previous one is retired."""
    previous = active_model_version(session)
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.is_active.is_(True), ModelVersion.id != version.id)
        .values(is_active=False, state="retired")
        .execution_options(synchronize_session="fetch")
    )
    version.is_active = True
    version.state = "active"
    version.activated_at = utcnow()
    record_model_event(
        session,
        model_version_id=version.id,
        action=action,
        actor=actor,
        reason=reason,
        details={"previous": previous.name if previous else None, **(details or {})},
    )


def reject_model_version(
    session: Session,
    *,
    version: ModelVersion,
    actor: str,
    reason: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Mark a candidate that lost at the gate as rejected, with the figures why."""
    version.state = "rejected"
    record_model_event(
        session,
        model_version_id=version.id,
        action="reject",
        actor=actor,
        reason=reason,
        details=details,
    )


def record_model_event(
    session: Session,
    *,
    model_version_id: int,
    action: str,
    actor: str,
    reason: str,
    details: dict[str, Any] | None = None,
) -> ModelEvent:
    event = ModelEvent(
        model_version_id=model_version_id,
        action=action,
        actor=actor,
        reason=reason,
        details=details or {},
    )
    session.add(event)
    session.flush()
    return event


# --- ground-truth labels ---------------------------------------------------------


def add_label(
    session: Session,
    *,
    instance_id: int,
    label: OrientationLabel,
    source: str,
    annotator: str | None,
) -> GroundTruthLabel:
    row = GroundTruthLabel(instance_id=instance_id, label=label, source=source, annotator=annotator)
    session.add(row)
    return row


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


def stale_cutoff(seconds: int) -> datetime:
    return utcnow() - timedelta(seconds=seconds)
