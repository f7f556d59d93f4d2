"""Spool retention: which received files no one needs any more, marked purged in the same rule."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, exists, false, func, or_, select, update
from sqlalchemy.orm import Session

from db.crud.common import awaiting_review, labelled
from db.crud.corrections import instance_corrected
from db.models import (
    Instance,
    InstanceStatus,
    OutboxMessage,
    OutboxStatus,
    Prediction,
    UidConflict,
    UidConflictAction,
    utcnow,
)


def review_backlog(session: Session) -> int:
    """Instances ``done`` whose current answer needs review and that carry no label yet
    (what a reviewer still has to look at); one query."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Instance)
            .where(
                Instance.status == InstanceStatus.done,
                func.coalesce(awaiting_review(), false()),
                ~labelled(),
            )
        )
        or 0
    )


def held_for_delivery() -> Any:
    """EXISTS a pending outbox row for an answer of the instance, correlated to
    ``Instance``: its received file is kept until the report went out, because the SR is
    built from the source file's header when it is sent. A row failed for good no longer
    holds the file (``outbox retry`` of it after a purge fails with ``file_purged``).
    An instance corrected back to PACS keeps its file for good: the replacement is
    rebuilt from it, for delivery and for a later reversal's rejection note."""
    return or_(
        select(OutboxMessage.id)
        .join(Prediction, Prediction.id == OutboxMessage.prediction_id)
        .where(Prediction.instance_id == Instance.id, OutboxMessage.status == OutboxStatus.pending)
        .correlate(Instance)
        .exists(),
        instance_corrected(),
    )


def _purgeable(*, spool_prefix: str, finished_before: datetime) -> list[Any]:
    """The spool purge's rule: a received file (under the spool), not purged yet, of an
    instance finished (done or failed) before ``finished_before``, that no one still needs:
    not awaiting review, not labelled, no result waiting for delivery."""
    return [
        Instance.file_purged_at.is_(None),
        Instance.status.in_([InstanceStatus.done, InstanceStatus.failed]),
        Instance.finished_at.is_not(None),
        Instance.finished_at <= finished_before,
        Instance.file_path.startswith(spool_prefix, autoescape=True),
        ~labelled(),
        ~func.coalesce(awaiting_review(), false()),
        ~held_for_delivery(),
    ]


def mark_files_purged(
    session: Session,
    *,
    spool_prefix: str,
    finished_before: datetime,
    now: datetime,
    after_id: int,
    limit: int,
) -> list[tuple[int, str]]:
    """Mark the first ``limit`` purgeable instances (:func:`_purgeable`) with an id above
    ``after_id`` as purged at ``now`` and return (id, file_path) of each, in id order.
    The rule is evaluated in the UPDATE itself, so a label, a review flag or a reclassify
    that came meanwhile keeps its file; the caller deletes the files before it commits
    (rows locked meanwhile). A keyset walk: a run reads each instance once, not once per
    chunk."""
    conditions = [
        Instance.id > after_id,
        *_purgeable(spool_prefix=spool_prefix, finished_before=finished_before),
    ]
    chunk = select(Instance.id).where(*conditions).order_by(Instance.id).limit(limit)
    marked = session.execute(
        update(Instance)
        .where(Instance.id.in_(chunk.scalar_subquery()), *conditions)
        .values(file_purged_at=now)
        .returning(Instance.id, Instance.file_path)
        .execution_options(synchronize_session=False)
    )
    return sorted((int(i), str(p)) for i, p in marked)


def unmark_files_purged(session: Session, *, instance_ids: Sequence[int]) -> None:
    """Undo :func:`mark_files_purged` for files that could not be deleted."""
    if instance_ids:
        session.execute(
            update(Instance)
            .where(Instance.id.in_(instance_ids))
            .values(file_purged_at=None)
            .execution_options(synchronize_session=False)
        )


def _conflict_unused_file() -> Any:
    """The file of a UID conflict that the instance does not refer to: the new one kept
    out (keep_first), or the old one replaced (replace)."""
    return case(
        (UidConflict.action == UidConflictAction.kept_first, UidConflict.new_file_path),
        else_=UidConflict.known_file_path,
    )


def mark_conflict_files_purged(
    session: Session,
    *,
    spool_prefix: str,
    created_before: datetime,
    now: datetime,
    after_id: int,
    limit: int,
) -> list[tuple[int, str]]:
    """Mark the first ``limit`` UID conflicts above ``after_id`` whose unused file
    (:func:`_conflict_unused_file`) lies under the spool, is named by no instance (the
    same bytes may have become an instance's file since) and was recorded before
    ``created_before`` as purged at ``now``; return (id, path) of each, in id order. The
    caller deletes the files before it commits, as for :func:`mark_files_purged`."""
    unused = _conflict_unused_file()
    conditions = [
        UidConflict.id > after_id,
        UidConflict.file_purged_at.is_(None),
        UidConflict.created_at <= created_before,
        unused.startswith(spool_prefix, autoescape=True),
        ~exists().where(Instance.file_path == unused),
    ]
    chunk = select(UidConflict.id).where(*conditions).order_by(UidConflict.id).limit(limit)
    marked = session.execute(
        update(UidConflict)
        .where(UidConflict.id.in_(chunk.scalar_subquery()), *conditions)
        .values(file_purged_at=now)
        .returning(UidConflict.id, unused)
        .execution_options(synchronize_session=False)
    )
    return sorted((int(i), str(p)) for i, p in marked)


def unmark_conflict_files_purged(session: Session, *, conflict_ids: Sequence[int]) -> None:
    """Undo :func:`mark_conflict_files_purged` for files that could not be deleted."""
    if conflict_ids:
        session.execute(
            update(UidConflict)
            .where(UidConflict.id.in_(conflict_ids))
            .values(file_purged_at=None)
            .execution_options(synchronize_session=False)
        )


def restore_purged_file(session: Session, *, instance_id: int, file_path: str) -> bool:
    """A purged instance's very bytes were received again (same SHA-256): its file is back,
    at ``file_path``, and the purge rule applies to it anew."""
    result = session.execute(
        update(Instance)
        .where(Instance.id == instance_id, Instance.file_purged_at.is_not(None))
        .values(file_path=file_path, file_purged_at=None, updated_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    return bool(getattr(result, "rowcount", 0))
