"""Ingest: find DICOM files, record every one in the database, queue the work.

Headers only are read here; pixels are decoded by the workers. Enqueueing is
idempotent by SOPInstanceUID: a file whose instance is already recorded with the
same bytes (sha256; under any path) adds nothing ("already known"). A file with a
known SOPInstanceUID and other bytes is a **uid conflict** (a ``uid_conflicts`` row):
``CXR_UID_CONFLICT_POLICY=keep_first`` leaves the instance as it is, ``replace``
points the instance at the new file and queues it again (its earlier answers stay);
a file naming another study than the instance's is never moved there. A file that
cannot be ingested (outside the ingest root, unreadable, not DICOM, no UIDs) is
recorded as a failed instance with its reason.

The accept policy (:mod:`cxr_orient.dicomnet.policy`) is applied here, in
:func:`scan_file`, for every source: an instance it refuses (a CT slice, an MR, a
screenshot) is recorded ``out_of_scope`` with the rule and value in its message, and is
never queued. With ``hold`` (network sources) new instances are recorded ``waiting`` and
their study's last arrival noted; :func:`cxr_orient.studies.release_quiet_studies` queues
them once the study is quiet (``CXR_STUDY_QUIET_S``). A folder is not held: it is
complete when the walk returns, and its studies are grouped within each chunk.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from cxr_orient.dicomnet.policy import PolicyRefusal, check_policy, check_uids
from cxr_orient.errors import CxrError
from cxr_orient.imaging import DicomHeader, read_header
from cxr_orient.intake import read_for_ingest
from cxr_orient.settings import Settings
from cxr_orient.studies import record_study_answers
from db import crud
from db.models import Instance, InstanceStatus, UidConflictAction, utcnow
from db.session import session_scope

logger = logging.getLogger(__name__)

CHUNK = 500


@dataclass(frozen=True)
class UidConflictEntry:
    """A file whose SOPInstanceUID was recorded with other bytes: its ``uid_conflicts``
    row, and what was done (``kept_first``: not queued; ``replaced``: the instance now
    refers to this file and is queued again)."""

    path: str
    sop_instance_uid: str
    instance_id: int
    conflict_id: int
    action: str
    study_matches: bool
    #: False: the same conflict was recorded by an earlier enqueue (no new row).
    first_seen: bool


@dataclass
class EnqueueReport:
    """Each file lands in one list: queued (new instances), held (new instances waiting
    for their study's quiet period), already_known, uid_conflicts, out_of_scope (refused
    by the accept policy) or refused (failed: no usable header)."""

    files: int = 0
    queued: list[int] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    out_of_scope: list[tuple[str, str, str]] = field(default_factory=list)  # path, rule, msg
    out_of_scope_ids: list[int] = field(default_factory=list)
    already_known: list[int] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # path, code, message
    refused_ids: list[int] = field(default_factory=list)  # their failed instance rows
    uid_conflicts: list[UidConflictEntry] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)

    @property
    def requeued(self) -> list[int]:
        """Instances whose file was replaced by this call (queued again)."""
        return [
            c.instance_id
            for c in self.uid_conflicts
            if c.action == UidConflictAction.replaced.value
        ]

    @property
    def instance_ids(self) -> list[int]:
        """Every instance this call is about: new (queued or held), known, conflicting,
        out-of-scope and refused ones."""
        conflicting = [c.instance_id for c in self.uid_conflicts]
        return list(
            dict.fromkeys(
                [
                    *self.queued,
                    *self.held,
                    *self.already_known,
                    *conflicting,
                    *self.out_of_scope_ids,
                    *self.refused_ids,
                ]
            )
        )


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named, and files under folders named (recursively, sorted, no hidden ones)."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root) / name
        else:
            yield path


def count_files(paths: Iterable[Path]) -> int:
    return sum(1 for _ in iter_files(paths))


@dataclass(frozen=True)
class ScannedFile:
    """One file as ingest saw it: its header, or why it was refused (never both); with a
    header, the accept policy's refusal when it is out of scope."""

    path: str
    sha256: str
    size: int
    header: DicomHeader | None
    error: CxrError | None
    refusal: PolicyRefusal | None = None


