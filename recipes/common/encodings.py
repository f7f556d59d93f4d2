"""A grey film written as a DICOM DX file in a named transfer syntax, lossless or lossy at
a stated setting, as bytes (the recipes decode them through the product's
:func:`cxr_orient.imaging.load_dicom_image` with ``data=``, no file needed).

The lossy settings are the ones archives use: JPEG baseline at quality 90 and at 75 (a
teleradiology-grade setting), JPEG 2000 irreversible at 10:1 and 20:1, HTJ2K
irreversible (step 0.015, about 9:1), JPEG-LS near-lossless (error 2); and, marked
``stress``, two beyond what archives use (JPEG quality 50, JPEG 2000 at 50:1). Ratios
are of the pixels' own bytes (8 bits a pixel for the covid-cxr films): the same ratio on
a 12-bit detector film of 2,500 px, which carries more redundant bits and pixels, loses
less. Encoders: Pillow
(libjpeg) for baseline JPEG, pydicom (OpenJPEG, CharLS, its own RLE) for JPEG 2000,
JPEG-LS and RLE, imagecodecs (OpenJPH, libjpeg-turbo) for HTJ2K and JPEG lossless.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

__all__ = ["ENCODINGS", "REFERENCE", "Encoding", "encode_film"]

#: OpenJPH's quantisation step for lossy HTJ2K on 8-bit films (the median ratio on the
#: covid-cxr test films is about 9:1, from 2:1 on noisy films to 27:1 on smooth ones).
HTJ2K_STEP = 0.015


@dataclass(frozen=True)
class Encoding:
    """A transfer syntax at one setting: its name in tables, whether it loses anything,
    the setting, and how it compresses a dataset's native 8-bit pixels."""

    name: str
    syntax: UID
    lossy: bool
    #: What was chosen (quality, ratio, step), "" for a lossless default.
    setting: str
    compress: Callable[[Dataset, np.ndarray], None]
    #: Harsher than archives use: there to show how far the margin reaches.
    stress: bool = False


def _native(ds: Dataset, pixels: np.ndarray) -> None:
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _pydicom(
    syntax: UID, *, lossy: bool = False, **options: Any
) -> Callable[[Dataset, np.ndarray], None]:
    def compress(ds: Dataset, pixels: np.ndarray) -> None:
        ds.compress(syntax, pixels, generate_instance_uid=False, **options)
        if lossy:  # pydicom leaves the header's statement to the caller
            ds.LossyImageCompression = "01"

    return compress


def _encapsulated(
    syntax: UID, encode: Callable[[np.ndarray], bytes], *, lossy: bool
) -> Callable[[Dataset, np.ndarray], None]:
    def compress(ds: Dataset, pixels: np.ndarray) -> None:
        ds.PixelData = encapsulate([encode(pixels)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        if lossy:
            ds.LossyImageCompression = "01"

    return compress


def _jpeg_baseline(quality: int) -> Callable[[np.ndarray], bytes]:
    def encode(pixels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()

    return encode


def _htj2k(*, reversible: bool) -> Callable[[np.ndarray], bytes]:
    def encode(pixels: np.ndarray) -> bytes:
        import imagecodecs

        if reversible:
            return bytes(imagecodecs.htj2k_encode(pixels, reversible=True))
        return bytes(imagecodecs.htj2k_encode(pixels, HTJ2K_STEP, reversible=False))

    return encode


def _jpeg_lossless(pixels: np.ndarray) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=8))


_LOSSY_JPEG = {"jpeg-q90": 90, "jpeg-q75": 75, "jpeg-q50": 50}
_LOSSY_J2K = {"j2k-10to1": 10, "j2k-20to1": 20, "j2k-50to1": 50}

#: The uncompressed file every other encoding is compared with.
REFERENCE = Encoding("explicit-le", ExplicitVRLittleEndian, False, "", _native)

ENCODINGS: tuple[Encoding, ...] = (
    REFERENCE,
    Encoding("rle", RLELossless, False, "", _pydicom(RLELossless)),
    Encoding("jpeg-ls", JPEGLSLossless, False, "", _pydicom(JPEGLSLossless)),
    Encoding(
        "jpeg-lossless",
        JPEGLosslessSV1,
        False,
        "process 14, predictor 1",
        _encapsulated(JPEGLosslessSV1, _jpeg_lossless, lossy=False),
    ),
    Encoding("j2k-lossless", JPEG2000Lossless, False, "", _pydicom(JPEG2000Lossless)),
    Encoding(
        "htj2k-lossless",
        HTJ2KLossless,
        False,
        "reversible 5-3",
        _encapsulated(HTJ2KLossless, _htj2k(reversible=True), lossy=False),
    ),
    *(
        Encoding(
            name,
            JPEGBaseline8Bit,
            True,
            f"quality {quality}",
            _encapsulated(JPEGBaseline8Bit, _jpeg_baseline(quality), lossy=True),
            stress=quality < 75,
        )
        for name, quality in _LOSSY_JPEG.items()
    ),
    *(
        Encoding(
            name,
            JPEG2000,
            True,
            f"{ratio}:1",
            _pydicom(JPEG2000, lossy=True, j2k_cr=[ratio]),
            stress=ratio > 20,
        )
        for name, ratio in _LOSSY_J2K.items()
    ),
    Encoding(
        "htj2k-lossy",
        HTJ2K,
        True,
        f"step {HTJ2K_STEP}",
        _encapsulated(HTJ2K, _htj2k(reversible=False), lossy=True),
    ),
    Encoding(
        "jpeg-ls-near2",
        JPEGLSNearLossless,
        True,
        "NEAR 2",
        _pydicom(JPEGLSNearLossless, lossy=True, jls_error=2),
    ),
)


def encode_film(pixels: np.ndarray, encoding: Encoding, *, patient_id: str = "L1") -> bytes:
    """``pixels`` (2-D uint8, MONOCHROME2) as the bytes of a DX file in ``encoding``;
    no ViewPosition (the pixels alone decide)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB"
    encoding.compress(ds, pixels)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
