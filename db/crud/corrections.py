"""Corrections back to PACS (IHE IOCM): the audit rows, their outbox rows (same
transaction), what a sender needs to build the objects, and the audit listing. The rule
that decides a correction and its UIDs are the library's
(``cxr_orient.dicomnet.corrections``): this module stores what it is handed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from cxr_orient.answer import Answer
from db.crud.common import answer_of, current_answer_id
from db.models import (
    Correction,
    CorrectionAction,
    Instance,
    ModelVersion,
    OutboxMessage,
    OutboxStatus,
    Prediction,
    utcnow,
)


@dataclass(frozen=True)
class CorrectionRecord:
    """A correction (or reversal) as decided: everything the audit row holds."""

    action: CorrectionAction
    instance_id: int
    prediction_id: int
    faults: str
    rotation: int
    mirrored: bool
    view: str
    file_sha256: str
    original_sop_instance_uid: str
    replacement_sop_instance_uid: str
    rejection_note_uid: str
    decided_via: str
    decided_by: str
    decided_at: datetime
    reason: str | None = None
    reverses_id: int | None = None


def add_correction(
    session: Session, *, record: CorrectionRecord, destinations: Sequence[str]
) -> int | None:
    """The audit row and one pending outbox row per destination, in the caller's
    transaction; returns the row's id, or None when a note rejecting the same object
    (``rejection_note_uid``) is recorded already (a correction is made once)."""
    if (
        session.scalar(
            select(Correction.id).where(Correction.rejection_note_uid == record.rejection_note_uid)
        )
        is not None
    ):
        return None
    row = Correction(**record.__dict__)
    try:
        with session.begin_nested():  # another decider may record the same note first
            session.add(row)
            session.flush()
    except IntegrityError:
        return None
    object_uid = (
        record.replacement_sop_instance_uid
        if record.action == CorrectionAction.correct
        else record.rejection_note_uid
    )
    now = utcnow()
    session.add_all(
        [
            OutboxMessage(
                correction_id=row.id,
                destination=dest,
                sr_sop_instance_uid=object_uid,
                status=OutboxStatus.pending,
                attempts=0,
                next_attempt_at=now,
            )
            for dest in destinations
        ]
    )
    session.flush()
    return row.id


@dataclass(frozen=True)
class CorrectionWork:
    """What a sender needs to build one correction's objects (re-read every attempt)."""

    outbox_id: int
    destination: str
    attempts: int
    correction_id: int
    action: str
    file_path: str
    correction: CorrectionRecord
    #: For a reversal: the correction it undoes (its replacement is rebuilt to be named).
    reversed: CorrectionRecord | None


def _record(row: Correction) -> CorrectionRecord:
    return CorrectionRecord(
        action=CorrectionAction(row.action),
        instance_id=row.instance_id,
        prediction_id=row.prediction_id,
        faults=row.faults,
        rotation=row.rotation,
        mirrored=row.mirrored,
        view=row.view,
        file_sha256=row.file_sha256,
        original_sop_instance_uid=row.original_sop_instance_uid,
        replacement_sop_instance_uid=row.replacement_sop_instance_uid,
        rejection_note_uid=row.rejection_note_uid,
        decided_via=row.decided_via,
        decided_by=row.decided_by,
        decided_at=row.decided_at,
        reason=row.reason,
        reverses_id=row.reverses_id,
    )


def correction_work(session: Session, *, outbox_ids: Sequence[int]) -> list[CorrectionWork]:
    """The correction rows among ``outbox_ids`` (report rows are ``outbox_work``'s)."""
    undone = aliased(Correction)
    query = (
        select(OutboxMessage, Correction, Instance.file_path, undone)
        .join(Correction, Correction.id == OutboxMessage.correction_id)
        .join(Instance, Instance.id == Correction.instance_id)
        .outerjoin(undone, undone.id == Correction.reverses_id)
        .where(OutboxMessage.id.in_(outbox_ids))
        .order_by(OutboxMessage.id)
    )
    return [
        CorrectionWork(
            outbox_id=m.id,
            destination=m.destination,
            attempts=m.attempts,
            correction_id=c.id,
            action=CorrectionAction(c.action).value,
            file_path=path,
            correction=_record(c),
            reversed=_record(u) if u is not None else None,
        )
        for m, c, path, u in session.execute(query)
    ]


def correction(session: Session, *, correction_id: int) -> CorrectionRecord | None:
    row = session.get(Correction, correction_id)
    return None if row is None else _record(row)


