"""The corrected replacement: a new instance of the original's SOP class, in its study,
with the pixels upright and the view set from the answer (IHE IOCM: a replacement is
stored, then a rejection note hides the original; :mod:`.rejection`).

What changes (docs/dicom.md, "Corrected images and rejection notes"):

- a new SOP Instance UID, a function of the original's UID and the answer
  (:func:`corrected_instance_uid`), so building it again gives the same object;
- a series of cxr-orient's own per original series (:func:`corrected_series_uid`), with
  its Series Number and Description;
- the pixels turned upright (:func:`.geometry.upright_pixels`: every pixel kept) and
  written losslessly: in the original's transfer syntax when that is lossless and
  pydicom can encode it (RLE, JPEG-LS lossless, JPEG 2000 lossless), else explicit VR
  little endian; an original that was lossy keeps Lossy Image Compression 01;
- Rows/Columns, the pixel spacings and aspect ratio, the collimator and shutter
  positions, the DX detector's field-of-view rotation and flip, and Patient Orientation
  moved with the pixels; overlays and the icon image (drawn on the old geometry) dropped;
- View Position and View Code Sequence (CID 4010) from the answer;
- Image Type DERIVED\\SECONDARY (so cxr-orient's accept policy refuses it when it comes
  back: it is not classified again), Derivation Description (what changed, who
  decided), Source Image Sequence naming the original with purpose (121322, DCM,
  "Source image for image processing operation") from CID 7202; cxr-orient in the
  Contributing Equipment Sequence as (109102, DCM, "Processing Equipment") (CID 7005).

Everything else is copied.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from cxr_orient import __version__
from cxr_orient.dicomnet.corrections.geometry import Turn, upright_orientation
from cxr_orient.dicomnet.corrections.pixels import (
    mark_lossy,
    stored_pixels,
    write_upright_pixels,
)
from cxr_orient.dicomnet.corrections.positions import (
    drop_old_drawings,
    move_positions,
    values_of,
)
from cxr_orient.dicomnet.sr import (
    AP,
    LEFT_LATERAL,
    MANUFACTURER,
    PA,
    RIGHT_LATERAL,
    derived_uid,
)
from cxr_orient.errors import CorrectionError, MissingAttributeError

__all__ = [
    "CORRECTED_SERIES_NUMBER_OFFSET",
    "PROCESSING_EQUIPMENT",
    "SOURCE_FOR_PROCESSING",
    "VIEWS",
    "Correction",
    "build_corrected_image",
    "corrected_instance_uid",
    "corrected_series_uid",
    "upright_patient_orientation",
]

#: A corrected series' number: the original's plus this (9000 when it has none), so it
#: sorts after the acquisition and beside cxr-orient's SR series (9901).
CORRECTED_SERIES_NUMBER_OFFSET = 9000
SERIES_DESCRIPTION_PREFIX = "cxr-orient corrected"

#: PS3.16 CID 7202 "Source Image Purposes of Reference": the replacement is the original
#: put through an image processing operation (a turn and a mirror).
SOURCE_FOR_PROCESSING = ("121322", "DCM", "Source image for image processing operation")

#: PS3.16 CID 7005 "Contributing Equipment Purposes of Reference": cxr-orient made new
#: instances from existing ones (109103 "Modifying Equipment" is for changing instances
#: without making new ones).
PROCESSING_EQUIPMENT = ("109102", "DCM", "Processing Equipment")

#: View Position (CR Series PS3.3 C.8.1.1, DX Positioning C.8.11.5) -> its CID 4010 code
#: (the SR's codes).
VIEWS = {"PA": PA, "AP": AP, "LL": LEFT_LATERAL, "RL": RIGHT_LATERAL}
_LATERAL_VIEWS = frozenset({"LL", "RL"})


@dataclass(frozen=True)
class Correction:
    """What the replacement puts right, and on whose word.

    ``turn``: how the original is stored (the model's ``rotation`` / ``mirrored``;
    :meth:`Turn.from_answer`: a lateral's mirror, which the model leaves open, counts as
    not mirrored).
    ``view``: the View Position the replacement states, ``PA``, ``AP``, ``LL`` or ``RL``
    (a frontal's PA/AP comes from the projection answer). ``decided_by``: who decided, in
    words, e.g. ``"model compact-invariant-64-v3"`` or ``"reviewer alice"``.
    ``decided_at``: when (the replacement's Instance Creation Date/Time, so building it
    again gives the same object).
    """

    turn: Turn
    view: str
    decided_by: str
    decided_at: datetime

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise CorrectionError(f"view must be one of {', '.join(VIEWS)}, not {self.view!r}")


def corrected_series_uid(original_series_uid: str) -> str:
    """The replacements' series for one original series: the same on every machine."""
    return derived_uid("corrected series", original_series_uid)


def corrected_instance_uid(original_sop_instance_uid: str, correction: Correction) -> str:
    """The replacement's SOP Instance UID: a function of the original's and the answer."""
    turn = correction.turn
    return derived_uid(
        "corrected image",
        original_sop_instance_uid,
        str(turn.rotation),
        str(turn.mirrored),
        correction.view,
    )


def upright_patient_orientation(
    stored: Sequence[str] | str | None, view: str, turn: Turn
) -> list[str]:
    """Patient Orientation (0020,0020) of the upright image for ``view``.

    A frontal upright in standard display (PS3.3 C.7.6.1.1.1: first value the direction
    of the rows, second of the columns) shows the patient facing the viewer, the
    patient's left on the viewer's right, head at the top: ``L\\F`` for PA and AP alike.
    A lateral upright has its columns going to the feet (``F``), but whether it faces
    the viewer's left or right the model does not say: its rows go anterior (``A``) or
    posterior (``P``). That side is taken from the original's Patient Orientation moved
    with the pixels when it names one consistent with an upright lateral, else the
    value is left empty (Type 2C; unknown).
    """
    if view not in _LATERAL_VIEWS:
        return ["L", "F"]
    values = [str(v) for v in values_of(stored)]
    if len(values) == 2 and all(values):
        row_dir, column_dir = upright_orientation(values, turn)
        if row_dir in ("A", "P") and column_dir == "F":
            return [row_dir, column_dir]
    return []


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


#: What building a replacement reads from the original (all Type 1 in CR and DX).
_REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "BitsStored",
    "PhotometricInterpretation",
)


