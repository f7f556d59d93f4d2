"""Ingest: find DICOM files, record every one in the database, queue the work.

Headers only are read here; pixels are decoded by the workers. Enqueueing is
idempotent by SOPInstanceUID: a file whose instance is already recorded adds
nothing. A file that cannot be ingested (outside the ingest root, unreadable,
not DICOM, no UIDs) is recorded as a failed instance with its reason.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cxr_orient.errors import CxrError
from cxr_orient.imaging import DicomHeader, read_header
from cxr_orient.intake import read_for_ingest
from cxr_orient.settings import Settings, get_settings
from db import crud
from db.session import session_scope

logger = logging.getLogger(__name__)

CHUNK = 500


@dataclass
class EnqueueReport:
    files: int = 0
    queued: list[int] = field(default_factory=list)
    already_known: list[int] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # path, code, message
    refused_ids: list[int] = field(default_factory=list)  # their failed instance rows
    studies: set[str] = field(default_factory=set)

    @property
    def instance_ids(self) -> list[int]:
        """Every instance this call is about: new, known, and refused ones."""
        return [*self.queued, *self.already_known, *self.refused_ids]


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
    """One file as ingest saw it: its header, or why it was refused (never both)."""

    path: str
    sha256: str
    size: int
    header: DicomHeader | None
    error: CxrError | None


def scan_file(path: Path, settings: Settings) -> ScannedFile:
    """The checked read (:func:`cxr_orient.intake.read_for_ingest`) and the header of one
    file; a refusal is returned with its error, never raised."""
    try:
        checked = read_for_ingest(path, settings)
    except CxrError as exc:
        return ScannedFile(str(path.expanduser().absolute()), "", 0, None, exc)
    try:
        header = read_header(checked.path, data=checked.data)
    except CxrError as exc:
        return ScannedFile(str(checked.path), checked.sha256, len(checked.data), None, exc)
    return ScannedFile(str(checked.path), checked.sha256, len(checked.data), header, None)


def _record_chunk(scanned: Sequence[ScannedFile], report: EnqueueReport) -> list[int]:
    new_ids: list[int] = []
    with session_scope() as session:
        # Grouped by study so that a study's instances travel (and finish) together.
        ordered = sorted(
            scanned,
            key=lambda s: (
                s.header.study_instance_uid if s.header is not None else "",
                s.path,
            ),
        )
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
            header = item.header
            study = crud.get_or_create_study(
                session, study_instance_uid=header.study_instance_uid, patient_id=header.patient_id
            )
            report.studies.add(header.study_instance_uid)
            instance, created = crud.add_instance(
                session,
                study=study,
                sop_instance_uid=header.sop_instance_uid,
                series_instance_uid=header.series_instance_uid,
                file_path=item.path,
                file_sha256=item.sha256,
                file_size=item.size,
                modality=header.modality,
                transfer_syntax_uid=header.transfer_syntax_uid,
                header_view_position=header.view_position,
            )
            if created:
                new_ids.append(instance.id)
            else:
                report.already_known.append(instance.id)
    return new_ids


#: Sends one classification per instance id (``worker.dispatch.send_instances``).
Sender = Callable[[Sequence[int]], object]


def enqueue_paths(
    paths: Sequence[Path],
    *,
    send: Sender | None,
    settings: Settings | None = None,
    on_file: Callable[[], None] | None = None,
) -> EnqueueReport:
    """Record every DICOM file under ``paths`` and hand each new instance's id to ``send``
    (``None``: record only, e.g. when the work is sent later by other means).

    Work is sent after its rows are committed, chunk by chunk, so workers start
    on the first studies while later folders are still being read.
    """
    settings = settings or get_settings()
    report = EnqueueReport()
    chunk: list[ScannedFile] = []

    def flush() -> None:
        new_ids = _record_chunk(chunk, report)
        report.queued.extend(new_ids)
        if send is not None and new_ids:
            send(new_ids)
        chunk.clear()

    for path in iter_files(paths):
        report.files += 1
        chunk.append(scan_file(path, settings))
        if on_file is not None:
            on_file()
        if len(chunk) >= CHUNK:
            flush()
    if chunk:
        flush()
    logger.info(
        "enqueue: %d files, %d new instances, %d already known, %d refused",
        report.files,
        len(report.queued),
        len(report.already_known),
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
    """Block until none of ``instance_ids`` is queued or processing; False on timeout."""
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
