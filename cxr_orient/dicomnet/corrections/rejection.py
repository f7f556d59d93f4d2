"""The rejection note: a Key Object Selection document titled (113001, DCM, "Rejected for
Quality Reasons") in the rejected instances' study, referencing them (IHE IOCM; PS3.3
A.35.4). An IOCM archive that receives it hides what it names; built with highdicom's
KOS (:class:`highdicom.ko.KeyObjectSelectionDocument`), never by hand.

The same builder rejects a replacement later (the reversal): hand it the replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxr_orient import __version__
from cxr_orient.dicomnet.sr import (
    DEVICE_UID,
    MANUFACTURER,
    derived_uid,
    with_type2_attributes,
)

__all__ = [
    "REJECTED_FOR_QUALITY_REASONS",
    "REJECTION_SERIES_NUMBER",
    "build_rejection_note",
    "rejection_note_uid",
    "rejection_series_uid",
]

REJECTED_FOR_QUALITY_REASONS = CodedConcept("113001", "DCM", "Rejected for Quality Reasons")
REJECTION_SERIES_NUMBER = 9903
REJECTION_SERIES_DESCRIPTION = "cxr-orient rejection notes"


def rejection_series_uid(study_instance_uid: str) -> str:
    """cxr-orient's rejection notes of a study: one series per study."""
    return derived_uid("rejection series", study_instance_uid)


def rejection_note_uid(rejected_sop_instance_uids: Sequence[str]) -> str:
    """The note's SOP Instance UID: a function of what it rejects (any order)."""
    return derived_uid("rejection note", *sorted(rejected_sop_instance_uids))


def build_rejection_note(
    rejected: Sequence[Dataset],
    *,
    reason: str,
    decided_by: str,
    decided_at: datetime,
    instance_number: int = 1,
) -> Dataset:
    """The KOS rejecting ``rejected`` (headers of instances of one study; pixels not
    needed) for quality reasons; ``reason`` and ``decided_by`` in words go in its text
    (Key Object Description), ``decided_at`` is its content date and time."""
    if not rejected:
        raise ValueError("a rejection note must name at least one instance")
    # highdicom copies the patient and study modules from the evidence: their Type 2
    # attributes must be there (empty when the instance has none).
    rejected = [with_type2_attributes(ds) for ds in rejected]
    studies = {ds.StudyInstanceUID for ds in rejected}
    if len(studies) != 1:
        raise ValueError(f"a rejection note lies in one study; got {len(studies)}")
    observer = hd.sr.ObserverContext(
        observer_type=CodedConcept.from_code(codes.cid270.Device),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID, name=MANUFACTURER, manufacturer_name=MANUFACTURER
        ),
    )
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTED_FOR_QUALITY_REASONS,
        referenced_objects=rejected,
        observer_device_context=observer,
        description=f"{reason}; decided by {decided_by}"[:1024],
    )
    note: Dataset = hd.ko.KeyObjectSelectionDocument(
        evidence=rejected,
        content=content,
        series_instance_uid=rejection_series_uid(rejected[0].StudyInstanceUID),
        series_number=REJECTION_SERIES_NUMBER,
        sop_instance_uid=rejection_note_uid([ds.SOPInstanceUID for ds in rejected]),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
    )
    note.ContentDate, note.ContentTime = (
        decided_at.strftime("%Y%m%d"),
        decided_at.strftime("%H%M%S"),
    )
    note.SeriesDescription = REJECTION_SERIES_DESCRIPTION
    note.SoftwareVersions = __version__
    return note
