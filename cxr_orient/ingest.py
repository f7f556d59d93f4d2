"""Ingest: find DICOM files, record every one in the database, queue the work.

Headers only are read here; pixels are decoded by the workers. Enqueueing is
idempotent by SOPInstanceUID: a file whose instance is already recorded adds
nothing. A file that cannot be ingested (outside the ingest root, unreadable,
not DICOM, no UIDs) is recorded as a failed instance with its reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cxr_orient.errors import (
    CxrError,
    FileMissingError,
    ImageTooLargeError,
    PathNotAllowedError,
)
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


def read_file_bounded(real: Path, *, shown: str, max_pixels: int) -> bytes:
    """A file's bytes, read whole (to hash, then parse from memory); refused unread when
    it is larger than the biggest image accepted, stored raw at 16 bits, plus headroom."""
    try:
        file_size = real.stat().st_size
        if file_size > 2 * max_pixels + (64 << 20):
            raise ImageTooLargeError(
                f"file {shown!r} is {file_size} bytes, more than an image of "
                f"CXR_MAX_PIXELS={max_pixels} can need"
            )
        return real.read_bytes()
    except FileNotFoundError as exc:
        raise FileMissingError(f"file {shown!r} vanished before it could be read") from exc
    except OSError as exc:
        raise FileMissingError(f"file {shown!r} cannot be read: {exc.strerror or exc}") from exc


def resolve_ingest_path(file_path: str | Path, ingest_root: Path) -> Path:
    """The real path of a file, refused unless it lies under the ingest root.

    The one rule for ingest and workers alike: no '..' in the path, and the path
    with every symlink followed must be inside ``CXR_INGEST_ROOT``.
    """
    path = Path(file_path)
    if ".." in path.parts:
        raise PathNotAllowedError(f"path {str(file_path)!r} contains '..'")
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError as exc:
        raise FileMissingError(f"file {str(file_path)!r} does not exist") from exc
    except OSError as exc:
        raise FileMissingError(f"file {str(file_path)!r} cannot be resolved: {exc}") from exc
    if not real.is_relative_to(ingest_root):
        raise PathNotAllowedError(
            f"file {str(file_path)!r} resolves outside CXR_INGEST_ROOT ({ingest_root})"
        )
    return real


def _checked_path(path: Path, ingest_root: Path) -> Path:
    absolute = path.expanduser().absolute()
    real = resolve_ingest_path(absolute, ingest_root)
    if not real.is_file():
        raise FileMissingError(f"{str(path)!r} is not a regular file")
    return absolute


@dataclass(frozen=True)
class _Scanned:
    path: str
    sha256: str
    size: int
    header: object | None  # cxr_orient.imaging.DicomHeader
    error: CxrError | None


def _scan(path: Path, settings: Settings) -> _Scanned:
    from cxr_orient.imaging import read_header

    try:
        checked = _checked_path(path, settings.ingest_root)
    except CxrError as exc:
        return _Scanned(str(path.expanduser().absolute()), "", 0, None, exc)
    sha256, size = "", 0
    try:
        data = read_file_bounded(checked, shown=str(path), max_pixels=settings.max_pixels)
        sha256, size = hashlib.sha256(data).hexdigest(), len(data)
        header = read_header(checked, data=data)
    except CxrError as exc:
        return _Scanned(str(checked), sha256, size, None, exc)
    return _Scanned(str(checked), sha256, size, header, None)


def _record_chunk(scanned: Sequence[_Scanned], report: EnqueueReport) -> list[int]:
    from cxr_orient.imaging import DicomHeader

    new_ids: list[int] = []
    with session_scope() as session:
        # Grouped by study so that a study's instances travel (and finish) together.
        ordered = sorted(
            scanned,
            key=lambda s: (
                s.header.study_instance_uid if isinstance(s.header, DicomHeader) else "",
                s.path,
            ),
        )
        for item in ordered:
            if item.error is not None or not isinstance(item.header, DicomHeader):
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


def enqueue_paths(
    paths: Sequence[Path],
    *,
    settings: Settings | None = None,
    on_file: Callable[[], None] | None = None,
    send: bool = True,
) -> EnqueueReport:
    """Record every DICOM file under ``paths`` and queue one classification per new instance.

    Work is sent after its rows are committed, chunk by chunk, so workers start
    on the first studies while later folders are still being read.
    """
    from worker.requeue import send_instances

    settings = settings or get_settings()
    report = EnqueueReport()
    chunk: list[_Scanned] = []

    def flush() -> None:
        new_ids = _record_chunk(chunk, report)
        report.queued.extend(new_ids)
        if send:
            send_instances(new_ids)
        chunk.clear()

    for path in iter_files(paths):
        report.files += 1
        chunk.append(_scan(path, settings))
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