def header_record(
    path: str, sha256: str, size: int, header: DicomHeader, settings: Settings
) -> ScannedFile:
    """The record of a file whose header was read, for every way in (:func:`scan_file`,
    and the network sources through :func:`cxr_orient.dicomnet.receive.received_file`):
    refused (a failed row, ``invalid_uid``) when a UID is malformed
    (:func:`cxr_orient.dicomnet.policy.check_uids`), else with the accept policy's
    verdict."""
    invalid = check_uids(header)
    if invalid is not None:
        return ScannedFile(path, sha256, size, None, invalid)
    return ScannedFile(path, sha256, size, header, None, check_policy(header, settings.accept))


def scan_file(path: Path, settings: Settings) -> ScannedFile:
    """The checked read (:func:`cxr_orient.intake.read_for_ingest`), the header of one
    file and the verdict of :func:`header_record` on it; a refusal is returned, never
    raised."""
    try:
        checked = read_for_ingest(path, settings.intake)
    except CxrError as exc:
        return ScannedFile(str(path.expanduser().absolute()), "", 0, None, exc)
    try:
        header = read_header(checked.path, data=checked.data)
    except CxrError as exc:
        return ScannedFile(str(checked.path), checked.sha256, len(checked.data), None, exc)
    return header_record(str(checked.path), checked.sha256, len(checked.data), header, settings)


def _record_known(
    session: Session,
    instance: Instance,
    item: ScannedFile,
    header: DicomHeader,
    policy: str,
    report: EnqueueReport,
    *,
    hold: bool = False,
    tries: int = 3,
) -> bool:
    """A file whose SOPInstanceUID is recorded: the same bytes (already known), or a uid
    conflict recorded and handled by ``policy``. True when the instance was re-queued
    with this file."""
    if instance.file_sha256 == item.sha256:
        if instance.file_purged_at is not None:
            # The very bytes of an instance whose received file was purged came again:
            # the file is back on disk and falls under the purge rule anew.
            crud.restore_purged_file(session, instance_id=instance.id, file_path=item.path)
        report.already_known.append(instance.id)
        report.studies.add(header.study_instance_uid)
        return False
    study = (
        None if instance.study_id is None else crud.get_study(session, study_id=instance.study_id)
    )
    known_study = study.study_instance_uid if study is not None else None
    if known_study is not None:
        report.studies.add(known_study)
    study_matches = known_study == header.study_instance_uid
    known_status = InstanceStatus(instance.status)
    known = (instance.file_path, instance.file_sha256, instance.file_size)
    action = UidConflictAction.kept_first
    if not study_matches:
        detail = (
            f"the file names study {header.study_instance_uid}, the instance belongs "
            f"to study {known_study}: a UID clash across studies; the instance is not "
            "moved and keeps its file and answers, whatever the policy"
        )
    elif policy == "keep_first":
        detail = (
            "keep_first: the new file is not queued; the instance keeps its file and its answers"
        )
    elif crud.replace_instance_file(
        session,
        instance_id=instance.id,
        expected_sha256=instance.file_sha256,
        file_path=item.path,
        file_sha256=item.sha256,
        file_size=item.size,
        series_instance_uid=header.series_instance_uid,
        modality=header.modality,
        transfer_syntax_uid=header.transfer_syntax_uid,
        header_view_position=header.view_position,
        manufacturer=header.manufacturer,
        manufacturer_model=header.manufacturer_model,
        status=InstanceStatus.waiting if hold else InstanceStatus.queued,
    ):
        action = UidConflictAction.replaced
        detail = (
            f"replace: the instance (was {known_status.value}) now refers to the new "
            "file and is queued again; its earlier answers stay, made on the known bytes"
        )
        if known_status == InstanceStatus.processing:
            detail += "; the answer in flight on the known bytes is not recorded"
    elif tries > 1:
        # Another enqueue replaced the file meanwhile: decide again against the new one.
        session.refresh(instance)
        return _record_known(
            session, instance, item, header, policy, report, hold=hold, tries=tries - 1
        )
    else:
        detail = "replace: lost repeated races with other enqueues; the instance is unchanged"
    conflict, created = crud.add_uid_conflict(
        session,
        instance_id=instance.id,
        known_status=known_status,
        study_instance_uid=header.study_instance_uid,
        study_matches=study_matches,
        known_file_path=known[0],
        known_file_sha256=known[1],
        known_file_size=known[2],
        new_file_path=item.path,
        new_file_sha256=item.sha256,
        new_file_size=item.size,
        policy=policy,
        action=action,
        detail=detail,
    )
    logger.warning("uid conflict on instance %d: %s", instance.id, detail)
    report.uid_conflicts.append(
        UidConflictEntry(
            path=item.path,
            sop_instance_uid=header.sop_instance_uid,
            instance_id=instance.id,
            conflict_id=conflict.id,
            action=action.value,
            study_matches=study_matches,
            first_seen=created,
        )
    )
    return action == UidConflictAction.replaced


