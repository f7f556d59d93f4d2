"""Claims on instances: leases, the reaper's requeue, failures, time-outs, status counts."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from db.crud.common import ID_CHUNK, chunked
from db.models import UNFINISHED_STATUSES, Instance, InstanceStatus, utcnow


def lease_lapsed(now: datetime, lease_s: float) -> Any:
    """SQL condition: a ``processing`` row whose claim has lapsed at ``now`` (its lease
    was not renewed in time; a claim from before leases existed, with no lease, counts
    from its last update)."""
    return and_(
        Instance.status == InstanceStatus.processing,
        or_(
            Instance.lease_expires_at < now,
            and_(
                Instance.lease_expires_at.is_(None),
                Instance.updated_at < now - timedelta(seconds=lease_s),
            ),
        ),
    )


def new_claim_token() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class ClaimedInstance:
    """A row as a claim left it (``attempts`` counts this claim): what a worker needs
    to decide whether to work on it and to read its file."""

    instance_id: int
    file_path: str
    #: The bytes claimed: an answer is recorded only while the row still refers to them.
    file_sha256: str
    header_view: str | None
    attempts: int
    file_purged_at: datetime | None
    #: The reclassify marker: the version that must answer (None: the active one).
    target_version_id: int | None
    #: What a correction names as the original (None: the file had none).
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class Claim:
    """What :func:`claim_instances` took, in the order asked, and what it could not."""

    claimed: list[ClaimedInstance]
    #: Asked for, not taken: finished, or under another worker's live lease.
    skipped: list[int]
    #: Of ``skipped``, the ids no instance has.
    unknown: list[int]


def claim_instances(
    session: Session,
    *,
    instance_ids: Sequence[int],
    lease_s: float,
    claim_token: str | None = None,
    claimed_by: str | None = None,
) -> Claim:
    """Atomically move the claimable of ``instance_ids`` to ``processing`` under a lease
    of ``lease_s`` seconds held by ``claim_token``, in one ``UPDATE ... RETURNING`` (the
    WHERE is the compare-and-set: two workers claiming at once each get distinct rows;
    on PostgreSQL the second waits for the first to commit and re-checks). Claimable: a
    ``queued`` row; a ``processing`` row whose lease lapsed (its worker stopped renewing
    it: dead, or cut off from the database), claimed anew with the new token; and a row
    already held under ``claim_token`` (a claim retried after its commit went through
    and its answer was lost). Finished rows and live leases of others are skipped. One
    more query, only when something was skipped, tells the unknown ids apart."""
    ids = list(dict.fromkeys(instance_ids))  # de-duplicate, keep order
    if not ids:
        return Claim([], [], [])
    now = utcnow()
    claimable = or_(Instance.status == InstanceStatus.queued, lease_lapsed(now, lease_s))
    if claim_token is not None:
        claimable = or_(
            claimable,
            and_(Instance.status == InstanceStatus.processing, Instance.claim_token == claim_token),
        )
    rows = session.execute(
        update(Instance)
        .where(Instance.id.in_(ids), claimable)
        .values(
            status=InstanceStatus.processing,
            attempts=Instance.attempts + 1,
            claim_token=claim_token or new_claim_token(),
            claimed_by=claimed_by,
            lease_expires_at=now + timedelta(seconds=lease_s),
            started_at=now,
            updated_at=now,
        )
        .returning(
            Instance.id,
            Instance.file_path,
            Instance.file_sha256,
            Instance.header_view_position,
            Instance.attempts,
            Instance.file_purged_at,
            Instance.target_model_version_id,
            Instance.sop_instance_uid,
        )
        .execution_options(synchronize_session=False)
    ).all()
    by_id = {
        i: ClaimedInstance(
            instance_id=i,
            file_path=path,
            file_sha256=sha,
            header_view=view,
            attempts=attempts,
            file_purged_at=purged,
            target_version_id=target,
            sop_instance_uid=uid,
        )
        for i, path, sha, view, attempts, purged, target, uid in rows
    }
    skipped = [i for i in ids if i not in by_id]
    unknown: list[int] = []
    if skipped:
        known = set(session.scalars(select(Instance.id).where(Instance.id.in_(skipped))))
        unknown = [i for i in skipped if i not in known]
    return Claim([by_id[i] for i in ids if i in by_id], skipped, unknown)


def claim_for_processing(
    session: Session,
    *,
    instance_id: int,
    lease_s: float,
    claim_token: str | None = None,
    claimed_by: str | None = None,
) -> bool:
    """:func:`claim_instances` for one instance: whether it was claimed."""
    return bool(
        claim_instances(
            session,
            instance_ids=[instance_id],
            lease_s=lease_s,
            claim_token=claim_token,
            claimed_by=claimed_by,
        ).claimed
    )


def renew_leases(session: Session, *, claim_tokens: Sequence[str], lease_s: float) -> int:
    """Extend the leases of the rows still held under ``claim_tokens`` to ``lease_s`` from
    now (the heartbeat of a worker at work); returns how many rows were renewed. A row
    re-queued by the reaper or claimed by another worker has another token (or none)
    and is left alone. ``updated_at`` is left alone too: it says when the row last
    changed state, not when its worker last said it is alive."""
    if not claim_tokens:
        return 0
    result = session.execute(
        update(Instance)
        .where(
            Instance.claim_token.in_(list(claim_tokens)),
            Instance.status == InstanceStatus.processing,
        )
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def requeue_lapsed_claims(session: Session, *, lease_s: float, limit: int = 5000) -> list[int]:
    """Move ``processing`` rows whose lease lapsed back to ``queued`` (their claim void)
    and return their ids, for the caller to send. Compare-and-set: reapers running at
    once in several processes each get distinct rows (each lapsed row is returned once)."""
    now = utcnow()
    lapsed = list(
        session.scalars(
            select(Instance.id).where(lease_lapsed(now, lease_s)).order_by(Instance.id).limit(limit)
        )
    )
    if not lapsed:
        return []
    return sorted(
        session.scalars(
            update(Instance)
            .where(Instance.id.in_(lapsed), lease_lapsed(now, lease_s))
            .values(
                status=InstanceStatus.queued,
                claim_token=None,
                lease_expires_at=None,
                updated_at=now,
            )
            .returning(Instance.id)
            .execution_options(synchronize_session=False)
        )
    )


def take_queued_for_resend(
    session: Session, *, queued_before: datetime, limit: int = 5000
) -> list[int]:
    """``queued`` rows last touched before ``queued_before`` (their messages were lost
    with the broker's): touched now and returned, for the caller to send again.
    Compare-and-set: workers that notice the loss at once each get distinct rows, and a
    row is re-sent once per loss (touched now, it is no longer before the cut-off)."""
    now = utcnow()
    stale = and_(Instance.status == InstanceStatus.queued, Instance.updated_at < queued_before)
    ids = list(session.scalars(select(Instance.id).where(stale).order_by(Instance.id).limit(limit)))
    if not ids:
        return []
    return sorted(
        session.scalars(
            update(Instance)
            .where(Instance.id.in_(ids), stale)
            .values(updated_at=now)
            .returning(Instance.id)
            .execution_options(synchronize_session=False)
        )
    )


def mark_failed(
    session: Session,
    *,
    instance_id: int,
    error_code: str,
    error_message: str,
    file_sha256: str | None = None,
    claim_token: str | None = None,
) -> bool:
    """Fail an instance (never a ``done`` one); False when nothing changed. With
    ``file_sha256`` (the bytes the work was claimed with), only while the instance still
    refers to them: a failure on a file replaced since (uid conflict, ``replace``) must
    not fail its replacement. With ``claim_token``, only while that claim is still the
    instance's (a worker whose lease lapsed records nothing)."""
    condition = and_(Instance.id == instance_id, Instance.status != InstanceStatus.done)
    if file_sha256 is not None:
        condition = and_(condition, Instance.file_sha256 == file_sha256)
    if claim_token is not None:
        condition = and_(
            condition,
            Instance.claim_token == claim_token,
            Instance.status == InstanceStatus.processing,
        )
    result = session.execute(
        update(Instance)
        .where(condition)
        .values(
            status=InstanceStatus.failed,
            error_code=error_code,
            error_message=error_message[:4000],
            target_model_version_id=None,
            claim_token=None,
            lease_expires_at=None,
            finished_at=utcnow(),
            updated_at=utcnow(),
        )
    )
    return bool(getattr(result, "rowcount", 0))


@dataclass(frozen=True)
class TimedOut:
    """What :func:`time_out_instances` did with the ids of a batch stopped mid-way."""

    #: Claimed and unfinished: back to ``queued`` with the error recorded, to send again.
    retried: list[int]
    #: Claimed and unfinished on their last allowed attempt: ``failed`` with the error.
    failed: list[int]
    #: Never claimed by the batch (still ``queued``): to send again as they are.
    unclaimed: list[int]


def time_out_instances(
    session: Session,
    *,
    instance_ids: Sequence[int],
    max_attempts: int,
    error_code: str,
    error_message: str,
) -> TimedOut:
    """The ids of a batch that was stopped (time limit): those it had claimed and not
    finished (``processing``) are queued again with ``error_code`` recorded, or failed
    with it once they used ``max_attempts``; finished ones are left as they are."""
    rows = session.execute(
        select(Instance.id, Instance.status, Instance.attempts)
        .where(Instance.id.in_(instance_ids))
        .with_for_update()
    ).all()
    processing = [(i, n) for i, status, n in rows if status == InstanceStatus.processing]
    retried = sorted(i for i, n in processing if n < max_attempts)
    failed = sorted(i for i, n in processing if n >= max_attempts)
    unclaimed = sorted(i for i, status, _ in rows if status == InstanceStatus.queued)
    now = utcnow()
    if retried:
        session.execute(
            update(Instance)
            .where(Instance.id.in_(retried), Instance.status == InstanceStatus.processing)
            .values(
                status=InstanceStatus.queued,
                error_code=error_code,
                error_message=error_message[:4000],
                claim_token=None,
                lease_expires_at=None,
                updated_at=now,
            )
        )
    if failed:
        session.execute(
            update(Instance)
            .where(Instance.id.in_(failed), Instance.status == InstanceStatus.processing)
            .values(
                status=InstanceStatus.failed,
                error_code=error_code,
                error_message=error_message[:4000],
                target_model_version_id=None,
                claim_token=None,
                lease_expires_at=None,
                finished_at=now,
                updated_at=now,
            )
        )
    return TimedOut(retried, failed, unclaimed)


def mark_queued(session: Session, *, instance_ids: Sequence[int], lease_s: float) -> None:
    """Queue again those of ``instance_ids`` that are queued, or ``processing`` under a
    lapsed lease (their claim is void). A live lease is never taken from its worker."""
    if instance_ids:
        now = utcnow()
        session.execute(
            update(Instance)
            .where(
                Instance.id.in_(instance_ids),
                or_(Instance.status == InstanceStatus.queued, lease_lapsed(now, lease_s)),
            )
            .values(
                status=InstanceStatus.queued,
                claim_token=None,
                lease_expires_at=None,
                updated_at=now,
            )
        )


def held_instance_ids(
    session: Session, *, claim_token: str, instance_ids: Sequence[int]
) -> list[int]:
    """Those of ``instance_ids`` still ``processing`` under ``claim_token``, locked until
    the transaction ends (PostgreSQL): the rows a worker may record outcomes for."""
    if not instance_ids:
        return []
    return sorted(
        session.scalars(
            select(Instance.id)
            .where(
                Instance.id.in_(list(instance_ids)),
                Instance.claim_token == claim_token,
                Instance.status == InstanceStatus.processing,
            )
            .order_by(Instance.id)
            .with_for_update()
        )
    )


def superseded_instance_ids(session: Session, *, made_on: Mapping[int, str]) -> list[int]:
    """Those of ``made_on``'s instances that no longer refer to the bytes given (instance
    id -> sha256 the work was claimed with): their file was replaced since."""
    if not made_on:
        return []
    rows = session.execute(
        select(Instance.id, Instance.file_sha256).where(Instance.id.in_(list(made_on)))
    )
    return sorted(i for i, sha in rows if sha != made_on[i])


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
    session: Session, *, lapsed_lease_s: float | None = None, queued: bool = True
) -> list[int]:
    """Instances to (re)send: ``queued`` ones (unless ``queued`` is False) and
    ``processing`` ones, all of them, or with ``lapsed_lease_s`` only those whose lease
    lapsed (see :func:`lease_lapsed`)."""
    condition: Any = Instance.status == InstanceStatus.processing
    if lapsed_lease_s is not None:
        condition = lease_lapsed(utcnow(), lapsed_lease_s)
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
    for chunk in chunked(instance_ids, ID_CHUNK):
        total += (
            session.scalar(
                select(func.count())
                .select_from(Instance)
                .where(
                    Instance.id.in_(chunk),
                    Instance.status.in_(UNFINISHED_STATUSES),
                )
            )
            or 0
        )
    return total
