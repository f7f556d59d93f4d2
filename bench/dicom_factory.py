"""Realistic DICOM CR/DX radiograph files, in any supported transfer syntax: fixtures,
not product.

For the benchmark's corpus (:mod:`bench.corpus`), the tests (``tests/utils/dicom_factory``
re-exports it, as ``tests/utils/orthanc`` does :mod:`bench.orthanc`) and the scripts that
build the demo samples and archive runs (``scripts/``): :func:`make_dicom` wraps a 2-D
integer array into a DICOM file; :func:`real_pixels` gives real radiographs (the
covid-cxr JPEGs of the development data, :data:`COVID_CXR`, when that folder exists) or
smooth synthetic stand-ins, at a chosen bit depth and size. Not in the wheel: it runs
from a checkout, like the rest of ``bench/``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

#: The development data (not in the repository): ``CXR_DEV_DATA`` names the folder that
#: holds ``covid-cxr/``; unset, ``../shared/data`` beside the checkout (README,
#: "Development"). The recipes read the same variable (``recipes/devdata.py``).
DEV_DATA = Path(
    os.environ.get("CXR_DEV_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
COVID_CXR = DEV_DATA / "covid-cxr"
"""Real radiographs (JPEG); absent on most machines, where synthetic stand-ins serve."""

__all__ = ["COVID_CXR", "make_dicom", "real_pixels", "synthetic_pixels"]

_NATIVE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}


def make_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    transfer_syntax: str = ExplicitVRLittleEndian,
    view_position: str | None = "PA",
    patient_id: str = "P1",
    study_uid: str | None = None,
    sop_uid: str | None = None,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    modality: str = "DX",
) -> Path:
    """Write ``pixels`` (2-D integers) as a DICOM file and return ``path``.

    ``window`` is (center, width); ``rescale`` is (slope, intercept). 8-bit data
    (``bits_stored <= 8``) is stored with BitsAllocated 8, otherwise 16.
    Signed arrays get PixelRepresentation 1.
    """
    transfer_syntax = UID(transfer_syntax)
    pixels = np.asarray(pixels)
    bits_allocated = 8 if bits_stored <= 8 else 16
    signed = pixels.dtype.kind == "i"
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")
    pixels = pixels.astype(dtype)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = (
        ComputedRadiographyImageStorage
        if modality == "CR"
        else DigitalXRayImageStorageForPresentation
    )
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid) if sop_uid else generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.Modality = modality
    if view_position is not None:
        ds.ViewPosition = view_position
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.tobytes()

    if transfer_syntax == JPEGBaseline8Bit:
        if bits_allocated != 8 or signed:
            raise ValueError("JPEG baseline needs unsigned 8-bit pixels")
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
    elif transfer_syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1):
        ds.compress(transfer_syntax, pixels, generate_instance_uid=False)
    elif transfer_syntax == JPEGLSNearLossless:
        ds.compress(transfer_syntax, pixels, jls_error=2, generate_instance_uid=False)
    elif transfer_syntax == JPEG2000:
        ds.compress(transfer_syntax, pixels, j2k_cr=[20], generate_instance_uid=False)
    elif transfer_syntax == ExplicitVRBigEndian:
        ds.PixelData = pixels.astype(dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    elif transfer_syntax in _NATIVE:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    else:
        # Anything else: label only, for refusal tests.
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    if "PixelData" in ds and ds["PixelData"].VR not in ("OB", "OW"):
        ds["PixelData"].VR = "OW" if bits_allocated == 16 else "OB"
    if transfer_syntax == ExplicitVRBigEndian:
        ds.save_as(path, implicit_vr=False, little_endian=False, enforce_file_format=True)
    else:
        ds.save_as(path, enforce_file_format=True)
    return Path(path)


def real_pixels(
    n: int = 1,
    *,
    bits: int = 12,
    seed: int = 0,
    view: str = "frontal",
    shape: tuple[int, int] | None = None,
    start: int = 0,
) -> list[np.ndarray]:
    """``n`` real radiographs scaled to ``bits`` bits (uint16), or synthetic stand-ins.

    Reads covid-cxr JPEGs of ``view`` ("frontal" or "lateral"), from the
    ``start``-th file, when the shared folder exists; otherwise
    :func:`synthetic_pixels`, so callers run anywhere. With ``shape`` (rows,
    columns) each image is resized (bicubic upscaling for the small JPEGs) to
    that detector size, plus a little noise so the extra bits are not empty.
    """
    top = (1 << bits) - 1
    folder = COVID_CXR / view
    files = sorted(folder.glob("*.jpg"))[start : start + n] if folder.is_dir() else []
    rng = np.random.default_rng(seed)
    arrays = []
    for file in files:
        with Image.open(file) as image:
            grey = image.convert("L")
            if shape is None:
                values = np.asarray(grey, dtype=np.float64) / 255.0
            else:
                big = grey.convert("F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
                values = np.asarray(big, dtype=np.float64) / 255.0
                values += rng.normal(0.0, 0.5 / top, size=values.shape) if bits > 8 else 0.0
        arrays.append(np.rint(np.clip(values, 0.0, 1.0) * top).astype(np.uint16))
    while len(arrays) < n:
        arrays.append(
            synthetic_pixels(
                shape or (600 + 37 * len(arrays), 500), bits=bits, seed=seed + len(arrays), rng=rng
            )
        )
    return arrays


def synthetic_pixels(
    shape: tuple[int, int],
    *,
    bits: int = 12,
    seed: int = 0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A smooth gradient plus noise standing in for a radiograph, ``bits`` bits (uint16)."""
    rng = rng if rng is not None else np.random.default_rng(seed)
    top = (1 << bits) - 1
    rows, columns = shape
    # Features scale with the image so a 2500-px image looks like a 600-px one.
    scale = max(1.0, rows / 1000.0)
    y, x = np.mgrid[0:rows, 0:columns]
    smooth = 0.5 + 0.3 * np.sin(x / (60.0 * scale)) * np.cos(y / (80.0 * scale)) + 0.15 * (y / rows)
    noisy = smooth + rng.normal(0.0, 0.03, size=smooth.shape)
    return np.rint(np.clip(noisy, 0.0, 1.0) * top).astype(np.uint16)