def _record_chunk(
    scanned: Sequence[ScannedFile], report: EnqueueReport, policy: str, *, hold: bool = False
) -> tuple[list[int], list[int]]:
    """Record one chunk in one transaction; (new instance ids, re-queued instance ids),
    each ``waiting`` instead of ``queued`` with ``hold``."""
    new_ids: list[int] = []
    requeued: list[int] = []
    arrived: set[int] = set()  # studies whose quiet period restarts
    finished: set[int] = set()  # studies given an out-of-scope instance
    with session_scope() as session:
        # Grouped by study so that a study's instances travel (and finish) together.
        ordered = sorted(
            scanned,
            key=lambda s: (
                s.header.study_instance_uid if s.header is not None else "",
                s.path,
            ),
        )
        # One query for the chunk's known instances, one for its studies, one insert for
        # its new instances (statements per chunk, not per file).
        known_by_uid = crud.find_instances_by_uids(
            session,
            sop_instance_uids=[s.header.sop_instance_uid for s in ordered if s.header is not None],
        )
        fresh: list[ScannedFile] = []
        for item in ordered:
            if item.error is not None or item.header is None:
                error = item.error or CxrError("no header")
                instance, created = crud.add_unreadable_file(
                    session,
                    file_path=item.path,
                    file_sha256=item.sha256,
                    file_size=item.size,
                    error_code=error.code,
                    error_message=str(error),
                )
                report.refused.append((item.path, error.code, str(error)))
                report.refused_ids.append(instance.id)
                continue
            known = known_by_uid.get(item.header.sop_instance_uid)
            if known is None:
                fresh.append(item)
                continue
            # An out-of-scope file never replaces a known instance's file.
            file_policy = policy if item.refusal is None else "keep_first"
            if _record_known(session, known, item, item.header, file_policy, report, hold=hold):
                requeued.append(known.id)
                if hold and known.study_id is not None:
                    arrived.add(known.study_id)
        studies = crud.get_or_create_studies(
            session,
            studies={
                s.header.study_instance_uid: s.header.patient_id
                for s in fresh
                if s.header is not None
            },
        )
        new: list[crud.NewInstance] = []
        for item in fresh:
            assert item.header is not None
            header, refusal = item.header, item.refusal
            new.append(
                crud.NewInstance(
                    study=studies[header.study_instance_uid],
                    sop_instance_uid=header.sop_instance_uid,
                    series_instance_uid=header.series_instance_uid,
                    file_path=item.path,
                    file_sha256=item.sha256,
                    file_size=item.size,
                    modality=header.modality,
                    transfer_syntax_uid=header.transfer_syntax_uid,
                    header_view_position=header.view_position,
                    manufacturer=header.manufacturer,
                    manufacturer_model=header.manufacturer_model,
                    status=(
                        InstanceStatus.out_of_scope
                        if refusal is not None
                        else InstanceStatus.waiting
                        if hold
                        else InstanceStatus.queued
                    ),
                    error_code=None if refusal is None else refusal.code,
                    error_message=None if refusal is None else refusal.message,
                )
            )
        for item, (instance, created) in zip(
            fresh, crud.add_instances(session, new=new), strict=True
        ):
            assert item.header is not None
            header, refusal = item.header, item.refusal
            study = studies[header.study_instance_uid]
            if created:
                report.studies.add(header.study_instance_uid)
                if refusal is not None:
                    logger.info("out of scope: %s: %s", item.path, refusal.message)
                    report.out_of_scope.append((item.path, refusal.rule, refusal.message))
                    report.out_of_scope_ids.append(instance.id)
                    finished.add(study.id)
                else:
                    new_ids.append(instance.id)
                    if hold:
                        arrived.add(study.id)
            elif _record_known(
                session,
                instance,
                item,
                header,
                policy if refusal is None else "keep_first",
                report,
                hold=hold,
            ):
                # recorded meanwhile by another enqueue (or earlier in this chunk)
                requeued.append(instance.id)
                if hold:
                    arrived.add(study.id)
        # Studies last, after every instance row this chunk wrote (the lock order of the
        # worker, which finishes instances and then locks their studies).
        crud.touch_study_arrivals(session, study_ids=arrived, at=utcnow())
        # A study whose last instances are out of scope is complete without the worker.
        record_study_answers(session, study_ids=sorted(finished))
    return new_ids, requeued


