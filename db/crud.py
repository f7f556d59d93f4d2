"""Database access as small keyword-only functions. Callers own the session/transaction."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    and_,
    case,
    delete,
    exists,
    false,
    func,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from db.models import (
    UNFINISHED_STATUSES,
    ApiToken,
    GroundTruthLabel,
    Instance,
    InstanceStatus,
    LabelValue,
    LoginFailure,
    ModelEvent,
    ModelVersion,
    OrientationLabel,
    OutboxDestination,
    OutboxMessage,
    OutboxStatus,
    Prediction,
    ReclassifyRun,
    Study,
    StudyAnswer,
    UidConflict,
    UidConflictAction,
    User,
    UserRole,
    WorkerHeartbeat,
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


def get_or_create_studies(
    session: Session, *, studies: Mapping[str, str | None]
) -> dict[str, Study]:
    """:func:`get_or_create_study` for many (StudyInstanceUID -> PatientID): one query
    for the known ones, one insert for the rest (one by one only when another ingest
    created some of them meanwhile)."""
    found: dict[str, Study] = {}
    uids = list(studies)
    for start in range(0, len(uids), 500):
        for study in session.scalars(select(Study).where(
                Study.study_instance_uid.in_(uids[start:start + 500]))):
            found[study.study_instance_uid] = study
    missing = [Study(study_instance_uid=uid, patient_id=studies[uid])
               for uid in uids if uid not in found]
    if missing:
        try:
            with session.begin_nested():
                session.add_all(missing)
        except IntegrityError:
            missing = []
        for study in missing:
            found[study.study_instance_uid] = study
        for uid in uids:
            if uid not in found:
                found[uid] = get_or_create_study(session, study_instance_uid=uid,
                                                 patient_id=studies[uid])
    return found


@dataclass(frozen=True)
class NewInstance:
    """One instance for :func:`add_instances` (the fields of :func:`add_instance`)."""

    study: Study
    sop_instance_uid: str
    series_instance_uid: str | None
    file_path: str
    file_sha256: str
    file_size: int
    modality: str | None
    transfer_syntax_uid: str | None
    header_view_position: str | None
    status: InstanceStatus = InstanceStatus.queued
    error_code: str | None = None
    error_message: str | None = None


def add_instances(session: Session, *, new: Sequence[NewInstance]
                  ) -> list[tuple[Instance, bool]]:
    """:func:`add_instance` for instances whose UIDs the caller has just found unknown in
    this transaction: inserted together (one savepoint, not one each); when one of them
    was recorded meanwhile (by another ingest, or twice in ``new``), one by one. Returns
    (instance, created) in the order of ``new``."""
    rows = [Instance(
        study_id=n.study.id, sop_instance_uid=n.sop_instance_uid,
        series_instance_uid=n.series_instance_uid, file_path=n.file_path,
        file_sha256=n.file_sha256, file_size=n.file_size, modality=n.modality,
        transfer_syntax_uid=n.transfer_syntax_uid, header_view_position=n.header_view_position,
        status=n.status, error_code=n.error_code, error_message=n.error_message,
        finished_at=utcnow() if n.status == InstanceStatus.out_of_scope else None,
    ) for n in new]
    if len({n.sop_instance_uid for n in new}) == len(new):
        try:
            with session.begin_nested():
                session.add_all(rows)
            return [(row, True) for row in rows]
        except IntegrityError:
            pass
    return [add_instance(session, study=n.study, sop_instance_uid=n.sop_instance_uid,
                         series_instance_uid=n.series_instance_uid, file_path=n.file_path,
                         file_sha256=n.file_sha256, file_size=n.file_size,
                         modality=n.modality, transfer_syntax_uid=n.transfer_syntax_uid,
                         header_view_position=n.header_view_position, status=n.status,
                         error_code=n.error_code, error_message=n.error_message)
            for n in new]


def get_instance(session: Session, *, instance_id: int) -> Instance | None:
    return session.get(Instance, instance_id)


def find_instance_by_uid(session: Session, *, sop_instance_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def find_instances_by_uids(session: Session, *, sop_instance_uids: Sequence[str]
                           ) -> dict[str, Instance]:
    """The recorded instances among ``sop_instance_uids``, by UID (one query per 500)."""
    found: dict[str, Instance] = {}
    uids = list(dict.fromkeys(sop_instance_uids))
    for start in range(0, len(uids), 500):
        for instance in session.scalars(select(Instance).where(
                Instance.sop_instance_uid.in_(uids[start:start + 500]))):
            found[str(instance.sop_instance_uid)] = instance
    return found


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
    status: InstanceStatus = InstanceStatus.queued,
    error_code: str | None = None,
    error_message: str | None = None,
) -> tuple[Instance, bool]:
    """Record an instance, ``queued`` (or ``waiting``: held for its study's quiet period;
    or ``out_of_scope`` with the accept policy's reason, finished at once); (existing,
    False) when the SOPInstanceUID is known."""
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
        status=status,
        error_code=error_code,
        error_message=error_message,
        finished_at=utcnow() if status == InstanceStatus.out_of_scope else None,
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


def get_study(session: Session, *, study_id: int) -> Study | None:
    return session.get(Study, study_id)


def replace_instance_file(
    session: Session,
    *,
    instance_id: int,
    expected_sha256: str,
    file_path: str,
    file_sha256: str,
    file_size: int,
    series_instance_uid: str | None,
    modality: str | None,
    transfer_syntax_uid: str | None,
    header_view_position: str | None,
    status: InstanceStatus = InstanceStatus.queued,
) -> bool:
    """Point an instance at a new file (a uid conflict under ``replace``) and queue it
    again (``status`` ``waiting``: hold it for its study's quiet period): its answers
    stay (each names the bytes it was made on); status, attempts and
    error start over. Compare-and-set: False, and nothing changed, when the instance no
    longer refers to ``expected_sha256`` (another enqueue replaced it meanwhile).

    An answer in flight on the old bytes (the instance was ``processing``) is then not
    recorded: :func:`record_predictions` and :func:`mark_failed` only touch an instance
    that still refers to the bytes the work was claimed with.
    """
    now = utcnow()
    result = session.execute(
        update(Instance)
        .where(Instance.id == instance_id, Instance.file_sha256 == expected_sha256)
        .values(
            file_path=file_path,
            file_sha256=file_sha256,
            file_size=file_size,
            series_instance_uid=series_instance_uid,
            modality=modality,
            transfer_syntax_uid=transfer_syntax_uid,
            header_view_position=header_view_position,
            status=status,
            error_code=None,
            error_message=None,
            attempts=0,
            # New bytes are answered by the model in service, not by a reclassify that
            # was queued for the old ones.
            target_model_version_id=None,
            # The new file is on disk: the purge of the old one no longer applies.
            file_purged_at=None,
            # Any claim on the old bytes is void: its worker records nothing.
            claim_token=None,
            lease_expires_at=None,
            enqueued_at=now,
            started_at=None,
            finished_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session="fetch")
    )
    return bool(getattr(result, "rowcount", 0))


def add_uid_conflict(
    session: Session,
    *,
    instance_id: int,
    known_status: InstanceStatus,
    study_instance_uid: str,
    study_matches: bool,
    known_file_path: str,
    known_file_sha256: str,
    known_file_size: int,
    new_file_path: str,
    new_file_sha256: str,
    new_file_size: int,
    policy: str,
    action: UidConflictAction,
    detail: str,
) -> tuple[UidConflict, bool]:
    """Record a file with a known SOPInstanceUID and other bytes. A ``kept_first``
    conflict already recorded (same instance, same bytes known, same new path and bytes:
    enqueue run again) returns (existing, False); every replacement is a new row."""
    if action == UidConflictAction.kept_first:
        existing = session.scalar(
            select(UidConflict)
            .where(
                UidConflict.instance_id == instance_id,
                UidConflict.action == UidConflictAction.kept_first,
                UidConflict.known_file_sha256 == known_file_sha256,
                UidConflict.new_file_sha256 == new_file_sha256,
                UidConflict.new_file_path == new_file_path,
            )
            .order_by(UidConflict.id)
            .limit(1)
        )
        if existing is not None:
            return existing, False
    conflict = UidConflict(
        instance_id=instance_id,
        study_instance_uid=study_instance_uid,
        study_matches=study_matches,
        known_file_path=known_file_path,
        known_file_sha256=known_file_sha256,
        known_file_size=known_file_size,
        known_status=known_status,
        new_file_path=new_file_path,
        new_file_sha256=new_file_sha256,
        new_file_size=new_file_size,
        policy=policy,
        action=action,
        detail=detail,
    )
    session.add(conflict)
    session.flush()
    return conflict, True


def uid_conflict_counts(session: Session) -> dict[str, int]:
    """Recorded uid conflicts by what was done: ``{"kept_first": n, "replaced": m}``."""
    counts = {action.value: 0 for action in UidConflictAction}
    query = select(UidConflict.action, func.count()).group_by(UidConflict.action)
    for action, n in session.execute(query):
        counts[UidConflictAction(action).value] = n
    return counts


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


def recorded_paths_under(session: Session, *, prefix: str) -> set[str]:
    """Every file path under ``prefix`` (a folder, ending in '/') that is recorded: as an
    instance's file or as the new file of a uid conflict (the spool's startup sweep)."""
    instances = select(Instance.file_path).where(
        Instance.file_path.startswith(prefix, autoescape=True))
    conflicts = select(UidConflict.new_file_path).where(
        UidConflict.new_file_path.startswith(prefix, autoescape=True))
    return set(session.scalars(instances)) | set(session.scalars(conflicts))


def known_sop_instance_uids(session: Session, *, sop_instance_uids: Sequence[str]) -> set[str]:
    """Those of ``sop_instance_uids`` that are recorded (a pull skips them)."""
    found: set[str] = set()
    uids = list(dict.fromkeys(sop_instance_uids))
    for start in range(0, len(uids), 500):
        chunk = uids[start:start + 500]
        found.update(session.scalars(
            select(Instance.sop_instance_uid).where(Instance.sop_instance_uid.in_(chunk))))
    return found


def lease_lapsed(now: datetime, lease_s: float) -> Any:
    """SQL condition: a ``processing`` row whose claim has lapsed at ``now`` (its lease
    was not renewed in time; a claim from before leases existed, with no lease, counts
    from its last update)."""
    return and_(
        Instance.status == InstanceStatus.processing,
        or_(Instance.lease_expires_at < now,
            and_(Instance.lease_expires_at.is_(None),
                 Instance.updated_at < now - timedelta(seconds=lease_s))),
    )


def new_claim_token() -> str:
    return uuid.uuid4().hex


def claim_for_processing(
    session: Session, *, instance_id: int, lease_s: float, claim_token: str | None = None,
    claimed_by: str | None = None,
) -> bool:
    """Atomically move an instance to ``processing`` under a lease of ``lease_s`` seconds
    held by ``claim_token``; False if another worker holds a live lease on it or it is
    finished. A ``processing`` row whose lease lapsed (its worker stopped renewing it:
    dead, or cut off from the database) is claimed anew, with a new token. A claim
    retried under its own token (the commit went through, its answer was lost) holds."""
    now = utcnow()
    claimable = or_(Instance.status == InstanceStatus.queued, lease_lapsed(now, lease_s))
    if claim_token is not None:
        claimable = or_(claimable, and_(Instance.status == InstanceStatus.processing,
                                        Instance.claim_token == claim_token))
    result = session.execute(
        update(Instance)
        .where(Instance.id == instance_id, claimable)
        .values(
            status=InstanceStatus.processing,
            attempts=Instance.attempts + 1,
            claim_token=claim_token or new_claim_token(),
            claimed_by=claimed_by,
            lease_expires_at=now + timedelta(seconds=lease_s),
            started_at=now,
            updated_at=now,
        )
    )
    return bool(getattr(result, "rowcount", 0))


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
        .where(Instance.claim_token.in_(list(claim_tokens)),
               Instance.status == InstanceStatus.processing)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def requeue_lapsed_claims(session: Session, *, lease_s: float, limit: int = 5000) -> list[int]:
    """Move ``processing`` rows whose lease lapsed back to ``queued`` (their claim void)
    and return their ids, for the caller to send. Compare-and-set: reapers running at
    once in several processes each get distinct rows (each lapsed row is returned once)."""
    now = utcnow()
    lapsed = list(session.scalars(
        select(Instance.id).where(lease_lapsed(now, lease_s)).order_by(Instance.id)
        .limit(limit)))
    if not lapsed:
        return []
    return sorted(session.scalars(
        update(Instance)
        .where(Instance.id.in_(lapsed), lease_lapsed(now, lease_s))
        .values(status=InstanceStatus.queued, claim_token=None, lease_expires_at=None,
                updated_at=now)
        .returning(Instance.id)
        .execution_options(synchronize_session=False)
    ))


def take_queued_for_resend(
    session: Session, *, queued_before: datetime, limit: int = 5000
) -> list[int]:
    """``queued`` rows last touched before ``queued_before`` (their messages were lost
    with the broker's): touched now and returned, for the caller to send again.
    Compare-and-set: workers that notice the loss at once each get distinct rows, and a
    row is re-sent once per loss (touched now, it is no longer before the cut-off)."""
    now = utcnow()
    stale = and_(Instance.status == InstanceStatus.queued, Instance.updated_at < queued_before)
    ids = list(session.scalars(select(Instance.id).where(stale).order_by(Instance.id)
                               .limit(limit)))
    if not ids:
        return []
    return sorted(session.scalars(
        update(Instance).where(Instance.id.in_(ids), stale).values(updated_at=now)
        .returning(Instance.id).execution_options(synchronize_session=False)))


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
        condition = and_(condition, Instance.claim_token == claim_token,
                         Instance.status == InstanceStatus.processing)
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


def time_out_instances(session: Session, *, instance_ids: Sequence[int], max_attempts: int,
                       error_code: str, error_message: str) -> TimedOut:
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
            .values(status=InstanceStatus.queued, error_code=error_code,
                    error_message=error_message[:4000], claim_token=None,
                    lease_expires_at=None, updated_at=now))
    if failed:
        session.execute(
            update(Instance)
            .where(Instance.id.in_(failed), Instance.status == InstanceStatus.processing)
            .values(status=InstanceStatus.failed, error_code=error_code,
                    error_message=error_message[:4000], target_model_version_id=None,
                    claim_token=None, lease_expires_at=None, finished_at=now, updated_at=now))
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
            .values(status=InstanceStatus.queued, claim_token=None, lease_expires_at=None,
                    updated_at=now)
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
    #: The bytes the answer was made on: the instance's ``file_sha256`` when the work was
    #: claimed (``worker.pipeline``). None: the instance's now (no check). Keep it last
    #: (it has a default).
    file_sha256: str | None = None
    #: What a model with orientation and unusual-image heads says (None without them).
    review_reason: str | None = None
    rotation: int | None = None
    mirrored: bool | None = None
    unusual_score: float | None = None


def record_predictions(
    session: Session,
    *,
    model_version_id: int,
    records: Iterable[PredictionRecord],
    worker: str | None,
    result_destinations: Sequence[str] = (),
    claim_token: str | None = None,
) -> int:
    """Insert predictions and mark their instances done; returns rows inserted.

    Each new answer of the model version in service gets one ``outbox`` row per entry of
    ``result_destinations`` (canonical destination URLs, CXR_RESULT_DESTINATIONS), in
    this same transaction: an answer is never recorded without its outgoing reports, nor
    a report queued for an answer that was rolled back. Answers of a version not in
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
    """
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
        condition = and_(condition, Instance.claim_token == claim_token,
                         Instance.status == InstanceStatus.processing)
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
            label=r.label,
            confidence=r.confidence,
            p_frontal=r.p_frontal,
            p_lateral=r.p_lateral,
            header_agrees=r.header_agrees,
            needs_review=r.needs_review,
            review_reason=r.review_reason,
            rotation=r.rotation,
            mirrored=r.mirrored,
            unusual_score=r.unusual_score,
            decode_ms=r.decode_ms,
            inference_ms=r.inference_ms,
            batch_size=r.batch_size,
            worker=worker,
        )
        for r in fresh
    ]
    session.add_all(added)
    session.flush()
    if result_destinations and added and session.scalar(
            select(ModelVersion.is_active).where(ModelVersion.id == model_version_id)):
        add_outbox_messages(session, prediction_ids=[p.id for p in added],
                            destinations=result_destinations)
    return len(fresh)


def held_instance_ids(session: Session, *, claim_token: str,
                      instance_ids: Sequence[int]) -> list[int]:
    """Those of ``instance_ids`` still ``processing`` under ``claim_token``, locked until
    the transaction ends (PostgreSQL): the rows a worker may record outcomes for."""
    if not instance_ids:
        return []
    return sorted(session.scalars(
        select(Instance.id).where(Instance.id.in_(list(instance_ids)),
                                  Instance.claim_token == claim_token,
                                  Instance.status == InstanceStatus.processing)
        .order_by(Instance.id).with_for_update()))


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
    for chunk_start in range(0, len(instance_ids), 5000):
        chunk = instance_ids[chunk_start : chunk_start + 5000]
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


# --- outbox: answers back to PACS ------------------------------------------------


def new_sr_uid() -> str:
    """A fresh DICOM UID for a Structured Report (PS3.5 B.2: 2.25 and a UUID)."""
    return f"2.25.{uuid.uuid4().int}"


def add_outbox_messages(
    session: Session, *, prediction_ids: Sequence[int], destinations: Sequence[str]
) -> int:
    """One pending row per (prediction, destination), one SR UID per prediction (the
    same report goes to every destination); returns rows added."""
    rows = [
        OutboxMessage(prediction_id=pid, destination=dest, sr_sop_instance_uid=uid,
                      status=OutboxStatus.pending, attempts=0, next_attempt_at=utcnow())
        for pid in prediction_ids
        for uid in (new_sr_uid(),)
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
    backing_off = exists().where(OutboxDestination.destination == OutboxMessage.destination,
                                 OutboxDestination.next_attempt_at > now)
    due = and_(OutboxMessage.status == OutboxStatus.pending,
               OutboxMessage.next_attempt_at <= now, ~backing_off)
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
        .values(attempts=OutboxMessage.attempts + 1,
                next_attempt_at=now + timedelta(seconds=lease_s), updated_at=now)
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
    label: str
    confidence: float
    needs_review: bool
    review_reason: str | None
    header_agrees: bool | None
    rotation: int | None
    mirrored: bool | None
    unusual_score: float | None
    model_name: str
    model_architecture: str
    answered_at: datetime


def outbox_work(session: Session, *, outbox_ids: Sequence[int]) -> list[OutboxWork]:
    query = (
        select(OutboxMessage, Prediction, Instance.file_path, Instance.sop_instance_uid,
               ModelVersion.name, ModelVersion.architecture)
        .join(Prediction, Prediction.id == OutboxMessage.prediction_id)
        .join(Instance, Instance.id == Prediction.instance_id)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(OutboxMessage.id.in_(outbox_ids))
        .order_by(OutboxMessage.id)
    )
    return [
        OutboxWork(
            outbox_id=m.id, destination=m.destination, sr_sop_instance_uid=m.sr_sop_instance_uid,
            attempts=m.attempts, prediction_id=p.id, file_path=path, file_sha256=p.file_sha256,
            sop_instance_uid=sop, label=OrientationLabel(p.label).value,
            confidence=p.confidence, needs_review=p.needs_review,
            review_reason=p.review_reason, header_agrees=p.header_agrees,
            rotation=p.rotation, mirrored=p.mirrored, unusual_score=p.unusual_score,
            model_name=name, model_architecture=arch, answered_at=p.created_at,
        )
        for m, p, path, sop, name, arch in session.execute(query)
        for path in (_file_answered(session, p, path),)
    ]


def _file_answered(session: Session, prediction: Prediction, current_path: str) -> str:
    """Where the bytes an answer was made on are: the instance's file, or, when it was
    replaced since (uid conflict under ``replace``), the earlier file its conflict row
    names (the checked read then finds the right bytes, or fails naming the file)."""
    instance_sha = session.scalar(
        select(Instance.file_sha256).where(Instance.id == prediction.instance_id))
    if instance_sha == prediction.file_sha256:
        return current_path
    earlier = session.scalar(
        select(UidConflict.known_file_path)
        .where(UidConflict.instance_id == prediction.instance_id,
               UidConflict.known_file_sha256 == prediction.file_sha256)
        .order_by(UidConflict.id.desc())
        .limit(1))
    return earlier or current_path


def mark_outbox_sent(session: Session, *, outbox_id: int) -> None:
    now = utcnow()
    session.execute(update(OutboxMessage).where(
        OutboxMessage.id == outbox_id, OutboxMessage.status == OutboxStatus.pending).values(
        status=OutboxStatus.sent, sent_at=now, updated_at=now))


def mark_outbox_retry(
    session: Session, *, outbox_id: int, error: str, next_attempt_at: datetime
) -> None:
    """A send that failed and may succeed later: pending again, due at ``next_attempt_at``."""
    session.execute(update(OutboxMessage).where(
        OutboxMessage.id == outbox_id, OutboxMessage.status == OutboxStatus.pending).values(
        last_error=error[:4000], next_attempt_at=next_attempt_at, updated_at=utcnow()))


def release_outbox(
    session: Session, *, outbox_id: int, error: str, next_attempt_at: datetime
) -> None:
    """Give back a claimed row that was not tried (its destination just failed in the
    same run): its attempt is not counted; due at ``next_attempt_at``."""
    session.execute(update(OutboxMessage).where(
        OutboxMessage.id == outbox_id, OutboxMessage.status == OutboxStatus.pending).values(
        attempts=OutboxMessage.attempts - 1, last_error=error[:4000],
        next_attempt_at=next_attempt_at, updated_at=utcnow()))


def mark_outbox_failed(session: Session, *, outbox_id: int, error: str) -> None:
    """A send refused for good (retrying the same object cannot succeed)."""
    session.execute(update(OutboxMessage).where(
        OutboxMessage.id == outbox_id, OutboxMessage.status == OutboxStatus.pending).values(
        status=OutboxStatus.failed, last_error=error[:4000], updated_at=utcnow()))


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
    result = session.execute(update(OutboxMessage).where(condition).values(
        status=OutboxStatus.pending, next_attempt_at=now, updated_at=now))
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
                session.add(OutboxDestination(destination=destination,
                                              consecutive_failures=0, updated_at=now))
        except IntegrityError:
            pass
    failures = int(session.execute(
        update(OutboxDestination).where(OutboxDestination.destination == destination)
        .values(consecutive_failures=OutboxDestination.consecutive_failures + 1,
                last_error=error[:4000], updated_at=now,
                failing_since=func.coalesce(OutboxDestination.failing_since, now))
        .returning(OutboxDestination.consecutive_failures)
        .execution_options(synchronize_session=False)).scalar_one())
    due = now + timedelta(seconds=delay_s(failures))
    session.execute(update(OutboxDestination).where(
        OutboxDestination.destination == destination).values(next_attempt_at=due)
        .execution_options(synchronize_session=False))
    return failures, due


def record_destination_success(session: Session, *, destination: str) -> None:
    """``destination`` stored a report: its backoff ends (no write while it is up)."""
    session.execute(update(OutboxDestination).where(
        OutboxDestination.destination == destination,
        or_(OutboxDestination.consecutive_failures > 0,
            OutboxDestination.next_attempt_at.is_not(None)))
        .values(consecutive_failures=0, next_attempt_at=None, failing_since=None)
        .execution_options(synchronize_session=False))


@dataclass(frozen=True)
class DestinationState:
    destination: str
    consecutive_failures: int
    next_attempt_at: datetime | None
    last_error: str | None
    failing_since: datetime | None


def destination_states(session: Session) -> dict[str, DestinationState]:
    """Destinations that have failed at least once, by URL (their backoff and cause)."""
    return {row.destination: DestinationState(
        row.destination, row.consecutive_failures, row.next_attempt_at, row.last_error,
        row.failing_since) for row in session.scalars(select(OutboxDestination))}


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
    query = (
        select(OutboxMessage.destination, OutboxMessage.status, func.count(),
               func.min(OutboxMessage.created_at))
        .group_by(OutboxMessage.destination, OutboxMessage.status)
    )
    for dest, status, n, first in session.execute(query):
        counts.setdefault(dest, {s.value: 0 for s in OutboxStatus})[OutboxStatus(status)] = n
        if OutboxStatus(status) == OutboxStatus.pending:
            oldest[dest] = first
    return [
        OutboxSummary(dest, c["pending"], c["sent"], c["failed"], oldest.get(dest))
        for dest, c in sorted(counts.items())
    ]


def outbox_rows(session: Session, *, prediction_ids: Sequence[int] | None = None
                ) -> list[OutboxMessage]:
    """Outbox rows in id order (all, or those of the given predictions)."""
    query = select(OutboxMessage).order_by(OutboxMessage.id)
    if prediction_ids is not None:
        query = query.where(OutboxMessage.prediction_id.in_(prediction_ids))
    return list(session.scalars(query))


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
    review_reason: str | None
    rotation: int | None
    mirrored: bool | None
    unusual_score: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
                label=OrientationLabel(prediction.label).value if prediction else None,
                confidence=prediction.confidence if prediction else None,
                p_lateral=prediction.p_lateral if prediction else None,
                needs_review=prediction.needs_review if prediction else None,
                header_view=instance.header_view_position,
                header_agrees=prediction.header_agrees if prediction else None,
                model_version=model_name,
                error=error,
                review_reason=prediction.review_reason if prediction else None,
                rotation=prediction.rotation if prediction else None,
                mirrored=prediction.mirrored if prediction else None,
                unusual_score=prediction.unusual_score if prediction else None,
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
        select(Instance.sop_instance_uid, Study.study_instance_uid,
               a.label, a.confidence, b.label, b.confidence)
        .select_from(a)
        .join(b, and_(b.instance_id == a.instance_id, b.model_version_id == version_b_id,
                      b.file_sha256 == a.file_sha256))
        .join(Instance, Instance.id == a.instance_id)
        .outerjoin(Study, Study.id == Instance.study_id)
        .where(a.model_version_id == version_a_id, a.label != b.label)
        .order_by(Instance.id)
    )
    return [
        ChangedAnswer(uid, study, OrientationLabel(la).value, ca, OrientationLabel(lb).value, cb)
        for uid, study, la, ca, lb, cb in session.execute(query)
    ]


# --- study completeness and study answers -----------------------------------------


def touch_study_arrivals(session: Session, *, study_ids: Iterable[int], at: datetime) -> None:
    """Note that instances of these studies arrived ``at`` (their quiet period restarts)."""
    ids = sorted(set(study_ids))
    if ids:
        session.execute(update(Study).where(Study.id.in_(ids)).values(last_arrival_at=at)
                        .execution_options(synchronize_session=False))


def release_waiting(session: Session, *, arrived_before: datetime) -> list[int]:
    """Move the ``waiting`` instances of every study whose last arrival is before
    ``arrived_before`` to ``queued``; the ids moved. One compare-and-set statement: of
    concurrent callers, only the one whose UPDATE flipped a row gets its id (PostgreSQL
    re-checks ``status = 'waiting'`` on a row another transaction changed meanwhile;
    SQLite runs one writer at a time)."""
    now = utcnow()
    quiet = select(Study.id).where(Study.last_arrival_at.is_not(None),
                                   Study.last_arrival_at < arrived_before)
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
        select(func.count(), func.count(func.distinct(Instance.study_id)))
        .where(Instance.status == InstanceStatus.waiting)
    ).one()
    return int(row[0]), int(row[1])


#: The flags a study answer can carry, in the order they are listed.
STUDY_FLAGS = ("no_frontal", "no_lateral", "header_disagreement", "needs_review", "failed")


def record_study_answers(
    session: Session,
    *,
    instance_ids: Sequence[int] = (),
    study_ids: Sequence[int] = (),
) -> int:
    """Add a ``study_answers`` row for each study of ``instance_ids`` (and each of
    ``study_ids``) that has no waiting, queued or processing instance left and whose
    answers differ from its newest row's (by fingerprint); returns rows added.

    Called in the transaction that finished the instances. The studies' rows are locked
    first (PostgreSQL), so of two workers finishing a study's last instances at once the
    second sees the first's commit: the answer is written once, by whichever is last.
    """
    ids = set(study_ids)
    for start in range(0, len(instance_ids), 5000):
        chunk = list(instance_ids[start:start + 5000])
        ids.update(session.scalars(select(Instance.study_id).where(
            Instance.id.in_(chunk), Instance.study_id.is_not(None)).distinct()))
    if not ids:
        return 0
    ordered = sorted(ids)
    session.execute(select(Study.id).where(Study.id.in_(ordered)).order_by(Study.id)
                    .with_for_update())
    busy = set(session.scalars(select(Instance.study_id).where(
        Instance.study_id.in_(ordered), Instance.status.in_(UNFINISHED_STATUSES)).distinct()))
    complete = [i for i in ordered if i not in busy]
    if not complete:
        return 0
    # The current answer's id as a column, then those answers by primary key: joining on
    # the correlated subquery made PostgreSQL evaluate it against every prediction.
    current = current_answer_id().label("answer_id")
    listed = session.execute(
        select(Instance.study_id, Instance.id, Instance.status, current)
        .where(Instance.study_id.in_(complete))
        .order_by(Instance.id)
    ).all()
    answer_ids = [a for *_, a in listed if a is not None]
    details: dict[int, tuple[Any, ...]] = {}
    for start in range(0, len(answer_ids), 5000):
        for row in session.execute(
            select(Prediction.id, Prediction.label, Prediction.needs_review,
                   Prediction.header_agrees, ModelVersion.name)
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(Prediction.id.in_(answer_ids[start:start + 5000]))
        ):
            details[row[0]] = tuple(row[1:])
    answers: dict[int, list[tuple[Any, ...]]] = {i: [] for i in complete}
    for study_id, instance_id, status, answer_id in listed:
        answers[study_id or 0].append(
            (instance_id, status, answer_id, *details.get(answer_id, (None,) * 4)))
    other = aliased(StudyAnswer)
    newest = {
        a.study_id: a
        for a in session.scalars(select(StudyAnswer).where(
            StudyAnswer.study_id.in_(complete),
            StudyAnswer.sequence == select(func.max(other.sequence)).where(
                other.study_id == StudyAnswer.study_id).correlate(StudyAnswer).scalar_subquery(),
        ))
    }
    fresh: list[StudyAnswer] = []
    for study_id, rows in answers.items():
        answer = _study_answer(study_id, rows)
        last = newest.get(study_id)
        if last is not None and last.fingerprint == answer.fingerprint:
            continue
        answer.sequence = 1 if last is None else last.sequence + 1
        fresh.append(answer)
    try:
        with session.begin_nested():
            session.add_all(fresh)
    except IntegrityError:
        # A sequence taken meanwhile (possible on SQLite only: no row lock; PostgreSQL
        # holds the study rows): one at a time, keeping those still free.
        kept = []
        for answer in fresh:
            try:
                with session.begin_nested():
                    session.add(answer)  # transient again after the rollback above
                kept.append(answer)
            except IntegrityError:
                continue
        fresh = kept
    return len(fresh)


def _study_answer(study_id: int, rows: list[tuple[Any, ...]]) -> StudyAnswer:
    """The study answer for a study's (instance id, status, prediction id, label,
    needs_review, header_agrees, model name) rows; ``sequence`` left to the caller."""

    def count(test: Any) -> int:
        return sum(1 for r in rows if test(r))

    done = [r for r in rows if InstanceStatus(r[1]) == InstanceStatus.done and r[2] is not None]
    frontal = sum(1 for r in done if OrientationLabel(r[3]) == OrientationLabel.frontal)
    lateral = sum(1 for r in done if OrientationLabel(r[3]) == OrientationLabel.lateral)
    review = sum(1 for r in done if r[4])
    agrees = sum(1 for r in done if r[5] is True)
    disagrees = sum(1 for r in done if r[5] is False)
    failed = count(lambda r: InstanceStatus(r[1]) == InstanceStatus.failed)
    flags = {"no_frontal": frontal == 0, "no_lateral": lateral == 0,
             "header_disagreement": disagrees > 0, "needs_review": review > 0,
             "failed": failed > 0}
    fingerprint = hashlib.sha256(";".join(
        f"{r[0]},{InstanceStatus(r[1]).value},{r[2] or ''}" for r in rows).encode()).hexdigest()
    return StudyAnswer(
        study_id=study_id,
        fingerprint=fingerprint,
        instance_count=len(rows),
        frontal_count=frontal,
        lateral_count=lateral,
        needs_review_count=review,
        failed_count=failed,
        out_of_scope_count=count(lambda r: InstanceStatus(r[1]) == InstanceStatus.out_of_scope),
        header_agrees_count=agrees,
        header_disagrees_count=disagrees,
        no_frontal=flags["no_frontal"],
        no_lateral=flags["no_lateral"],
        header_disagreement=flags["header_disagreement"],
        flags=",".join(f for f in STUDY_FLAGS if flags[f]) or None,
        model_versions=",".join(sorted({r[6] for r in done if r[6]})) or None,
    )


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
            study_instance_uid=uid, sequence=a.sequence, instance_count=a.instance_count,
            frontal_count=a.frontal_count, lateral_count=a.lateral_count,
            needs_review_count=a.needs_review_count, failed_count=a.failed_count,
            out_of_scope_count=a.out_of_scope_count, header_agrees_count=a.header_agrees_count,
            header_disagrees_count=a.header_disagrees_count, flags=a.flags,
            model_versions=a.model_versions, answered_at=a.created_at,
        )
        for a, uid in session.execute(query)
    ]


def study_answer_history(session: Session, *, study_instance_uid: str) -> list[StudyAnswer]:
    """Every answer row of a study, oldest first."""
    return list(session.scalars(
        select(StudyAnswer).join(Study, Study.id == StudyAnswer.study_id)
        .where(Study.study_instance_uid == study_instance_uid)
        .order_by(StudyAnswer.sequence)))


# --- reclassify ------------------------------------------------------------------


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
    same_study = (ReclassifyRun.study_instance_uid.is_(None) if study_instance_uid is None
                  else ReclassifyRun.study_instance_uid == study_instance_uid)
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
    return list(session.scalars(
        select(ReclassifyRun).where(ReclassifyRun.finished_at.is_(None))
        .order_by(ReclassifyRun.id)
    ))


def reclassify_statuses(*, include_failed: bool) -> list[InstanceStatus]:
    return [InstanceStatus.done, InstanceStatus.failed] if include_failed else [
        InstanceStatus.done]


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
        conditions.append(Instance.study_id == select(Study.id).where(
            Study.study_instance_uid == study_instance_uid).scalar_subquery())
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
    conditions = _reclassify_range(after_id=after_id, up_to_id=up_to_id,
                                   study_instance_uid=study_instance_uid, since=since,
                                   include_failed=include_failed)
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
    conditions = _reclassify_range(after_id=after_id, up_to_id=up_to_id,
                                   study_instance_uid=study_instance_uid, since=since,
                                   include_failed=include_failed)
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
    return session.scalar(
        select(func.count()).select_from(Instance).where(
            Instance.target_model_version_id.is_not(None),
            Instance.status.in_([InstanceStatus.queued, InstanceStatus.processing]),
        )
    ) or 0


def max_instance_id(session: Session) -> int:
    return session.scalar(select(func.max(Instance.id))) or 0


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


def get_model_version(session: Session, *, version_id: int) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


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
    label: OrientationLabel | LabelValue,
    source: str,
    annotator: str | None,
) -> GroundTruthLabel:
    row = GroundTruthLabel(instance_id=instance_id, label=LabelValue(label.value),
                           source=source, annotator=annotator)
    session.add(row)
    return row


def labels_of(session: Session, *, instance_id: int) -> list[GroundTruthLabel]:
    """Every label of an instance, oldest first (the last one counts)."""
    return list(session.scalars(select(GroundTruthLabel)
                                .where(GroundTruthLabel.instance_id == instance_id)
                                .order_by(GroundTruthLabel.id)))


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


# --- health ----------------------------------------------------------------------


def ping(session: Session) -> None:
    """One round trip to the database (readiness checks); raises when it is unreachable."""
    session.execute(select(1)).scalar_one()


# --- api tokens ------------------------------------------------------------------


def add_api_token(
    session: Session, *, name: str, token_sha256: str, scopes: Sequence[str]
) -> ApiToken:
    row = ApiToken(name=name, token_sha256=token_sha256, scopes=",".join(scopes))
    session.add(row)
    session.flush()
    return row


def find_api_token_by_name(session: Session, *, name: str) -> ApiToken | None:
    return session.scalar(select(ApiToken).where(ApiToken.name == name))


def find_api_token_by_hash(session: Session, *, token_sha256: str) -> ApiToken | None:
    return session.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_sha256))


def list_api_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))


def revoke_api_token(session: Session, *, name: str, now: datetime) -> bool:
    """Revoke the named token; False when there is none, or it was revoked already."""
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def touch_api_token(session: Session, *, token_id: int, now: datetime,
                    not_since: datetime) -> None:
    """Record a use, at most once per interval (``last_used_at`` before ``not_since``), so
    that a busy sender does not turn every request into a write."""
    session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id,
               or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < not_since))
        .values(last_used_at=now)
        # No in-Python evaluation against loaded rows (SQLite hands back naive datetimes).
        .execution_options(synchronize_session=False)
    )


# --- spool retention -------------------------------------------------------------


def review_backlog(session: Session) -> int:
    """Instances ``done`` whose current answer needs review and that carry no label yet
    (what a reviewer still has to look at); one query."""
    return int(session.scalar(
        select(func.count()).select_from(Instance).where(
            Instance.status == InstanceStatus.done,
            func.coalesce(_awaiting_review(), false()),
            ~_labelled(),
        )
    ) or 0)


def held_for_delivery() -> Any:
    """EXISTS a pending outbox row for an answer of the instance, correlated to
    ``Instance``: its received file is kept until the report went out, because the SR is
    built from the source file's header when it is sent. A row failed for good no longer
    holds the file (``outbox retry`` of it after a purge fails with ``file_purged``)."""
    return (
        select(OutboxMessage.id)
        .join(Prediction, Prediction.id == OutboxMessage.prediction_id)
        .where(Prediction.instance_id == Instance.id,
               OutboxMessage.status == OutboxStatus.pending)
        .correlate(Instance)
        .exists()
    )


def _awaiting_review() -> Any:
    """The instance's current answer (:func:`current_answer_id`) needs review."""
    return (
        select(Prediction.needs_review)
        .where(Prediction.id == current_answer_id())
        .correlate(Instance)
        .scalar_subquery()
        .is_(true())
    )


