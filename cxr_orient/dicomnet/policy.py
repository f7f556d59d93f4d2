"""The accept policy: which instances are chest radiographs this service labels.

Applied once, by :func:`cxr_orient.ingest.scan_file`, to every DICOM file recorded
(folder ``enqueue``, C-STORE, STOW-RS, DICOMweb pull: all record through
:func:`cxr_orient.ingest.enqueue_paths`), before anything is queued. An instance a rule
refuses is recorded with status ``out_of_scope`` and a message naming the rule and the
value, and is never labelled. The rules, in the order they are checked (the first that
refuses names the instance's reason):

``modality``
    Modality must be one of ``CXR_ACCEPT_MODALITIES`` (default CR, DX); an absent
    Modality (Type 1 in every image IOD) is refused.
``sop_class``
    SOPClassUID (else MediaStorageSOPClassUID) must be one of ``CXR_ACCEPT_SOP_CLASSES``
    (default CR, DX for presentation, DX for processing); an absent one is refused.
``body_part``
    BodyPartExamined must be one of ``CXR_ACCEPT_BODY_PARTS`` (default CHEST, THORAX;
    case-insensitive); absent passes unless ``CXR_ACCEPT_MISSING_BODY_PART=false``.
``image_type``
    ImageType must not hold every value of any pattern of ``CXR_REFUSE_IMAGE_TYPES``
    (default ``DERIVED\\SECONDARY``).

An empty list setting turns its rule off. The policy reads headers only; a file whose
header cannot be read fails earlier, with its own error code.

Before these rules, :func:`check_uids`: the Study, Series and SOP Instance UIDs must be
DICOM UIDs (PS3.5 9.1: digits and dots, components without leading zeros, at most 64
characters). An instance with one that is not is refused as a **failed** instance with
the code ``invalid_uid`` (it is not a chest radiograph out of scope: it is malformed, and
a UID like ``../../x`` must reach neither a study row, nor a path, nor a report sent to
a PACS). :func:`uid_problem` is the one check of a UID's form; STOW-RS also applies it
to the study named in its URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cxr_orient.errors import InvalidUidError
from cxr_orient.imaging import DicomHeader
from cxr_orient.settings import AcceptSettings

__all__ = [
    "OUT_OF_SCOPE",
    "RULES",
    "PolicyRefusal",
    "check_policy",
    "check_uid_values",
    "check_uids",
    "uid_problem",
]

#: The error code an out-of-scope instance is recorded with (its status is the same word).
OUT_OF_SCOPE = "out_of_scope"
RULES = ("modality", "sop_class", "body_part", "image_type")


MAX_UID_LENGTH = 64
_COMPONENT = re.compile(r"0|[1-9][0-9]*")


def uid_problem(uid: str) -> str | None:
    """Why ``uid`` is not a DICOM UID (PS3.5 9.1), in words that do not repeat it (they
    land in logs and rows); None when it is one. A trailing NUL (the padding of an odd
    length) is not part of the value."""
    value = uid.rstrip("\x00")
    if not value:
        return "it is empty"
    if len(value) > MAX_UID_LENGTH:
        return f"it is longer than {MAX_UID_LENGTH} characters"
    for component in value.split("."):
        if not component:
            return "it has an empty component"
        if not _COMPONENT.fullmatch(component):
            if component.isascii() and component.isdigit():
                return "a component has a leading zero"
            return "it holds a character other than digits and dots"
    return None


def check_uid_values(
    *, study: str | None, series: str | None, sop_instance: str | None
) -> InvalidUidError | None:
    """The first of the Study, Series (None: absent, allowed) and SOP Instance UIDs that
    is not a DICOM UID, as the error its instance is refused with; None when all are."""
    for keyword, value in (
        ("StudyInstanceUID", study),
        ("SeriesInstanceUID", series),
        ("SOPInstanceUID", sop_instance),
    ):
        if value is None and keyword == "SeriesInstanceUID":
            continue
        problem = uid_problem(value or "")
        if problem is not None:
            return InvalidUidError(f"{keyword} is not a valid DICOM UID (PS3.5 9.1): {problem}")
    return None


def check_uids(header: DicomHeader) -> InvalidUidError | None:
    """:func:`check_uid_values` of a header (what :func:`cxr_orient.ingest.header_record`
    applies to every instance recorded, whatever the way in)."""
    return check_uid_values(
        study=header.study_instance_uid,
        series=header.series_instance_uid,
        sop_instance=header.sop_instance_uid,
    )


@dataclass(frozen=True)
class PolicyRefusal:
    """Which rule refused an instance, the value it saw (None: absent), and why in words."""

    rule: str
    value: str | None
    message: str

    @property
    def code(self) -> str:
        return OUT_OF_SCOPE


def check_policy(header: DicomHeader, accept: AcceptSettings) -> PolicyRefusal | None:
    """None when the instance is in scope, else the first rule that refuses it."""
    modalities = accept.accept_modalities
    modality = (header.modality or "").upper() or None
    if modalities and modality not in modalities:
        shown = "absent" if modality is None else repr(header.modality)
        return PolicyRefusal(
            "modality",
            header.modality,
            f"modality: Modality {shown} is not one of "
            f"{', '.join(modalities)} (CXR_ACCEPT_MODALITIES)",
        )
    sop_classes = accept.accept_sop_classes
    if sop_classes and header.sop_class_uid not in sop_classes:
        shown = "absent" if header.sop_class_uid is None else header.sop_class_uid
        return PolicyRefusal(
            "sop_class",
            header.sop_class_uid,
            f"sop_class: SOPClassUID {shown} is not an accepted SOP Class (CXR_ACCEPT_SOP_CLASSES)",
        )
    body_parts = accept.accept_body_parts
    body_part = (header.body_part_examined or "").upper() or None
    if body_part is None and body_parts and not accept.accept_missing_body_part:
        return PolicyRefusal(
            "body_part",
            None,
            "body_part: BodyPartExamined is absent (CXR_ACCEPT_MISSING_BODY_PART=false)",
        )
    if body_part is not None and body_parts and body_part not in body_parts:
        return PolicyRefusal(
            "body_part",
            header.body_part_examined,
            f"body_part: BodyPartExamined {header.body_part_examined!r} is "
            f"not one of {', '.join(body_parts)} (CXR_ACCEPT_BODY_PARTS)",
        )
    present = set(header.image_type)
    for pattern in accept.refuse_image_types:
        if set(pattern) <= present:
            value, shown = "\\".join(header.image_type), "\\".join(pattern)
            return PolicyRefusal(
                "image_type",
                value,
                f"image_type: ImageType {value} matches {shown} (CXR_REFUSE_IMAGE_TYPES)",
            )
    return None
