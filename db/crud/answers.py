"""Answers: a batch's predictions recorded (with their outbox rows, same transaction),
and read back (one row per instance, the changes between two versions)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import and_, func, select, tuple_, update
from sqlalchemy.orm import Session, aliased

from cxr_orient.answer import Answer, flat
from db.crud.common import answer_columns, answer_of, current_answer_id
from db.crud.corrections import CorrectionRecord, add_correction
from db.crud.outbox import add_outbox_messages
from db.models import (
    Instance,
    InstanceStatus,
    ModelVersion,
    OrientationLabel,
    Prediction,
    Study,
    utcnow,
)


@dataclass(frozen=True)
class PredictionRecord:
    """An answer to record for an instance, with how it was made."""

    instance_id: int
    answer: Answer
    #: The bytes the answer was made on: the instance's ``file_sha256`` when the work was
    #: claimed (``worker.pipeline``). None: the instance's now (no check).
    file_sha256: str | None = None
    decode_ms: float | None = None
    inference_ms: float | None = None
    batch_size: int | None = None


def record_predictions(
    session: Session,
    *,
    model_version_id: int,
    records: Iterable[PredictionRecord],
    worker: str | None,
    result_destinations: Sequence[str] = (),
    new_report_uid: Callable[[], str] | None = None,
    claim_token: str | None = None,
    corrections: Mapping[int, CorrectionRecord] | None = None,
    correction_destinations: Sequence[str] = (),
) -> int:
    """Insert predictions and mark their instances done; returns rows inserted.

    Each new answer of the model version in service gets one ``outbox`` row per entry of
    ``result_destinations`` (canonical destination URLs, CXR_RESULT_DESTINATIONS), in
    this same transaction: an answer is never recorded without its outgoing reports, nor
    a report queued for an answer that was rolled back. Each report's SOP Instance UID
    comes from ``new_report_uid`` (required with ``result_destinations``:
    ``cxr_orient.dicomnet.sr.new_sr_uid``). Answers of a version not in
    service (a candidate run through ``reclassify --model``) stay in SQL: the PACS only
    hears the model the hospital put in service.

    Each row says which bytes it was made on (``file_sha256``). An instance that already
    has an answer from this model version on these bytes keeps it (a redelivered message
    must not add a second row). An instance that no longer refers to the bytes a record
    was made on (its file was replaced since the claim: uid conflict, ``replace``) gets
    neither the answer nor a status change: its new file is queued and answered anew.

    With ``claim_token`` (the worker's claim on the batch), only instances still held
    under that claim are recorded: a worker whose lease lapsed (it was cut off from the
    database, and the work was re-queued and claimed by another) records nothing, so an
    instance is answered once however the claims went.

    ``corrections`` (by instance id: what the correction rules decided on the answer,
    ``cxr_orient.dicomnet.corrections.rule_correction``) become ``corrections`` rows with
    their outbox rows to ``correction_destinations``, in this same transaction and under
    the same condition as the reports: a new answer of the version in service.
    """
    if result_destinations and new_report_uid is None:
        raise ValueError("result_destinations need new_report_uid (the reports' UIDs)")
    records = list(records)
    if not records:
        return 0
    ids = [r.instance_id for r in records]
    current: dict[int, str] = {
        i: sha
        for i, sha in session.execute(
            select(Instance.id, Instance.file_sha256).where(Instance.id.in_(ids))
        )
    }
    made_on = {r.instance_id: r.file_sha256 or current.get(r.instance_id, "") for r in records}
    now = utcnow()
    condition: Any = tuple_(Instance.id, Instance.file_sha256).in_(list(made_on.items()))
    if claim_token is not None:
        condition = and_(
            condition,
            Instance.claim_token == claim_token,
            Instance.status == InstanceStatus.processing,
        )
    # Compare-and-set in one statement: done only where the bytes are still the ones
    # answered (on PostgreSQL the rows stay locked until commit, so a replacement that
    # comes meanwhile waits and then queues the instance again).
    matched = set(
        session.scalars(
            update(Instance)
            .where(condition)
            .values(
                status=InstanceStatus.done,
                error_code=None,
                error_message=None,
                target_model_version_id=None,
                claim_token=None,
                lease_expires_at=None,
                finished_at=now,
                updated_at=now,
            )
            .returning(Instance.id)
            .execution_options(synchronize_session="fetch")
        )
    )
    already = {
        (i, sha)
        for i, sha in session.execute(
            select(Prediction.instance_id, Prediction.file_sha256).where(
                Prediction.model_version_id == model_version_id,
                Prediction.instance_id.in_(matched),
            )
        )
    }
    fresh = [
        r
        for r in records
        if r.instance_id in matched and (r.instance_id, made_on[r.instance_id]) not in already
    ]
    added = [
        Prediction(
            instance_id=r.instance_id,
            model_version_id=model_version_id,
            file_sha256=made_on[r.instance_id],
            **answer_columns(r.answer),
            decode_ms=r.decode_ms,
            inference_ms=r.inference_ms,
            batch_size=r.batch_size,
            worker=worker,
        )
        for r in fresh
    ]
    session.add_all(added)
    session.flush()
    decided = corrections if corrections and correction_destinations else {}
    if not added or not ((new_report_uid is not None and result_destinations) or decided):
        return len(fresh)
    if not session.scalar(
        select(ModelVersion.is_active).where(ModelVersion.id == model_version_id)
    ):
        return len(fresh)
    if new_report_uid is not None and result_destinations:
        add_outbox_messages(
            session,
            prediction_ids=[p.id for p in added],
            destinations=result_destinations,
            new_report_uid=new_report_uid,
        )
    for p in added:
        if p.instance_id in decided:
            add_correction(
                session,
                record=replace(
                    decided[p.instance_id], prediction_id=p.id, file_sha256=p.file_sha256
                ),
                destinations=correction_destinations,
            )
    return len(fresh)


@dataclass(frozen=True)
class ResultRow:
    """An instance with its answer (None: it has none)."""

    sop_instance_uid: str | None
    study_instance_uid: str | None
    file_path: str
    status: str
    header_view: str | None
    model_version: str | None
    error: str | None
    answer: Answer | None

    def as_dict(self) -> dict[str, Any]:
        """Flat: the instance's fields and the answer's (:func:`cxr_orient.answer.flat`)."""
        row = {k: v for k, v in self.__dict__.items() if k != "answer"}
        return {**row, **flat(self.answer)}


def results(
    session: Session,
    *,
    study_instance_uid: str | None = None,
    instance_ids: Sequence[int] | None = None,
    model_version_id: int | None = None,
) -> list[ResultRow]:
    """One row per instance with its current answer (:func:`current_answer_id`); with
    ``model_version_id``, one row per instance that version answered, with its answer."""
    if model_version_id is None:
        answer = Prediction.id == current_answer_id()
    else:
        own = aliased(Prediction)
        answer = Prediction.id == (
            select(func.max(own.id))
            .where(own.instance_id == Instance.id, own.model_version_id == model_version_id)
            .correlate(Instance)
            .scalar_subquery()
        )
    query = (
        select(Instance, Study.study_instance_uid, Prediction, ModelVersion.name)
        .outerjoin(Study, Study.id == Instance.study_id)
        .join(Prediction, answer, isouter=model_version_id is None)
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
                header_view=instance.header_view_position,
                model_version=model_name,
                error=error,
                answer=answer_of(prediction) if prediction else None,
            )
        )
    return rows


@dataclass(frozen=True)
class ChangedAnswer:
    """An instance whose label differs between two model versions' answers."""

    sop_instance_uid: str | None
    study_instance_uid: str | None
    label_a: str
    confidence_a: float
    label_b: str
    confidence_b: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def changed_between(
    session: Session, *, version_a_id: int, version_b_id: int
) -> list[ChangedAnswer]:
    """Instances both versions answered, on the same bytes, with different labels (the
    query of docs/auditing.md "Answers that changed between two model versions")."""
    a, b = aliased(Prediction), aliased(Prediction)
    query = (
        select(
            Instance.sop_instance_uid,
            Study.study_instance_uid,
            a.label,
            a.confidence,
            b.label,
            b.confidence,
        )
        .select_from(a)
        .join(
            b,
            and_(
                b.instance_id == a.instance_id,
                b.model_version_id == version_b_id,
                b.file_sha256 == a.file_sha256,
            ),
        )
        .join(Instance, Instance.id == a.instance_id)
        .outerjoin(Study, Study.id == Instance.study_id)
        .where(a.model_version_id == version_a_id, a.label != b.label)
        .order_by(Instance.id)
    )
    return [
        ChangedAnswer(uid, study, OrientationLabel(la).value, ca, OrientationLabel(lb).value, cb)
        for uid, study, la, ca, lb, cb in session.execute(query)
    ]
