"""STOW-RS in (PS3.18 10.5): each part of a request checked, spooled and recorded, and
the Store Instances Response that tells the sender what became of each.

Framework-free: the HTTP service (``service.routes.stow``) streams the body through
:class:`~cxr_orient.dicomnet.multipart.RelatedStreamReader` and hands each complete part
to :func:`spool_part`, then all of them to :func:`record_parts`, which records the
spooled files through :func:`cxr_orient.dicomnet.receive.record_received` (the one way in,
the same rules as ``enqueue`` and ``listen``).

A part fails alone, with a FailureReason (PS3.4 Annex B storage statuses, as PS3.18
uses them) and one of our error codes; the rest go on:

====================  =======  ==========================================================
what                  reason   code
====================  =======  ==========================================================
larger than allowed   0xA700   ``too_large`` (the worker's largest file, CXR_MAX_PIXELS)
disk full             0xA700   ``out_of_resources``
cut off, not DICOM    0xC000   ``incomplete``, ``not_dicom``, ``truncated``,
                               ``missing_attribute`` ... (the file read's own codes)
a UID malformed       0xC000   ``invalid_uid`` (Study, Series or SOP Instance UID not
                               a DICOM UID, PS3.5 9.1: ``policy.check_uid_values``)
not application/dicom 0xC000   ``unsupported_media_type``
another study         0x0110   ``wrong_study`` (the URL names a study; as Orthanc does)
refused at recording  0x0110   the ingest code (``out_of_scope`` -> 0x0122)
====================  =======  ==========================================================

An instance already recorded with the same bytes, and a uid conflict (recorded in
``uid_conflicts``, handled by CXR_UID_CONFLICT_POLICY), are stored as far as the sender is
concerned: sending again would change nothing.

A part refused before it was spooled is recorded too, not only answered: a ``failed``
instance row with the code above and a message naming the part and its FailureReason,
through the same recording path (``ingest``'s row for a file without a usable header),
as ``listen`` records a dataset it cannot read (C210). Its bytes, when it had any, are
spooled first (under the spool's folder for refused instances, like ``listen``'s) and
the row names that file; a part without bytes (too large, disk full, cut off by the end
of the request) gets a row naming ``stow-rs://<request>/part/<n>`` instead.
"""

from __future__ import annotations

import errno
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset

from cxr_orient.dicomnet.multipart import DICOM_MEDIA_TYPE, Part
from cxr_orient.dicomnet.policy import check_uid_values
from cxr_orient.dicomnet.receive import Received, received_file, record_received
from cxr_orient.dicomnet.spool import SpooledFile, write_instance
from cxr_orient.errors import CxrError, InputError, MissingAttributeError
from cxr_orient.imaging.reading import read_dataset
from cxr_orient.imaging.validation import check_pixel_data_complete
from cxr_orient.ingest import ScannedFile, Sender
from cxr_orient.settings import Settings

__all__ = [
    "CANNOT_UNDERSTAND",
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
    "SOP_CLASS_NOT_SUPPORTED",
    "PartOutcome",
    "RefusedPartError",
    "http_status",
    "record_parts",
    "response_json",
    "spool_part",
]

logger = logging.getLogger(__name__)

OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
#: Ingest refusals with a reason of their own; every other one is a processing failure.
_RECORDING_REASONS = {"out_of_scope": SOP_CLASS_NOT_SUPPORTED}
#: The spool folder of received bytes refused before recording (``listen``'s too).
REFUSED_FOLDER = "unreadable"
_NO_BYTES_KEPT = ("too_large", "out_of_resources", "spool_write_failed")


