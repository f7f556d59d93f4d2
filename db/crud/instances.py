"""Studies and instances: recording what was received, uid conflicts, files refused at ingest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.crud.common import UID_CHUNK, chunked
from db.models import Instance, InstanceStatus, Study, UidConflict, UidConflictAction, utcnow


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
    for chunk in chunked(uids, UID_CHUNK):
        for study in session.scalars(select(Study).where(Study.study_instance_uid.in_(chunk))):
            found[study.study_instance_uid] = study
    missing = [
        Study(study_instance_uid=uid, patient_id=studies[uid]) for uid in uids if uid not in found
    ]
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
                found[uid] = get_or_create_study(
                    session, study_instance_uid=uid, patient_id=studies[uid]
                )
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
    manufacturer: str | None = None
    manufacturer_model: str | None = None


def add_instances(session: Session, *, new: Sequence[NewInstance]) -> list[tuple[Instance, bool]]:
    """:func:`add_instance` for instances whose UIDs the caller has just found unknown in
    this transaction: inserted together (one savepoint, not one each); when one of them
    was recorded meanwhile (by another ingest, or twice in ``new``), one by one. Returns
    (instance, created) in the order of ``new``."""
    rows = [
        Instance(
            study_id=n.study.id,
            sop_instance_uid=n.sop_instance_uid,
            series_instance_uid=n.series_instance_uid,
            file_path=n.file_path,
            file_sha256=n.file_sha256,
            file_size=n.file_size,
            modality=n.modality,
            transfer_syntax_uid=n.transfer_syntax_uid,
            header_view_position=n.header_view_position,
            manufacturer=n.manufacturer,
            manufacturer_model=n.manufacturer_model,
            status=n.status,
            error_code=n.error_code,
            error_message=n.error_message,
            finished_at=utcnow() if n.status == InstanceStatus.out_of_scope else None,
        )
        for n in new
    ]
    if len({n.sop_instance_uid for n in new}) == len(new):
        try:
            with session.begin_nested():
                session.add_all(rows)
            return [(row, True) for row in rows]
        except IntegrityError:
            pass
    return [
        add_instance(
            session,
            study=n.study,
            sop_instance_uid=n.sop_instance_uid,
            series_instance_uid=n.series_instance_uid,
            file_path=n.file_path,
            file_sha256=n.file_sha256,
            file_size=n.file_size,
            modality=n.modality,
            transfer_syntax_uid=n.transfer_syntax_uid,
            header_view_position=n.header_view_position,
            status=n.status,
            manufacturer=n.manufacturer,
            manufacturer_model=n.manufacturer_model,
            error_code=n.error_code,
            error_message=n.error_message,
        )
        for n in new
    ]


def get_instance(session: Session, *, instance_id: int) -> Instance | None:
    return session.get(Instance, instance_id)


def find_instance_by_uid(session: Session, *, sop_instance_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def find_instances_by_uids(
    session: Session, *, sop_instance_uids: Sequence[str]
) -> dict[str, Instance]:
    """The recorded instances among ``sop_instance_uids``, by UID (one query per 500)."""
    found: dict[str, Instance] = {}
    uids = list(dict.fromkeys(sop_instance_uids))
    for chunk in chunked(uids, UID_CHUNK):
        for instance in session.scalars(
            select(Instance).where(Instance.sop_instance_uid.in_(chunk))
        ):
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
    manufacturer: str | None = None,
    manufacturer_model: str | None = None,
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
        manufacturer=manufacturer,
        manufacturer_model=manufacturer_model,
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
    manufacturer: str | None = None,
    manufacturer_model: str | None = None,
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
            manufacturer=manufacturer,
            manufacturer_model=manufacturer_model,
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
        Instance.file_path.startswith(prefix, autoescape=True)
    )
    conflicts = select(UidConflict.new_file_path).where(
        UidConflict.new_file_path.startswith(prefix, autoescape=True)
    )
    return set(session.scalars(instances)) | set(session.scalars(conflicts))


def known_sop_instance_uids(session: Session, *, sop_instance_uids: Sequence[str]) -> set[str]:
    """Those of ``sop_instance_uids`` that are recorded (a pull skips them)."""
    found: set[str] = set()
    uids = list(dict.fromkeys(sop_instance_uids))
    for chunk in chunked(uids, UID_CHUNK):
        found.update(
            session.scalars(
                select(Instance.sop_instance_uid).where(Instance.sop_instance_uid.in_(chunk))
            )
        )
    return found
