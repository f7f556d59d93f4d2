"""Reclassify runs: their rows, and the keyset walk that queues done instances for a version."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import Instance, InstanceStatus, Prediction, ReclassifyRun, Study, utcnow


def create_reclassify_run(
    session: Session,
    *,
    actor: str,
    model_version_id: int,
    study_instance_uid: str | None,
    since: datetime | None,
    include_failed: bool,
) -> ReclassifyRun:
    run = ReclassifyRun(
        actor=actor,
        model_version_id=model_version_id,
        study_instance_uid=study_instance_uid,
        since=since,
        include_failed=include_failed,
        cursor_instance_id=0,
        sent=0,
        skipped=0,
    )
    session.add(run)
    session.flush()
    return run


def get_reclassify_run(
    session: Session, *, run_id: int, lock: bool = False
) -> ReclassifyRun | None:
    """A run by id; ``lock`` takes its row lock (PostgreSQL) so that two processes
    resuming one run walk its chunks one after the other, never the same chunk twice."""
    query = select(ReclassifyRun).where(ReclassifyRun.id == run_id)
    if lock:
        query = query.with_for_update()
    return session.scalar(query)


def find_unfinished_reclassify_run(
    session: Session,
    *,
    model_version_id: int,
    study_instance_uid: str | None,
    since: datetime | None,
    include_failed: bool,
) -> ReclassifyRun | None:
    """The newest unfinished run with exactly these filters and this target, if any."""
    same_since = ReclassifyRun.since.is_(None) if since is None else ReclassifyRun.since == since
    same_study = (
        ReclassifyRun.study_instance_uid.is_(None)
        if study_instance_uid is None
        else ReclassifyRun.study_instance_uid == study_instance_uid
    )
    return session.scalar(
        select(ReclassifyRun)
        .where(
            ReclassifyRun.finished_at.is_(None),
            ReclassifyRun.model_version_id == model_version_id,
            ReclassifyRun.include_failed.is_(include_failed),
            same_since,
            same_study,
        )
        .order_by(ReclassifyRun.id.desc())
        .limit(1)
    )


def unfinished_reclassify_runs(session: Session) -> list[ReclassifyRun]:
    return list(
        session.scalars(
            select(ReclassifyRun)
            .where(ReclassifyRun.finished_at.is_(None))
            .order_by(ReclassifyRun.id)
        )
    )


def reclassify_statuses(*, include_failed: bool) -> list[InstanceStatus]:
    return [InstanceStatus.done, InstanceStatus.failed] if include_failed else [InstanceStatus.done]


def _reclassify_range(
    *,
    after_id: int,
    up_to_id: int,
    study_instance_uid: str | None,
    since: datetime | None,
    include_failed: bool,
) -> list[Any]:
    """The conditions of a reclassify run's chunk: ids in ``(after_id, up_to_id]`` that
    are ``done`` (and ``failed`` with ``include_failed``), have a header (files refused at
    ingest never do) and match the filters."""
    conditions: list[Any] = [
        Instance.id > after_id,
        Instance.id <= up_to_id,
        Instance.status.in_(reclassify_statuses(include_failed=include_failed)),
        Instance.study_id.is_not(None),
        # A purged file has no pixels left to answer on (docs/security.md).
        Instance.file_purged_at.is_(None),
    ]
    if study_instance_uid is not None:
        conditions.append(
            Instance.study_id
            == select(Study.id)
            .where(Study.study_instance_uid == study_instance_uid)
            .scalar_subquery()
        )
    if since is not None:
        conditions.append(Instance.enqueued_at >= since)
    return conditions


def _answered_by(model_version_id: int) -> Any:
    """EXISTS an answer from this version on the bytes the instance refers to now (an
    answer on a replaced file does not count)."""
    return (
        select(Prediction.id)
        .where(
            Prediction.instance_id == Instance.id,
            Prediction.model_version_id == model_version_id,
            Prediction.file_sha256 == Instance.file_sha256,
        )
        .correlate(Instance)
        .exists()
    )


def reclassify_candidates(
    session: Session,
    *,
    after_id: int,
    up_to_id: int,
    model_version_id: int,
    study_instance_uid: str | None,
    since: datetime | None,
    include_failed: bool,
) -> list[tuple[int, bool]]:
    """(id, already answered by ``model_version_id``) for the instances in
    ``(after_id, up_to_id]``, in id order, that a reclassify run with these filters
    considers.

    A bounded id range (keyset, no OFFSET), not ``id > after_id ... LIMIT n``: with the
    status index PostgreSQL may answer a LIMIT query by reading every matching row past
    the cursor and sorting them (measured: the walk turns quadratic); a range reads at most
    ``up_to_id - after_id`` rows through the primary key."""
    conditions = _reclassify_range(
        after_id=after_id,
        up_to_id=up_to_id,
        study_instance_uid=study_instance_uid,
        since=since,
        include_failed=include_failed,
    )
    query = select(Instance.id, _answered_by(model_version_id)).where(*conditions)
    return [(int(i), bool(a)) for i, a in session.execute(query.order_by(Instance.id))]


def queue_for_model(
    session: Session,
    *,
    after_id: int,
    up_to_id: int,
    model_version_id: int,
    study_instance_uid: str | None,
    since: datetime | None,
    include_failed: bool,
) -> list[int]:
    """Move the instances of the range :func:`reclassify_candidates` lists as not yet
    answered back to ``queued`` for ``model_version_id`` (the reclassify marker); attempts
    start again from 0. One statement, no id list; returns the ids moved (an instance no
    longer finished by now is left alone)."""
    conditions = _reclassify_range(
        after_id=after_id,
        up_to_id=up_to_id,
        study_instance_uid=study_instance_uid,
        since=since,
        include_failed=include_failed,
    )
    if up_to_id <= after_id:
        return []
    moved = session.execute(
        update(Instance)
        .where(*conditions, ~_answered_by(model_version_id))
        .values(
            status=InstanceStatus.queued,
            target_model_version_id=model_version_id,
            attempts=0,
            error_code=None,
            error_message=None,
            updated_at=utcnow(),
        )
        .returning(Instance.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(moved.scalars())


def count_targeted(session: Session) -> int:
    """Instances queued or processing for a named version (reclassify work in flight)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Instance)
            .where(
                Instance.target_model_version_id.is_not(None),
                Instance.status.in_([InstanceStatus.queued, InstanceStatus.processing]),
            )
        )
        or 0
    )


def max_instance_id(session: Session) -> int:
    return session.scalar(select(func.max(Instance.id))) or 0