class RefusedPartError(InputError):
    """A STOW-RS part refused before it was spooled, as recorded against it: its code is
    the part's (``too_large``, ``not_dicom``, ``wrong_study``...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class PartOutcome:
    """What became of one part: spooled (``path``) and then stored, or failed."""

    index: int
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    path: Path | None = None
    failure_reason: int | None = None
    code: str = "stored"
    #: Bytes received for the part (the part's size, also when they were not kept).
    size: int = 0
    #: Why it failed, for its recorded row (no header values: it lands in logs and rows).
    message: str = ""
    #: A refused part's bytes, spooled to be recorded against it.
    refused_file: SpooledFile | None = None

    @property
    def stored(self) -> bool:
        return self.failure_reason is None

    def fail(self, reason: int, code: str, message: str = "") -> PartOutcome:
        self.failure_reason, self.code = reason, code
        self.message = message or _MESSAGES.get(code, "refused")
        return self


_MESSAGES = {
    "too_large": "larger than the worker accepts (CXR_MAX_PIXELS); its bytes were not kept",
    "incomplete": "cut off before its end (no closing boundary)",
    "unsupported_media_type": "not application/dicom",
    "wrong_study": "its StudyInstanceUID is not the study the request's URL names",
    "out_of_resources": "the spool's disk is full; its bytes were not kept",
    "spool_write_failed": "the spool write failed; its bytes were not kept",
    "request_too_large": "the request went over CXR_STOW_MAX_REQUEST_MB here; the rest "
    "of it was not read",
    "bad_multipart": "the multipart body is malformed from here on",
}


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip().rstrip("\x00") if value is not None else ""
    return text or None


def spool_part(part: Part, *, study_instance_uid: str | None, settings: Settings) -> PartOutcome:
    """Check one part (size, media type, a whole readable DICOM file, the URL's study) and
    write it to the spool; never raises for what the part holds. A refused part's bytes
    are spooled apart (``refused_file``), to be recorded against it."""
    outcome = _check_and_spool(part, study_instance_uid=study_instance_uid, settings=settings)
    outcome.size = part.size or len(part.data or b"")
    if not outcome.stored and part.data is not None and outcome.code not in _NO_BYTES_KEPT:
        try:
            outcome.refused_file = write_instance(
                part.data,
                study_instance_uid=REFUSED_FOLDER,
                sop_instance_uid=outcome.sop_instance_uid or "",
                settings=settings,
            )
        except OSError as exc:
            logger.error(
                "STOW-RS part %d: refused part not spooled: %s",
                part.index,
                errno.errorcode.get(exc.errno or 0, type(exc).__name__),
            )
    return outcome


def _check_and_spool(
    part: Part, *, study_instance_uid: str | None, settings: Settings
) -> PartOutcome:
    outcome = PartOutcome(part.index)
    if part.too_large:
        return outcome.fail(OUT_OF_RESOURCES, "too_large")
    if part.incomplete or part.data is None:
        return outcome.fail(CANNOT_UNDERSTAND, "incomplete")
    if part.content_type not in (None, DICOM_MEDIA_TYPE):
        return outcome.fail(CANNOT_UNDERSTAND, "unsupported_media_type")
    shown = Path(f"STOW-RS part {part.index}")
    try:
        # Pixels included: a cut pixel data element is found here, before anything is kept.
        ds = read_dataset(shown, stop_before_pixels=False, data=part.data)
        outcome.sop_class_uid = _text(ds, "SOPClassUID")
        outcome.sop_instance_uid = _text(ds, "SOPInstanceUID")
        outcome.study_instance_uid = _text(ds, "StudyInstanceUID")
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"):
            if _text(ds, keyword) is None:
                raise MissingAttributeError(f"{shown}: {keyword} is missing or empty")
        invalid = check_uid_values(
            study=outcome.study_instance_uid,
            series=_text(ds, "SeriesInstanceUID"),
            sop_instance=outcome.sop_instance_uid,
        )
        if invalid is not None:
            # Not echoed in the response either: a malformed UID goes nowhere.
            outcome.study_instance_uid = outcome.sop_instance_uid = None
            raise invalid
        check_pixel_data_complete(ds, path=shown)
    except CxrError as exc:
        return outcome.fail(CANNOT_UNDERSTAND, exc.code, str(exc))
    except Exception:  # a pydicom bug on crafted bytes must fail this part only
        logger.exception("unexpected error reading %s", shown)
        return outcome.fail(CANNOT_UNDERSTAND, "not_dicom", f"{shown}: not readable as DICOM")
    assert outcome.study_instance_uid is not None and outcome.sop_instance_uid is not None
    if study_instance_uid is not None and outcome.study_instance_uid != study_instance_uid:
        return outcome.fail(PROCESSING_FAILURE, "wrong_study")
    try:
        spooled = write_instance(
            part.data,
            study_instance_uid=outcome.study_instance_uid,
            sop_instance_uid=outcome.sop_instance_uid,
            settings=settings,
        )
    except OSError as exc:
        logger.error(
            "STOW-RS part %d: spool write failed: %s",
            part.index,
            errno.errorcode.get(exc.errno or 0, type(exc).__name__),
        )
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return outcome.fail(OUT_OF_RESOURCES, "out_of_resources")
        return outcome.fail(PROCESSING_FAILURE, "spool_write_failed")
    outcome.path = spooled.path
    return outcome


def record_parts(
    outcomes: Sequence[PartOutcome], *, send: Sender | None, settings: Settings
) -> None:
    """Record every part in one go (one transaction per ingest chunk) and hand the new
    instances to ``send``: a spooled part as any received file (a part refused by the
    recording rules gets its failure), a part refused before spooling as a failed row
    with its code and reason. Database errors propagate (the service answers 503:
    nothing was acknowledged, and a re-send lands on the same spool files)."""
    if not outcomes:
        return
    request = uuid.uuid4().hex
    items: list[Received] = []
    for outcome in outcomes:
        if outcome.stored and outcome.path is not None:
            items.append(outcome.path)
        elif not outcome.stored:
            items.append(_refused_record(outcome, request, settings))
    report = record_received(items, send=send, settings=settings)
    refused = {Path(path): code for path, code, _ in report.refused}
    for outcome in outcomes:
        if outcome.stored and outcome.path is not None:
            code = refused.get(outcome.path.absolute())
            if code is not None:
                outcome.fail(_RECORDING_REASONS.get(code, PROCESSING_FAILURE), code)


def _refused_record(outcome: PartOutcome, request: str, settings: Settings) -> ScannedFile:
    """The failed row of a part refused before spooling: its spooled bytes, or, with none
    kept, a name for the part of this request."""
    error = RefusedPartError(
        outcome.code,
        f"STOW-RS part {outcome.index} refused "
        f"(FailureReason {outcome.failure_reason:04X}, "
        f"{outcome.code}): {outcome.message}",
    )
    if outcome.refused_file is not None:
        return received_file(outcome.refused_file, header=None, error=error, settings=settings)
    return ScannedFile(f"stow-rs://{request}/part/{outcome.index}", "", outcome.size, None, error)


def http_status(outcomes: Sequence[PartOutcome]) -> int:
    """PS3.18 10.5.3: 200 when every instance was stored, 409 when none was, else 202."""
    stored = sum(1 for o in outcomes if o.stored)
    if stored == len(outcomes):
        return 200
    return 409 if stored == 0 else 202


def response_json(outcomes: Sequence[PartOutcome]) -> dict[str, Any]:
    """The Store Instances Response (application/dicom+json): ReferencedSOPSequence for
    the stored, FailedSOPSequence with FailureReason for the rest."""
    response = Dataset()
    referenced, failed = [], []
    for outcome in outcomes:
        item = Dataset()
        item.ReferencedSOPClassUID = outcome.sop_class_uid or ""
        item.ReferencedSOPInstanceUID = outcome.sop_instance_uid or ""
        if outcome.stored:
            referenced.append(item)
        else:
            item.FailureReason = outcome.failure_reason
            failed.append(item)
    if referenced:
        response.ReferencedSOPSequence = referenced
    if failed:
        response.FailedSOPSequence = failed
    return response.to_json_dict()