#: Sends one classification per instance id (``worker.dispatch.send_instances``).
Sender = Callable[[Sequence[int]], object]


def enqueue_paths(
    paths: Sequence[Path],
    *,
    send: Sender | None,
    settings: Settings,
    on_file: Callable[[], None] | None = None,
    hold: bool = False,
) -> EnqueueReport:
    """Record every DICOM file under ``paths`` and hand each new instance's id to ``send``
    (``None``: record only, e.g. when the work is sent later by other means).

    Work is sent after its rows are committed, chunk by chunk, so workers start
    on the first studies while later folders are still being read. With ``hold`` (the
    network sources, through :func:`cxr_orient.dicomnet.receive.record_received`) and
    ``CXR_STUDY_QUIET_S`` > 0, new instances are recorded ``waiting`` instead and not
    sent: :func:`cxr_orient.studies.release_quiet_studies` sends them once their study
    is quiet.
    """

    def scanned() -> Iterator[ScannedFile]:
        for path in iter_files(paths):
            yield scan_file(path, settings)
            if on_file is not None:
                on_file()

    return enqueue_scanned(scanned(), send=send, settings=settings, hold=hold)


def enqueue_scanned(
    scanned: Iterable[ScannedFile],
    *,
    send: Sender | None,
    settings: Settings,
    hold: bool = False,
) -> EnqueueReport:
    """:func:`enqueue_paths` for files already scanned: each :class:`ScannedFile` as
    :func:`scan_file` makes it (a network source that has just written the bytes, hashed
    them and parsed their header builds the same record without reading the file again:
    :func:`cxr_orient.dicomnet.receive.received_file`). Recorded chunk by chunk, the same
    rows and rules as a file found on disk."""
    policy = settings.intake.uid_conflict_policy
    hold = hold and settings.intake.study_quiet_s > 0
    report = EnqueueReport()
    chunk: list[ScannedFile] = []

    def flush() -> None:
        new_ids, requeued = _record_chunk(chunk, report, policy, hold=hold)
        (report.held if hold else report.queued).extend(new_ids)
        to_send = list(dict.fromkeys([*new_ids, *requeued]))
        if send is not None and to_send and not hold:
            send(to_send)
        chunk.clear()

    for item in scanned:
        report.files += 1
        chunk.append(item)
        if len(chunk) >= CHUNK:
            flush()
    if chunk:
        flush()
    logger.info(
        "enqueue: %d files, %d new instances (%d held), %d already known, %d uid conflicts "
        "(%d replaced), %d out of scope, %d refused",
        report.files,
        len(report.queued) + len(report.held),
        len(report.held),
        len(report.already_known),
        len(report.uid_conflicts),
        len(report.requeued),
        len(report.out_of_scope),
        len(report.refused),
    )
    return report


def wait_for(
    instance_ids: Sequence[int],
    *,
    timeout_s: float | None,
    poll_s: float = 0.5,
    on_poll: Callable[[int], None] | None = None,
) -> bool:
    """Block until none of ``instance_ids`` is waiting, queued or processing; False on
    timeout."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    ids = list(instance_ids)
    while True:
        with session_scope() as session:
            remaining = crud.count_unfinished(session, instance_ids=ids)
        if on_poll is not None:
            on_poll(remaining)
        if remaining == 0:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