def _labelled() -> Any:
    return (
        select(GroundTruthLabel.id)
        .where(GroundTruthLabel.instance_id == Instance.id)
        .correlate(Instance)
        .exists()
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
        ~_labelled(),
        ~func.coalesce(_awaiting_review(), false()),
        ~held_for_delivery(),
    ]


def mark_files_purged(
    session: Session, *, spool_prefix: str, finished_before: datetime, now: datetime,
    after_id: int, limit: int,
) -> list[tuple[int, str]]:
    """Mark the first ``limit`` purgeable instances (:func:`_purgeable`) with an id above
    ``after_id`` as purged at ``now`` and return (id, file_path) of each, in id order.
    The rule is evaluated in the UPDATE itself, so a label, a review flag or a reclassify
    that came meanwhile keeps its file; the caller deletes the files before it commits
    (rows locked meanwhile). A keyset walk: a run reads each instance once, not once per
    chunk."""
    conditions = [Instance.id > after_id,
                  *_purgeable(spool_prefix=spool_prefix, finished_before=finished_before)]
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
            update(Instance).where(Instance.id.in_(instance_ids)).values(file_purged_at=None)
            .execution_options(synchronize_session=False)
        )


def _conflict_unused_file() -> Any:
    """The file of a UID conflict that the instance does not refer to: the new one kept
    out (keep_first), or the old one replaced (replace)."""
    return case((UidConflict.action == UidConflictAction.kept_first,
                 UidConflict.new_file_path), else_=UidConflict.known_file_path)


