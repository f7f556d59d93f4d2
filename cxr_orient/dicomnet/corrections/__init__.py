"""Corrections back to PACS (IHE Imaging Object Change Management): a film stored turned,
or with the wrong view in its header, is replaced by a corrected instance
(:func:`build_corrected_image`) and the original rejected by a Key Object Selection
rejection note (:func:`build_rejection_note`), which IOCM archives honour by hiding it.

``geometry`` (pure: pixels, pixel positions and directions turned upright), ``pixels``
(decode, turn, write losslessly), ``positions`` (the header's positions and axes moved
with the pixels), ``replacement`` (the corrected instance), ``rejection`` (the note).
Builders only: sending them is the outbox's (docs/dicom.md, "Corrected images and
rejection notes").
"""

from cxr_orient.dicomnet.corrections.geometry import (
    Turn,
    upright_field_of_view,
    upright_orientation,
    upright_pixels,
    upright_point,
)
from cxr_orient.dicomnet.corrections.rejection import (
    REJECTED_FOR_QUALITY_REASONS,
    build_rejection_note,
    rejection_note_uid,
    rejection_series_uid,
)
from cxr_orient.dicomnet.corrections.replacement import (
    PROCESSING_EQUIPMENT,
    SOURCE_FOR_PROCESSING,
    VIEWS,
    Correction,
    build_corrected_image,
    corrected_instance_uid,
    corrected_series_uid,
    upright_patient_orientation,
)
from cxr_orient.errors import CorrectionError

__all__ = [
    "PROCESSING_EQUIPMENT",
    "REJECTED_FOR_QUALITY_REASONS",
    "SOURCE_FOR_PROCESSING",
    "VIEWS",
    "Correction",
    "CorrectionError",
    "Turn",
    "build_corrected_image",
    "build_rejection_note",
    "corrected_instance_uid",
    "corrected_series_uid",
    "rejection_note_uid",
    "rejection_series_uid",
    "upright_field_of_view",
    "upright_orientation",
    "upright_patient_orientation",
    "upright_pixels",
    "upright_point",
]
