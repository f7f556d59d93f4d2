"""A correction's objects as sent, built again from its audit row and the original's
file every time the outbox tries it (the builders are deterministic: the same row gives
the same objects, UIDs included, so a re-send is stored once):

- a correction: the corrected replacement, then the rejection note of the original
  (IHE IOCM: the replacement is stored before the note hides the original);
- a reversal: the rejection note of the earlier correction's replacement (rebuilt from
  the original to be named).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydicom.dataset import Dataset

from cxr_orient.dicomnet.corrections.geometry import Turn
from cxr_orient.dicomnet.corrections.rejection import build_rejection_note
from cxr_orient.dicomnet.corrections.replacement import Correction, build_corrected_image
from cxr_orient.errors import CorrectionError
from cxr_orient.imaging.reading import inflated_size_limit, read_dataset
from cxr_orient.intake import read_checked
from cxr_orient.settings import IntakeSettings
from db.crud import CorrectionRecord, CorrectionWork
from db.models import CorrectionAction

__all__ = ["correction_objects", "replacement_of"]


def _utc(when: datetime) -> datetime:
    # SQLite gives back naive datetimes: the row was written in UTC.
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def replacement_of(original: Dataset, record: CorrectionRecord) -> Dataset:
    """The replacement a correction row describes (the one its delivery sent)."""
    return build_corrected_image(
        original,
        Correction(
            Turn(record.rotation, record.mirrored),
            record.view,
            record.decided_by,
            _utc(record.decided_at),
        ),
    )


def correction_objects(work: CorrectionWork, intake: IntakeSettings) -> list[Dataset]:
    """The objects of one correction outbox row, in the order they must be stored.
    Raises an :class:`~cxr_orient.errors.InputError` when the original's file is gone or
    changed, a :class:`CorrectionError` when it cannot be corrected."""
    record = work.correction
    checked = read_checked(work.file_path, expected_sha256=record.file_sha256, intake=intake)
    original = read_dataset(
        checked.real,
        stop_before_pixels=False,
        data=checked.data,
        inflate_limit=inflated_size_limit(intake.max_pixels),
    )
    if original.SOPInstanceUID != record.original_sop_instance_uid:
        raise CorrectionError(
            f"{work.file_path!r} holds {original.SOPInstanceUID}, not the "
            f"corrected original {record.original_sop_instance_uid}"
        )
    if record.action == CorrectionAction.correct:
        replacement = replacement_of(original, record)
        note = build_rejection_note(
            [original],
            reason=f"corrected by cxr-orient ({record.faults}); replaced by "
            f"{replacement.SOPInstanceUID}",
            decided_by=record.decided_by,
            decided_at=_utc(record.decided_at),
        )
        return [replacement, note]
    if work.reversed is None:
        raise CorrectionError(f"reversal {work.correction_id} names no correction")
    replacement = replacement_of(original, work.reversed)
    note = build_rejection_note(
        [replacement],
        reason=f"correction reversed: {record.reason or 'no reason given'}",
        decided_by=record.decided_by,
        decided_at=_utc(record.decided_at),
    )
    return [note]