def _check_required(original: Dataset) -> None:
    for keyword in _REQUIRED:
        if original.get(keyword) in (None, ""):
            raise MissingAttributeError(f"the original has no {keyword}: cannot correct it")
    meta = getattr(original, "file_meta", None)
    if meta is None or not meta.get("TransferSyntaxUID"):
        raise MissingAttributeError(
            "the original has no Transfer Syntax UID (0002,0010) in its file meta"
        )


def _image_type(ds: Dataset) -> list[str]:
    """DERIVED (pixels changed) and SECONDARY (made after the examination; PS3.3
    C.7.6.1.1.2); the original's further values kept (the DX IOD allows SECONDARY and
    wants Value 3 empty: the original's is kept as it was)."""
    return ["DERIVED", "SECONDARY", *[str(v) for v in values_of(ds.get("ImageType"))][2:]]


def _what_was_done(turn: Turn) -> str:
    return "pixels unchanged" if turn.is_identity else f"turned upright ({turn.describe()})"


def _derivation_description(original: Dataset, correction: Correction) -> str:
    said = str(original.get("ViewPosition", "") or "none")
    text = (
        f"cxr-orient {__version__}: {_what_was_done(correction.turn)}; view "
        f"{correction.view} (was {said}); decided by {correction.decided_by}"
    )
    return text[:1024]


def _contributing_equipment(ds: Dataset, correction: Correction) -> None:
    """cxr-orient as processing equipment, after any the original names (the General
    Equipment module stays the acquisition device's)."""
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(*PROCESSING_EQUIPMENT)])
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = MANUFACTURER
    item.SoftwareVersions = __version__
    item.ContributionDateTime = correction.decided_at.strftime("%Y%m%d%H%M%S%z")
    item.ContributionDescription = (
        f"{_what_was_done(correction.turn)}; decided by {correction.decided_by}"
    )[:1024]
    ds.ContributingEquipmentSequence = DicomSequence(
        [*ds.get("ContributingEquipmentSequence", []), item]
    )


def build_corrected_image(original: Dataset, correction: Correction) -> Dataset:
    """The corrected replacement of ``original`` (a whole instance, pixels included; the
    caller's dataset is left alone), with ``file_meta``, ready to write or send."""
    _check_required(original)
    stored = stored_pixels(original)
    original_syntax = UID(original.file_meta.TransferSyntaxUID)
    turn = correction.turn
    ds = copy.deepcopy(original)
    ds.file_meta = FileMetaDataset()
    rows, columns = int(original.Rows), int(original.Columns)

    if turn.is_identity:
        # Only the header was wrong: the pixels stay exactly as they came, encoded bytes
        # and transfer syntax included (nothing to lose, nothing to re-encode).
        ds.file_meta.TransferSyntaxUID = original_syntax
    else:
        write_upright_pixels(ds, stored, turn, original_syntax)
        mark_lossy(ds, original_syntax)
        move_positions(ds, turn, rows, columns)
        drop_old_drawings(ds)

    ds.SOPInstanceUID = corrected_instance_uid(original.SOPInstanceUID, correction)
    ds.SeriesInstanceUID = corrected_series_uid(original.SeriesInstanceUID)
    number = original.get("SeriesNumber")
    ds.SeriesNumber = CORRECTED_SERIES_NUMBER_OFFSET + (int(number) if number else 0)
    described = str(original.get("SeriesDescription", "") or "")
    ds.SeriesDescription = (f"{SERIES_DESCRIPTION_PREFIX} {described}".strip())[:64]
    ds.InstanceCreationDate = correction.decided_at.strftime("%Y%m%d")
    ds.InstanceCreationTime = correction.decided_at.strftime("%H%M%S")
    ds.ImageType = _image_type(ds)
    ds.DerivationDescription = _derivation_description(original, correction)
    _contributing_equipment(ds, correction)
    source = Dataset()
    source.ReferencedSOPClassUID = original.SOPClassUID
    source.ReferencedSOPInstanceUID = original.SOPInstanceUID
    source.PurposeOfReferenceCodeSequence = DicomSequence([_code_item(*SOURCE_FOR_PROCESSING)])
    ds.SourceImageSequence = DicomSequence([source])

    ds.ViewPosition = correction.view
    view = VIEWS[correction.view]
    view_item = _code_item(view.value, view.scheme_designator, view.meaning)
    view_item.ViewModifierCodeSequence = DicomSequence()
    ds.ViewCodeSequence = DicomSequence([view_item])
    ds.PatientOrientation = upright_patient_orientation(
        original.get("PatientOrientation"), correction.view, turn
    )

    meta = ds.file_meta
    meta.MediaStorageSOPClassUID = original.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"CXR_ORIENT_{__version__}"[:16]
    return ds
