"""The one way in for instances received over the network: spooled files are recorded
through :func:`cxr_orient.ingest.enqueue_scanned`, exactly like files found on disk, so
that the accept policy, the UID-conflict rule and the refusal codes are the same whatever
the source (C-STORE, STOW-RS, DICOMweb pull). Received instances are held for their
study's quiet period (``hold=True``, :mod:`cxr_orient.studies`): a sender may still be
sending the rest of the study.

A source that has just written an instance to the spool knows what :func:`scan_file`
would find there (it hashed the bytes to name the file and parsed the header to place
it): :func:`received_file` makes that record without reading the file back, so a
received instance is read, hashed and parsed once. A bare path (the startup sweep, a
source that does not parse) is scanned as ``enqueue`` scans it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from cxr_orient.dicomnet.spool import SpooledFile
from cxr_orient.errors import CxrError
from cxr_orient.imaging import DicomHeader
from cxr_orient.ingest import (
    EnqueueReport,
    ScannedFile,
    Sender,
    enqueue_scanned,
    header_record,
    scan_file,
)
from cxr_orient.intake import resolve_ingest_path
from cxr_orient.settings import Settings

__all__ = ["Received", "received_file", "record_received"]

#: What a network source hands to :func:`record_received`: a spooled path, or the
#: record of a file it has just spooled (:func:`received_file`).
Received = Path | ScannedFile


def received_file(
    spooled: SpooledFile, *, header: DicomHeader | None, error: CxrError | None, settings: Settings
) -> ScannedFile:
    """The ingest record of an instance the spool has just written, as :func:`scan_file`
    would make it: the same confinement rule, the spool's SHA-256 and size of the bytes
    written, the header parsed once from those bytes (or why it could not be), and
    :func:`cxr_orient.ingest.header_record`'s verdict on it (UIDs, accept policy)."""
    path = spooled.path.absolute()
    try:
        resolve_ingest_path(path, settings.intake.ingest_root)
    except CxrError as exc:
        return ScannedFile(str(path), spooled.sha256, spooled.size, None, exc)
    if header is None:
        return ScannedFile(
            str(path), spooled.sha256, spooled.size, None, error or CxrError("no header")
        )
    return header_record(str(path), spooled.sha256, spooled.size, header, settings)


def record_received(
    items: Sequence[Received], *, send: Sender | None, settings: Settings, hold: bool = True
) -> EnqueueReport:
    """Record spooled files (each already durable on disk), held ``waiting`` until their
    study is quiet (``CXR_STUDY_QUIET_S``; with 0 the new instances go to ``send``,
    ``worker.dispatch.send_instances`` in the network processes, at once).

    ``hold=False`` is for a source that knows its studies are whole when it records them:
    ``pull`` retrieves what the PACS already holds, study by study (like a folder walk,
    and a short-lived command with no release sweep of its own), so it sends at once."""

    def scanned() -> Iterator[ScannedFile]:
        for item in items:
            yield item if isinstance(item, ScannedFile) else scan_file(item, settings)

    return enqueue_scanned(scanned(), send=send, settings=settings, hold=hold)
