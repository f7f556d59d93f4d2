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
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr_orient.imaging import DicomHeader
from cxr_orient.settings import Settings

__all__ = ["OUT_OF_SCOPE", "RULES", "PolicyRefusal", "check_policy"]

#: The error code an out-of-scope instance is recorded with (its status is the same word).
OUT_OF_SCOPE = "out_of_scope"
RULES = ("modality", "sop_class", "body_part", "image_type")


@dataclass(frozen=True)
class PolicyRefusal:
    """Which rule refused an instance, the value it saw (None: absent), and why in words."""

    rule: str
    value: str | None
    message: str

    @property
    def code(self) -> str:
        return OUT_OF_SCOPE


def _listed(setting: str) -> list[str]:
    return [v for v in setting.split(",") if v]


def check_policy(header: DicomHeader, settings: Settings) -> PolicyRefusal | None:
    """None when the instance is in scope, else the first rule that refuses it."""
    modalities = _listed(settings.accept_modalities)
    modality = (header.modality or "").upper() or None
    if modalities and modality not in modalities:
        shown = "absent" if modality is None else repr(header.modality)
        return PolicyRefusal("modality", header.modality,
                             f"modality: Modality {shown} is not one of "
                             f"{', '.join(modalities)} (CXR_ACCEPT_MODALITIES)")
    sop_classes = _listed(settings.accept_sop_classes)
    if sop_classes and header.sop_class_uid not in sop_classes:
        shown = "absent" if header.sop_class_uid is None else header.sop_class_uid
        return PolicyRefusal("sop_class", header.sop_class_uid,
                             f"sop_class: SOPClassUID {shown} is not an accepted SOP Class "
                             "(CXR_ACCEPT_SOP_CLASSES)")
    body_parts = _listed(settings.accept_body_parts)
    body_part = (header.body_part_examined or "").upper() or None
    if body_part is None and body_parts and not settings.accept_missing_body_part:
        return PolicyRefusal("body_part", None,
                             "body_part: BodyPartExamined is absent "
                             "(CXR_ACCEPT_MISSING_BODY_PART=false)")
    if body_part is not None and body_parts and body_part not in body_parts:
        return PolicyRefusal("body_part", header.body_part_examined,
                             f"body_part: BodyPartExamined {header.body_part_examined!r} is "
                             f"not one of {', '.join(body_parts)} (CXR_ACCEPT_BODY_PARTS)")
    present = set(header.image_type)
    for pattern in _listed(settings.refuse_image_types):
        if set(pattern.split("\\")) <= present:
            value = "\\".join(header.image_type)
            return PolicyRefusal("image_type", value,
                                 f"image_type: ImageType {value} matches {pattern} "
                                 "(CXR_REFUSE_IMAGE_TYPES)")
    return None
