"""Originals for the correction tests: RG1 (a real CR chest PA, MONOCHROME1, 15 bits)
stored turned, as a CR (its own header) or as a DX for presentation with every attribute
the DX IOD requires (so dciodvfy finds no error in the original and none may appear in
the replacement), in a chosen transfer syntax."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLSLossless,
    generate_uid,
)

__all__ = [
    "CR_STORAGE",
    "DX_STORAGE",
    "TurnedLateralStudy",
    "as_dx",
    "rg1",
    "stored_as",
    "turned_lateral_study",
    "turned_original",
    "write_in_syntax",
]

CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")


def rg1(name: str = "RG1_UNCR.dcm") -> Dataset:
    found = get_testdata_file(name)
    assert isinstance(found, str), f"pydicom-data's {name} is not installed"
    return pydicom.dcmread(found)


def stored_as(upright: np.ndarray, rotation: int, mirrored: bool) -> np.ndarray:
    """``upright`` stored the way the model's answer (rotation, mirrored) describes it
    (cxr_orient.answer.Answer: ``numpy.rot90(upright, k)``, after a left-right mirror)."""
    return np.ascontiguousarray(np.rot90(upright[:, ::-1] if mirrored else upright, rotation // 90))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def as_dx(ds: Dataset) -> Dataset:
    """``ds`` (RG1's header) as a complete DX for presentation."""
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.Modality = "DX"
    for keyword in (
        "OtherPatientIDs",
        "PostprocessingFunction",
        "ProcessingFunction",
        "GeneratorPower",
        "CollimatorGridName",
        "PlateType",
        "Sensitivity",
        "PixelSpacing",
        "FilterType",
        "ReferringPhysicianName",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    ds.ReferringPhysicianName = "Ward^A"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Chest")])
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PresentationLUTShape = "INVERSE"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.DetectorType = "SCINTILLATOR"
    ds.ImagerPixelSpacing = [0.2, 0.1]
    ds.FieldOfViewRotation = "90"
    ds.FieldOfViewHorizontalFlip = "NO"
    ds.FieldOfViewShape = "RECTANGLE"
    ds.FieldOfViewDimensions = [430, 430]
    ds.FieldOfViewOrigin = [0, 0]
    ds.PositionerType = "NONE"
    ds.AcquisitionContextSequence = Sequence()
    ds.ViewCodeSequence = Sequence([_code("272479007", "SCT", "postero-anterior")])
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence()
    return ds


def turned_original(
    pixels: np.ndarray,
    rotation: int,
    mirrored: bool,
    *,
    dx: bool = False,
    view: str = "PA",
    orientation: list[str] | None = None,
) -> Dataset:
    """RG1's header with ``pixels`` (upright) stored turned: a new instance, explicit VR
    little endian; its Patient Orientation the stored pixels' (``orientation`` is the
    upright one's, L\\F unless given; [] for none)."""
    ds = rg1()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    if dx:
        ds = as_dx(ds)
    ds.ViewPosition = view
    stored = stored_as(pixels, rotation, mirrored)
    ds.set_pixel_data(
        stored, str(ds.PhotometricInterpretation), int(ds.BitsStored), generate_instance_uid=False
    )
    upright = ["L", "F"] if orientation is None else orientation
    ds.PatientOrientation = stored_orientation(upright, rotation, mirrored) if upright else []
    return ds


_OPPOSITE = {"A": "P", "P": "A", "L": "R", "R": "L", "H": "F", "F": "H"}


def stored_orientation(upright: list[str], rotation: int, mirrored: bool) -> list[str]:
    """Patient Orientation of the stored pixels when the upright ones have ``upright``:
    found by storing two coordinate grids the same way (numpy only, not the code under
    test) and reading which way each grows along the first row and the first column."""
    along_rows, along_columns = np.meshgrid(np.arange(3), np.arange(3))
    grids = {
        upright[0]: stored_as(along_rows, rotation, mirrored),
        upright[1]: stored_as(along_columns, rotation, mirrored),
    }

    def direction(step: tuple[int, int]) -> str:
        for name, grid in grids.items():
            change = int(grid[step]) - int(grid[0, 0])
            if change:
                return name if change > 0 else _OPPOSITE[name]
        raise AssertionError("no coordinate changes")

    return [direction((0, 1)), direction((1, 0))]


def write_in_syntax(ds: Dataset, syntax: str, folder: Path) -> Path:
    """``ds`` written in ``syntax`` under ``folder``: pydicom's encoders where it has
    one, dcmtk's ``dcmcjpeg`` for JPEG lossless (pydicom has no encoder for it)."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = folder / "plain.dcm"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(plain, enforce_file_format=True)
    out = folder / "original.dcm"
    if syntax == ExplicitVRLittleEndian:
        return plain
    if syntax == JPEGLosslessSV1:
        subprocess.run(
            ["dcmcjpeg", "+e1", str(plain), str(out)], check=True, capture_output=True, timeout=120
        )
        return out
    ds = pydicom.dcmread(plain)
    if syntax == JPEG2000:  # lossy: compressed 10:1
        ds.compress(syntax, generate_instance_uid=False, j2k_cr=[10])
    else:
        ds.compress(syntax, generate_instance_uid=False)
    ds.save_as(out, enforce_file_format=True)
    return out


SAMPLE_LATERAL = (
    Path(__file__).resolve().parents[2] / "cxr_orient" / "samples" / "study1" / "lateral.dcm"
)


@dataclass(frozen=True)
class TurnedLateralStudy:
    frontal: Path
    #: Stored turned by 90 degrees, its header saying PA (JPEG-LS lossless).
    lateral: Path
    #: The lateral's pixels upright (what the replacement must hold).
    upright_lateral: np.ndarray
    study_uid: str


def turned_lateral_study(folder: Path) -> TurnedLateralStudy:
    """A complete DX study (dciodvfy-clean): RG1 upright as the PA frontal, and the
    bundled study1 lateral stored turned by 90 degrees (``numpy.rot90(upright, 1)``) in
    JPEG-LS lossless, with View Position PA: the header's view wrong, the film turned."""
    upright_lateral = np.asarray(pydicom.dcmread(SAMPLE_LATERAL).pixel_array)
    frontal = turned_original(np.asarray(rg1().pixel_array), 0, False, dx=True)
    lateral = turned_original(
        upright_lateral, 90, False, dx=True, view="PA", orientation=["A", "F"]
    )
    study_uid = generate_uid()
    for ds in (frontal, lateral):
        ds.StudyInstanceUID = study_uid
    lateral.InstanceNumber = 2
    return TurnedLateralStudy(
        write_in_syntax(frontal, ExplicitVRLittleEndian, folder / "frontal"),
        write_in_syntax(lateral, JPEGLSLossless, folder / "lateral"),
        upright_lateral,
        study_uid,
    )
