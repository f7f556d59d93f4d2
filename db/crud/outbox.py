"""The outbox: answers back to PACS, its claims, retries and the destinations' backoff."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cxr_orient.answer import Answer
from db.crud.common import answer_of
from db.models import (
    Instance,
    ModelVersion,
    OutboxDestination,
    OutboxMessage,
    OutboxStatus,
    Prediction,
    UidConflict,
    utcnow,
)


def add_outbox_messages(
    session: Session,
    *,
    prediction_ids: Sequence[int],
    destinations: Sequence[str],
    new_report_uid: Callable[[], str],
) -> int:
    """One pending row per (prediction, destination), one SR UID per prediction (the
    same report goes to every destination), made by ``new_report_uid`` (UIDs are DICOM
    knowledge: ``cxr_orient.dicomnet.sr.new_sr_uid``); returns rows added."""
    rows = [
        OutboxMessage(
            prediction_id=pid,
            destination=dest,
            sr_sop_instance_uid=uid,
            status=OutboxStatus.pending,
            attempts=0,
            next_attempt_at=utcnow(),
        )
        for pid in prediction_ids
        for uid in (new_report_uid(),)
        for dest in destinations
    ]
    session.add_all(rows)
    session.flush()
    return len(rows)


def claim_due_outbox(session: Session, *, limit: int, lease_s: float) -> list[int]:
    """Atomically take up to ``limit`` due pending rows: each gets one more attempt and
    is leased (due again only after ``lease_s``, so a sender that dies mid-send leaves it
    to be re-sent, never lost). Oldest due first. On PostgreSQL the rows are picked and
    locked first (FOR UPDATE SKIP LOCKED: rows another sender holds are skipped), then
    updated; SQLite serialises writers, so one UPDATE ... WHERE id IN (SELECT ...) is
    atomic there. Either way the UPDATE re-checks that each row is still due. Rows of a
    destination in backoff (:func:`record_destination_failure`) are not due."""
    now = utcnow()
    # A destination in backoff (its consecutive failures, outbox_destinations) lends none
    # of its rows, however due each row is.
    backing_off = exists().where(
        OutboxDestination.destination == OutboxMessage.destination,
        OutboxDestination.next_attempt_at > now,
    )
    due = and_(
        OutboxMessage.status == OutboxStatus.pending,
        OutboxMessage.next_attempt_at <= now,
        ~backing_off,
    )
    picked: Any = (
        select(OutboxMessage.id)
        .where(due)
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Lock the picked rows first, in this transaction: as a subquery of the UPDATE,
        # PostgreSQL may run the LIMIT ... SKIP LOCKED scan more than once and claim
        # more than ``limit`` rows (measured: limit 1 claimed 2).
        picked = list(session.scalars(picked.with_for_update(skip_locked=True)))
        if not picked:
            return []
    else:
        picked = picked.scalar_subquery()
    claimed = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(picked), due)
        .values(
            attempts=OutboxMessage.attempts + 1,
            next_attempt_at=now + timedelta(seconds=lease_s),
            updated_at=now,
        )
        .returning(OutboxMessage.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(claimed.scalars())


@dataclass(frozen=True)
class OutboxWork:
    """What a sender needs to build and send one report (re-read for every attempt)."""

    outbox_id: int
    destination: str
    sr_sop_instance_uid: str
    attempts: int
    prediction_id: int
    file_path: str
    #: The bytes the answer was made on (the checked read must find them).
    file_sha256: str
    sop_instance_uid: str | None
    answer: Answer
    model_name: str
    model_architecture: str
    answered_at: datetime


def outbox_work(session: Session, *, outbox_ids: Sequence[int]) -> list[OutboxWork]:
    query = (
        select(
            OutboxMessage,
            Prediction,
            Instance.file_path,
            Instance.sop_instance_uid,
            ModelVersion.name,
            ModelVersion.architecture,
        )
        .join(Prediction, Prediction.id == OutboxMessage.prediction_id)
        .join(Instance, Instance.id == Prediction.instance_id)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(OutboxMessage.id.in_(outbox_ids))
        .order_by(OutboxMessage.id)
    )
    return [
        OutboxWork(
            outbox_id=m.id,
            destination=m.destination,
            sr_sop_instance_uid=m.sr_sop_instance_uid,
            attempts=m.attempts,
            prediction_id=p.id,
            file_path=path,
            file_sha256=p.file_sha256,
            sop_instance_uid=sop,
            answer=answer_of(p),
            model_name=name,
            model_architecture=arch,
            answered_at=p.created_at,
        )
        for m, p, path, sop, name, arch in session.execute(query)
        for path in (_file_answered(session, p, path),)
    ]


def _file_answered(session: Session, prediction: Prediction, current_path: str) -> str:
    """Where the bytes an answer was made on are: the instance's file, or, when it was
    replaced since (uid conflict under ``replace``), the earlier file its conflict row
    names (the checked read then finds the right bytes, or fails naming the file)."""
    instance_sha = session.scalar(
        select(Instance.file_sha256).where(Instance.id == prediction.instance_id)
    )
    if instance_sha == prediction.file_sha256:
        return current_path
    earlier = session.scalar(
        select(UidConflict.known_file_path)
        .where(
            UidConflict.instance_id == prediction.instance_id,
            UidConflict.known_file_sha256 == prediction.file_sha256,
        )
        .order_by(UidConflict.id.desc())
        .limit(1)
    )
    return earlier or current_path


def mark_outbox_sent(session: Session, *, outbox_id: int) -> None:
    now = utcnow()
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == outbox_id, OutboxMessage.status == OutboxStatus.pending)
        .values(status=OutboxStatus.sent, sent_at=now, updated_at=now)
    )


def mark_outbox_retry(
    session: Session, *, outbox_id: int, error: str, next_attempt_at: datetime
) -> None:
    """A send that failed and may succeed later: pending again, due at ``next_attempt_at``."""
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == outbox_id, OutboxMessage.status == OutboxStatus.pending)
        .values(last_error=error[:4000], next_attempt_at=next_attempt_at, updated_at=utcnow())
    )


def release_outbox(
    session: Session, *, outbox_id: int, error: str, next_attempt_at: datetime
) -> None:
    """Give back a claimed row that was not tried (its destination just failed in the
    same run): its attempt is not counted; due at ``next_attempt_at``."""
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == outbox_id, OutboxMessage.status == OutboxStatus.pending)
        .values(
            attempts=OutboxMessage.attempts - 1,
            last_error=error[:4000],
            next_attempt_at=next_attempt_at,
            updated_at=utcnow(),
        )
    )


def mark_outbox_failed(session: Session, *, outbox_id: int, error: str) -> None:
    """A send refused for good (retrying the same object cannot succeed)."""
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == outbox_id, OutboxMessage.status == OutboxStatus.pending)
        .values(status=OutboxStatus.failed, last_error=error[:4000], updated_at=utcnow())
    )


def retry_failed_outbox(
    session: Session, *, destination: str | None = None, outbox_ids: Sequence[int] | None = None
) -> int:
    """Make ``failed`` rows pending and due now (an operator fixed the cause); attempts
    and the last error stay as history. Returns rows moved."""
    condition = OutboxMessage.status == OutboxStatus.failed
    if destination is not None:
        condition = and_(condition, OutboxMessage.destination == destination)
    if outbox_ids is not None:
        condition = and_(condition, OutboxMessage.id.in_(outbox_ids))
    now = utcnow()
    result = session.execute(
        update(OutboxMessage)
        .where(condition)
        .values(status=OutboxStatus.pending, next_attempt_at=now, updated_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def record_destination_failure(
    session: Session, *, destination: str, error: str, delay_s: Callable[[int], float]
) -> tuple[int, datetime]:
    """One more consecutive failure of ``destination``: none of its rows is claimed
    before ``now + delay_s(failures)``. Returns (consecutive failures, that time)."""
    now = utcnow()
    if session.get(OutboxDestination, destination) is None:
        try:
            with session.begin_nested():  # another sender may add it first
                session.add(
                    OutboxDestination(
                        destination=destination, consecutive_failures=0, updated_at=now
                    )
                )
        except IntegrityError:
            pass
    failures = int(
        session.execute(
            update(OutboxDestination)
            .where(OutboxDestination.destination == destination)
            .values(
                consecutive_failures=OutboxDestination.consecutive_failures + 1,
                last_error=error[:4000],
                updated_at=now,
                failing_since=func.coalesce(OutboxDestination.failing_since, now),
            )
            .returning(OutboxDestination.consecutive_failures)
            .execution_options(synchronize_session=False)
        ).scalar_one()
    )
    due = now + timedelta(seconds=delay_s(failures))
    session.execute(
        update(OutboxDestination)
        .where(OutboxDestination.destination == destination)
        .values(next_attempt_at=due)
        .execution_options(synchronize_session=False)
    )
    return failures, due


def record_destination_success(session: Session, *, destination: str) -> None:
    """``destination`` stored a report: its backoff ends (no write while it is up)."""
    session.execute(
        update(OutboxDestination)
        .where(
            OutboxDestination.destination == destination,
            or_(
                OutboxDestination.consecutive_failures > 0,
                OutboxDestination.next_attempt_at.is_not(None),
            ),
        )
        .values(consecutive_failures=0, next_attempt_at=None, failing_since=None)
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class DestinationState:
    destination: str
    consecutive_failures: int
    next_attempt_at: datetime | None
    last_error: str | None
    failing_since: datetime | None


def destination_states(session: Session) -> dict[str, DestinationState]:
    """Destinations that have failed at least once, by URL (their backoff and cause)."""
    return {
        row.destination: DestinationState(
            row.destination,
            row.consecutive_failures,
            row.next_attempt_at,
            row.last_error,
            row.failing_since,
        )
        for row in session.scalars(select(OutboxDestination))
    }


@dataclass(frozen=True)
class OutboxSummary:
    destination: str
    pending: int
    sent: int
    failed: int
    #: created_at of the oldest pending row (None when nothing is pending).
    oldest_pending: datetime | None


def outbox_summary(session: Session) -> list[OutboxSummary]:
    """Per destination: rows pending, sent and failed, and the oldest pending one."""
    counts: dict[str, dict[str, int]] = {}
    oldest: dict[str, datetime | None] = {}
    query = select(
        OutboxMessage.destination,
        OutboxMessage.status,
        func.count(),
        func.min(OutboxMessage.created_at),
    ).group_by(OutboxMessage.destination, OutboxMessage.status)
    for dest, status, n, first in session.execute(query):
        counts.setdefault(dest, {s.value: 0 for s in OutboxStatus})[OutboxStatus(status)] = n
        if OutboxStatus(status) == OutboxStatus.pending:
            oldest[dest] = first
    return [
        OutboxSummary(dest, c["pending"], c["sent"], c["failed"], oldest.get(dest))
        for dest, c in sorted(counts.items())
    ]


def outbox_rows(
    session: Session, *, prediction_ids: Sequence[int] | None = None
) -> list[OutboxMessage]:
    """Outbox rows in id order (all, or those of the given predictions)."""
    query = select(OutboxMessage).order_by(OutboxMessage.id)
    if prediction_ids is not None:
        query = query.where(OutboxMessage.prediction_id.in_(prediction_ids))
    return list(session.scalars(query))