def mark_conflict_files_purged(
    session: Session, *, spool_prefix: str, created_before: datetime, now: datetime,
    after_id: int, limit: int,
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
            update(UidConflict).where(UidConflict.id.in_(conflict_ids))
            .values(file_purged_at=None).execution_options(synchronize_session=False)
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


# --- users -----------------------------------------------------------------------


def add_user(session: Session, *, username: str, password_hash: str | None,
             role: UserRole) -> User:
    row = User(username=username, password_hash=password_hash, role=role)
    session.add(row)
    session.flush()
    return row


def find_user(session: Session, *, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def get_user(session: Session, *, user_id: int) -> User | None:
    return session.get(User, user_id)


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def set_user_password(session: Session, *, user_id: int, password_hash: str | None) -> None:
    """A new hash (or none); the session epoch moves on, so older cookies stop working."""
    session.execute(update(User).where(User.id == user_id)
                    .values(password_hash=password_hash, session_epoch=User.session_epoch + 1)
                    .execution_options(synchronize_session="fetch"))


def disable_user(session: Session, *, user_id: int, now: datetime) -> None:
    session.execute(update(User).where(User.id == user_id, User.disabled_at.is_(None))
                    .values(disabled_at=now, session_epoch=User.session_epoch + 1)
                    .execution_options(synchronize_session="fetch"))


def end_user_sessions(session: Session, *, user_id: int, epoch: int) -> None:
    """Logout: the epoch moves on if it is still ``epoch`` (the cookie's), so every cookie
    signed before stops working; a cookie of an older epoch changes nothing."""
    session.execute(update(User).where(User.id == user_id, User.session_epoch == epoch)
                    .values(session_epoch=User.session_epoch + 1)
                    .execution_options(synchronize_session="fetch"))


def touch_user_login(session: Session, *, user_id: int, now: datetime) -> None:
    session.execute(update(User).where(User.id == user_id).values(last_login_at=now)
                    .execution_options(synchronize_session=False))


def count_login_failures(session: Session, *, username: str, address: str,
                         since: datetime) -> int:
    return session.scalar(
        select(func.count()).select_from(LoginFailure)
        .where(LoginFailure.username == username, LoginFailure.address == address,
               LoginFailure.created_at >= since)) or 0


def add_login_failure(session: Session, *, username: str, address: str,
                      now: datetime) -> None:
    session.add(LoginFailure(username=username, address=address, created_at=now))


def forget_login_failures(session: Session, *, before: datetime,
                          username: str | None = None, address: str | None = None) -> None:
    """Delete failures older than ``before`` (or, with a username and address, all of that
    pair's: a successful login starts afresh)."""
    query = delete(LoginFailure).where(LoginFailure.created_at < before)
    if username is not None and address is not None:
        query = delete(LoginFailure).where(LoginFailure.username == username,
                                           LoginFailure.address == address)
    session.execute(query.execution_options(synchronize_session=False))


# --- the review queue --------------------------------------------------------------

#: The queue's filters: flagged answers (``needs_review``), answers whose header names
#: the other view, out of scope (refused by the accept policy, or flagged as an unusual
#: image by the model), instances with a uid conflict.
REVIEW_FILTERS = ("flagged", "disagree", "out_of_scope", "uid_conflict")


@dataclass(frozen=True)
class ReviewItem:
    """An instance awaiting review with its current answer (none for a policy refusal).
    No patient identifiers and no UIDs: the page shows and links by internal ids."""

    instance_id: int
    study_id: int | None
    status: str
    modality: str | None
    header_view: str | None
    error_code: str | None
    file_purged: bool
    enqueued_at: datetime
    prediction_id: int | None = None
    label: str | None = None
    confidence: float | None = None
    p_lateral: float | None = None
    header_agrees: bool | None = None
    review_reason: str | None = None
    unusual_score: float | None = None
    model_version: str | None = None
    answered_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _review_item(instance: Instance, prediction: Prediction | None,
                 model_name: str | None) -> ReviewItem:
    answer: dict[str, Any] = {}
    if prediction is not None:
        answer = {
            "prediction_id": prediction.id, "label": OrientationLabel(prediction.label).value,
            "confidence": prediction.confidence, "p_lateral": prediction.p_lateral,
            "header_agrees": prediction.header_agrees, "review_reason": prediction.review_reason,
            "unusual_score": prediction.unusual_score, "model_version": model_name,
            "answered_at": prediction.created_at,
        }
    return ReviewItem(
        instance_id=instance.id, study_id=instance.study_id,
        status=InstanceStatus(instance.status).value, modality=instance.modality,
        header_view=instance.header_view_position, error_code=instance.error_code,
        file_purged=instance.file_purged_at is not None, enqueued_at=instance.enqueued_at,
        **answer)


def _answered_queue(session: Session, condition: Any, *, after: int,
                    limit: int) -> list[tuple[Instance, Prediction, str]]:
    """Current, unlabelled answers meeting ``condition``, in instance order from ``after``.

    Walked in rounds, keyset on ``instance_id`` through the partial indexes on predictions
    (the two common conditions): a round takes the next unlabelled candidates in order,
    then keeps those that are their instance's current answer. One query for all
    of it would leave the order to the planner, which at 100,000 answers chose to check
    every answer's currency before sorting (a second per page, measured)."""
    picked: list[int] = []
    cursor = after
    batch = max(4 * limit, 32)
    labelled = (select(GroundTruthLabel.id)
                .where(GroundTruthLabel.instance_id == Prediction.instance_id)
                .correlate(Prediction).exists())
    while len(picked) < limit:
        candidates = session.execute(
            select(Prediction.instance_id, Prediction.id)
            .where(condition, Prediction.instance_id > cursor, ~labelled)
            .order_by(Prediction.instance_id, Prediction.id)
            .limit(batch)).all()
        if not candidates:
            break
        full = len(candidates) == batch
        if full:  # an instance cut by the limit is taken whole in the next round
            last = candidates[-1][0]
            whole = [c for c in candidates if c[0] != last]
            candidates = whole or candidates
        cursor = candidates[-1][0]
        current: dict[int, int | None] = dict(session.execute(
            select(Instance.id, current_answer_id())
            .where(Instance.id.in_({i for i, _ in candidates}))).all())
        picked += [p for i, p in candidates if current.get(i) == p]
        if not full:
            break
        batch = min(2 * batch, 5000)  # a long reviewed stretch: fewer, larger rounds
    if not picked:
        return []
    rows = session.execute(
        select(Instance, Prediction, ModelVersion.name)
        .join(Prediction, Prediction.instance_id == Instance.id)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Prediction.id.in_(picked[:limit]))
        .order_by(Instance.id))
    return [(i, p, n) for i, p, n in rows]


def review_queue(session: Session, *, kind: str = "flagged", after: int = 0,
                 limit: int = 50) -> list[ReviewItem]:
    """Instances awaiting review (no label yet), oldest (lowest instance id) first, from
    instance id ``after`` on: ``kind`` one of :data:`REVIEW_FILTERS`."""
    if kind not in REVIEW_FILTERS:
        raise ValueError(f"unknown review filter {kind!r}; choose from {REVIEW_FILTERS}")
    if kind == "flagged":
        # "= true" / "= false", not IS: the form the partial indexes' predicates match.
        rows = _answered_queue(session, Prediction.needs_review == true(), after=after,
                               limit=limit)
    elif kind == "disagree":
        rows = _answered_queue(session, Prediction.header_agrees == false(), after=after,
                               limit=limit)
    elif kind == "uid_conflict":
        conflicted = (select(UidConflict.id)
                      .where(UidConflict.instance_id == Prediction.instance_id)
                      .correlate(Prediction).exists())
        rows = _answered_queue(session, conflicted, after=after, limit=limit)
    else:
        unusual = _answered_queue(
            session, and_(Prediction.needs_review == true(),
                          Prediction.review_reason.contains("unusual_image", autoescape=True)),
            after=after, limit=limit)
        refused = (
            select(Instance)
            .where(Instance.status == InstanceStatus.out_of_scope, Instance.id > after,
                   Instance.study_id.is_not(None), ~_labelled())
            .order_by(Instance.id)
            .limit(limit)
        )
        items = [_review_item(i, p, n) for i, p, n in unusual]
        items += [_review_item(i, None, None) for i in session.scalars(refused)]
        return sorted(items, key=lambda item: item.instance_id)[:limit]
    return [_review_item(i, p, n) for i, p, n in rows]


def review_item(session: Session, *, instance_id: int) -> ReviewItem | None:
    """One instance with its current answer, whether or not it awaits review."""
    row = session.execute(
        select(Instance, Prediction, ModelVersion.name)
        .select_from(Instance)
        .outerjoin(Prediction, Prediction.id == current_answer_id())
        .outerjoin(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Instance.id == instance_id)
    ).first()
    if row is None:
        return None
    return _review_item(row[0], row[1], row[2])


# --- audit views -------------------------------------------------------------------


@dataclass(frozen=True)
class VersionCounts:
    name: str
    state: str
    is_active: bool
    answers: int
    needs_review: int
    header_disagrees: int
    activated_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def answers_per_version(session: Session) -> list[VersionCounts]:
    """Every model version with its number of answers, flagged ones and disagreements."""
    query = (
        select(ModelVersion.name, ModelVersion.state, ModelVersion.is_active,
               ModelVersion.activated_at, func.count(Prediction.id),
               func.coalesce(func.sum(case((Prediction.needs_review.is_(true()), 1),
                                           else_=0)), 0),
               func.coalesce(func.sum(case((Prediction.header_agrees.is_(false()), 1),
                                           else_=0)), 0))
        .outerjoin(Prediction, Prediction.model_version_id == ModelVersion.id)
        .group_by(ModelVersion.id)
        .order_by(ModelVersion.id)
    )
    return [VersionCounts(name=n, state=s, is_active=bool(a), activated_at=at, answers=int(c),
                          needs_review=int(r), header_disagrees=int(d))
            for n, s, a, at, c, r, d in session.execute(query)]


@dataclass(frozen=True)
class DailyRates:
    day: str
    answers: int
    needs_review: int
    header_known: int
    header_disagrees: int
    reviewed: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def daily_rates(session: Session, *, since: datetime) -> list[DailyRates]:
    """Per UTC day since ``since``: answers, flagged ones, answers with a header view and
    those disagreeing, and review labels recorded."""
    day = func.date(Prediction.created_at)
    answers = (
        select(day, func.count(),
               func.sum(case((Prediction.needs_review.is_(true()), 1), else_=0)),
               func.sum(case((Prediction.header_agrees.is_not(None), 1), else_=0)),
               func.sum(case((Prediction.header_agrees.is_(false()), 1), else_=0)))
        .where(Prediction.created_at >= since)
        .group_by(day)
    )
    label_day = func.date(GroundTruthLabel.created_at)
    reviews = dict(
        (str(d), int(n)) for d, n in session.execute(
            select(label_day, func.count())
            .where(GroundTruthLabel.source == "review", GroundTruthLabel.created_at >= since)
            .group_by(label_day)))
    rows = {str(d): DailyRates(day=str(d), answers=int(c), needs_review=int(r or 0),
                               header_known=int(k or 0), header_disagrees=int(x or 0),
                               reviewed=reviews.get(str(d), 0))
            for d, c, r, k, x in session.execute(answers)}
    for d, n in reviews.items():
        rows.setdefault(d, DailyRates(day=d, answers=0, needs_review=0, header_known=0,
                                      header_disagrees=0, reviewed=n))
    return [rows[d] for d in sorted(rows)]


def find_study_id(session: Session, *, study_instance_uid: str) -> int | None:
    return session.scalar(select(Study.id).where(Study.study_instance_uid == study_instance_uid))


@dataclass(frozen=True)
class AnswerHistory:
    """An instance of a study with every answer it got and every label."""

    instance_id: int
    status: str
    header_view: str | None
    current_prediction_id: int | None
    answers: list[dict[str, Any]]
    labels: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def study_history(session: Session, *, study_id: int) -> list[AnswerHistory]:
    """Every instance of the study, each with all its answers (oldest first, the current
    one marked) and labels: the audit view of one study. No UIDs."""
    instances = list(session.execute(
        select(Instance, current_answer_id()).where(Instance.study_id == study_id)
        .order_by(Instance.id)))
    ids = [i.id for i, _ in instances]
    answers: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for p, name in session.execute(
            select(Prediction, ModelVersion.name)
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(Prediction.instance_id.in_(ids)).order_by(Prediction.id)):
        answers[p.instance_id].append({
            "prediction_id": p.id, "model_version": name,
            "label": OrientationLabel(p.label).value, "confidence": p.confidence,
            "needs_review": p.needs_review, "review_reason": p.review_reason,
            "header_agrees": p.header_agrees, "created_at": p.created_at})
    labels: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for g in session.scalars(select(GroundTruthLabel)
                             .where(GroundTruthLabel.instance_id.in_(ids))
                             .order_by(GroundTruthLabel.id)):
        labels[g.instance_id].append({
            "label_id": g.id, "label": LabelValue(g.label).value, "source": g.source,
            "annotator": g.annotator, "created_at": g.created_at})
    return [AnswerHistory(instance_id=i.id, status=InstanceStatus(i.status).value,
                          header_view=i.header_view_position, current_prediction_id=current,
                          answers=answers[i.id], labels=labels[i.id])
            for i, current in instances]


def study_answer_rows(session: Session, *, study_id: int) -> list[StudyAnswer]:
    """The study-level answers of a study, oldest first."""
    return list(session.scalars(select(StudyAnswer).where(StudyAnswer.study_id == study_id)
                                .order_by(StudyAnswer.sequence)))


# --- worker heartbeats: who can classify now ------------------------------------------


def record_worker_heartbeat(
    session: Session, *, node: str, pool_processes: int, ready_processes: int,
    ready_at: datetime | None
) -> None:
    """This worker's state, seen now (one row per node name)."""
    row = session.get(WorkerHeartbeat, node)
    if row is None:
        row = WorkerHeartbeat(node=node)
        session.add(row)
    row.pool_processes = pool_processes
    row.ready_processes = ready_processes
    row.ready_at = ready_at
    row.seen_at = utcnow()


def forget_worker(session: Session, *, node: str) -> None:
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.node == node))


#: A worker rewrites its heartbeat at least every 10 s; one older than this is gone.
HEARTBEAT_FRESH_S = 30.0


def ready_workers(session: Session, *, fresh_s: float = HEARTBEAT_FRESH_S) -> list[str]:
    """Nodes seen in the last ``fresh_s`` with a pool process that can classify now."""
    seen_after = utcnow() - timedelta(seconds=fresh_s)
    return list(session.scalars(
        select(WorkerHeartbeat.node)
        .where(WorkerHeartbeat.seen_at > seen_after, WorkerHeartbeat.ready_processes > 0)
        .order_by(WorkerHeartbeat.node)))
