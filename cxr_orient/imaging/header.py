"""What a DICOM file says about itself before its pixels are touched.

:func:`read_header` reads the identifying attributes (stopping before PixelData);
:func:`view_to_label` turns a *ViewPosition* into the orientation it claims.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pydicom

from cxr_orient.errors import MissingAttributeError
from cxr_orient.imaging.attributes import is_multi, optional_int, optional_text
from cxr_orient.imaging.errors import errors_named
from cxr_orient.imaging.reading import read_dataset

__all__ = [
    "AP_VIEWS",
    "FRONTAL_VIEWS",
    "LATERAL_VIEWS",
    "PA_VIEWS",
    "PROJECTIONS",
    "DicomHeader",
    "read_header",
    "view_to_label",
    "view_to_projection",
]

#: The projections a frontal may have (a model's ``p_ap`` is the probability of "AP").
PROJECTIONS = ("PA", "AP")
#: ViewPosition values that name the projection of a frontal (PAS, APS: the "S" of
#: some vendors for standing/supine; AP SUPINE and AP ERECT as some modalities write).
PA_VIEWS = frozenset({"PA", "PAS", "PA ERECT"})
AP_VIEWS = frozenset({"AP", "APS", "AP SUPINE", "AP ERECT", "AP SEMI-ERECT"})
FRONTAL_VIEWS = PA_VIEWS | AP_VIEWS | {"FRONTAL"}
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "L", "R"})


def view_to_label(view_position: str | None) -> str | None:
    """The orientation a DICOM ViewPosition claims, or None when it says nothing usable.

    Decubitus (RLD/LLD) and oblique (RLO/LLO) views are neither answer, so None.
    Returns ``"frontal"`` or ``"lateral"`` (plain strings, the values of
    ``db.models.OrientationLabel``).
    """
    if not view_position:
        return None
    value = view_position.strip().upper()
    if value in FRONTAL_VIEWS:
        return "frontal"
    if value in LATERAL_VIEWS:
        return "lateral"
    return None


def view_to_projection(view_position: str | None) -> str | None:
    """The projection a DICOM ViewPosition claims for a frontal: ``"PA"``, ``"AP"``, or
    None when it names neither (missing, ``FRONTAL``, a lateral, decubitus, oblique)."""
    value = (view_position or "").strip().upper()
    if value in PA_VIEWS:
        return "PA"
    if value in AP_VIEWS:
        return "AP"
    return None


@dataclass(frozen=True)
class DicomHeader:
    """What the pipeline records about a DICOM file before touching its pixels."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str | None
    patient_id: str | None
    modality: str | None
    view_position: str | None
    transfer_syntax_uid: str | None
    rows: int | None
    columns: int | None
    #: SOPClassUID, else the file meta's MediaStorageSOPClassUID (None: neither).
    sop_class_uid: str | None = None
    #: BodyPartExamined as stored (None: absent or blank).
    body_part_examined: str | None = None
    #: ImageType's values, upper case (``("DERIVED", "SECONDARY")``); empty: absent.
    image_type: tuple[str, ...] = ()
    #: Manufacturer and ManufacturerModelName as stored (None: absent or blank).
    manufacturer: str | None = None
    manufacturer_model: str | None = None


def read_header(
    path: Path, *, data: bytes | None = None, dataset: pydicom.Dataset | None = None
) -> DicomHeader:
    """Read the identifying attributes of a DICOM file, without its pixel data.

    ``data``, when given, is the file's content already read, ``dataset`` the file
    already parsed (``read_dataset``); ``path`` then only names the file in errors.

    Raises NotDicomError, TruncatedFileError, or MissingAttributeError when
    SOPInstanceUID or StudyInstanceUID is absent or empty.
    """
    path = Path(path)
    with errors_named(path):
        ds = (
            dataset
            if dataset is not None
            else read_dataset(path, stop_before_pixels=True, data=data)
        )
        sop_instance_uid = optional_text(ds, "SOPInstanceUID")
        study_instance_uid = optional_text(ds, "StudyInstanceUID")
        for keyword, value in (
            ("SOPInstanceUID", sop_instance_uid),
            ("StudyInstanceUID", study_instance_uid),
        ):
            if value is None:
                raise MissingAttributeError(f"{path}: {keyword} is missing or empty")
        assert sop_instance_uid is not None and study_instance_uid is not None
        transfer_syntax = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta else None
        sop_class = optional_text(ds, "SOPClassUID") or (
            optional_text(ds.file_meta, "MediaStorageSOPClassUID") if ds.file_meta else None
        )
        return DicomHeader(
            sop_instance_uid=sop_instance_uid,
            study_instance_uid=study_instance_uid,
            series_instance_uid=optional_text(ds, "SeriesInstanceUID"),
            patient_id=optional_text(ds, "PatientID"),
            modality=optional_text(ds, "Modality"),
            view_position=optional_text(ds, "ViewPosition"),
            transfer_syntax_uid=str(transfer_syntax) if transfer_syntax else None,
            rows=optional_int(ds, "Rows"),
            columns=optional_int(ds, "Columns"),
            sop_class_uid=sop_class,
            body_part_examined=optional_text(ds, "BodyPartExamined"),
            image_type=image_type_values(ds.get("ImageType")),
            manufacturer=optional_text(ds, "Manufacturer"),
            manufacturer_model=optional_text(ds, "ManufacturerModelName"),
        )


def image_type_values(value: object) -> tuple[str, ...]:
    """ImageType's values, stripped and upper case; () when absent or empty."""
    if value is None or value == "":
        return ()
    values = cast("Iterable[object]", value) if is_multi(value) else str(value).split("\\")
    return tuple(v for v in (str(x).strip().upper() for x in values) if v)