def correction_of_instance(session: Session, *, instance_id: int) -> int | None:
    """The id of the instance's correction, if any (reversed or not: an original is
    corrected once, its rejection note has one UID)."""
    return session.scalar(
        select(Correction.id)
        .where(Correction.instance_id == instance_id, Correction.action == CorrectionAction.correct)
        .order_by(Correction.id.desc())
        .limit(1)
    )


def instance_corrected() -> Any:
    """EXISTS a correction of the instance, correlated to ``Instance``: its original
    file is kept (a reversal rebuilds the replacement from it)."""
    return (
        select(Correction.id)
        .where(Correction.instance_id == Instance.id)
        .correlate(Instance)
        .exists()
    )


@dataclass(frozen=True)
class CorrectionRow:
    id: int
    action: str
    instance_id: int
    faults: str
    rotation: int
    mirrored: bool
    view: str
    original_sop_instance_uid: str
    replacement_sop_instance_uid: str
    rejection_note_uid: str
    decided_via: str
    decided_by: str
    decided_at: datetime
    reason: str | None
    reverses_id: int | None
    #: Outbox rows by status, and when the last was delivered (None: not all sent).
    pending: int
    sent: int
    failed: int
    delivered_at: datetime | None


def correction_rows(
    session: Session, *, instance_id: int | None = None, limit: int = 1000
) -> list[CorrectionRow]:
    """The audit: corrections and reversals, newest first, with their delivery."""
    query = select(Correction).order_by(Correction.id.desc()).limit(limit)
    if instance_id is not None:
        query = query.where(Correction.instance_id == instance_id)
    rows = list(session.scalars(query))
    counts: dict[int, dict[str, int]] = {}
    last_sent: dict[int, datetime | None] = {}
    if rows:
        for cid_, status, n, sent in session.execute(
            select(
                OutboxMessage.correction_id,
                OutboxMessage.status,
                func.count(),
                func.max(OutboxMessage.sent_at),
            )
            .where(OutboxMessage.correction_id.in_([r.id for r in rows]))
            .group_by(OutboxMessage.correction_id, OutboxMessage.status)
        ):
            cid = int(cid_ or 0)
            counts.setdefault(cid, {s.value: 0 for s in OutboxStatus})[
                OutboxStatus(status).value
            ] = n
            if OutboxStatus(status) == OutboxStatus.sent:
                last_sent[cid] = sent
    result = []
    for r in rows:
        c = counts.get(r.id, {s.value: 0 for s in OutboxStatus})
        done = c["sent"] > 0 and c["pending"] == 0 and c["failed"] == 0
        result.append(
            CorrectionRow(
                id=r.id,
                action=CorrectionAction(r.action).value,
                instance_id=r.instance_id,
                faults=r.faults,
                rotation=r.rotation,
                mirrored=r.mirrored,
                view=r.view,
                original_sop_instance_uid=r.original_sop_instance_uid,
                replacement_sop_instance_uid=r.replacement_sop_instance_uid,
                rejection_note_uid=r.rejection_note_uid,
                decided_via=r.decided_via,
                decided_by=r.decided_by,
                decided_at=r.decided_at,
                reason=r.reason,
                reverses_id=r.reverses_id,
                pending=c["pending"],
                sent=c["sent"],
                failed=c["failed"],
                delivered_at=last_sent.get(r.id) if done else None,
            )
        )
    return result


@dataclass(frozen=True)
class AnswerToCorrect:
    """An instance's current answer, with what a correction of it needs."""

    instance_id: int
    prediction_id: int
    answer: Answer
    header_view: str | None
    sop_instance_uid: str | None
    file_sha256: str
    model_name: str
    #: The instance's file holds other bytes now (replaced since the answer).
    file_replaced: bool


def answer_to_correct(session: Session, *, instance_id: int) -> AnswerToCorrect | None:
    """The instance's current answer (``current_answer_id``), or None without one."""
    found = session.execute(
        select(Instance, Prediction, ModelVersion.name)
        .select_from(Instance)
        .join(Prediction, Prediction.id == current_answer_id())
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Instance.id == instance_id)
    ).first()
    if found is None:
        return None
    instance, p, name = found
    return AnswerToCorrect(
        instance_id=instance.id,
        prediction_id=p.id,
        answer=answer_of(p),
        header_view=instance.header_view_position,
        sop_instance_uid=instance.sop_instance_uid,
        file_sha256=p.file_sha256,
        model_name=name,
        file_replaced=instance.file_sha256 != p.file_sha256,
    )


def destinations_of(session: Session, *, correction_id: int) -> list[str]:
    """Where a correction was sent (its reversal goes to the same places)."""
    return sorted(
        session.scalars(
            select(OutboxMessage.destination)
            .where(OutboxMessage.correction_id == correction_id)
            .distinct()
        )
    )
