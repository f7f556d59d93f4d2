"""The benchmark's DICOM corpus: realistic detector sizes, every transfer syntax.

Real covid-cxr radiographs upscaled to 2000-3000 px when the shared folder
exists (:data:`bench.dicom_factory.COVID_CXR`), smooth synthetic images
otherwise; 12 to 16 bits stored, MONOCHROME1 and MONOCHROME2, frontal and
lateral, some with a window in the header.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from bench.dicom_factory import COVID_CXR, make_dicom, real_pixels

logger = logging.getLogger(__name__)

#: Transfer syntax -> short name used in tables (pydicom encodes these).
SYNTAXES: dict[UID, str] = {
    ExplicitVRLittleEndian: "explicit-le",
    ImplicitVRLittleEndian: "implicit-le",
    ExplicitVRBigEndian: "explicit-be",
    DeflatedExplicitVRLittleEndian: "deflated",
    RLELossless: "rle",
    JPEGLSLossless: "jpeg-ls",
    JPEG2000Lossless: "j2k-lossless",
    JPEG2000: "j2k-lossy",
    JPEGBaseline8Bit: "jpeg-baseline",
}
#: HTJ2K, written with OpenJPH (imagecodecs, a dev dependency) where it is installed; a
#: machine without it (the lent GPU) takes files made elsewhere (:func:`load_corpus`).
HTJ2K_SYNTAXES: dict[UID, str] = {HTJ2KLossless: "htj2k-lossless", HTJ2K: "htj2k-lossy"}
#: JPEG Lossless, Non-Hierarchical, First-Order Prediction (process 14, selection value
#: 1): the compressed syntax CR and DX films are most often archived in. pydicom cannot
#: encode it; libjpeg-turbo 3 (imagecodecs, a dev dependency) does, so like HTJ2K the
#: lent GPU takes files made elsewhere.
JPEG_LOSSLESS_SYNTAXES: dict[UID, str] = {JPEGLosslessSV1: "jpeg-lossless"}
#: Written with imagecodecs where it is installed, else carried (:func:`load_corpus`).
ENCODED_ELSEWHERE: dict[UID, str] = {**HTJ2K_SYNTAXES, **JPEG_LOSSLESS_SYNTAXES}
#: OpenJPH's quantisation step for lossy HTJ2K (about 20:1 on a 12-bit film).
_HTJ2K_LOSSY_STEP = 0.0005
UNCOMPRESSED = ("explicit-le", "implicit-le", "explicit-be")
JPEG2000_NAMES = ("j2k-lossless", "j2k-lossy")

#: (rows, columns, bits stored) of common CR/DX detectors.
_DETECTORS = ((2500, 2048, 12), (3000, 2500, 14), (2304, 2880, 16), (2048, 2048, 12))


@dataclass(frozen=True)
class CorpusItem:
    path: Path
    syntax: str
    photometric: str
    bits_stored: int
    rows: int
    columns: int
    view: str
    windowed: bool

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def build_corpus(
    root: Path, *, per_syntax: int = 2, syntaxes: tuple[str, ...] | None = None, scale: float = 1.0
) -> list[CorpusItem]:
    """Write ``per_syntax`` files for each transfer syntax under ``root``.

    Items alternate frontal/lateral, MONOCHROME2/MONOCHROME1, window/no window,
    and cycle through :data:`_DETECTORS`; ``scale`` shrinks the detectors (tests).
    """
    root.mkdir(parents=True, exist_ok=True)
    items: list[CorpusItem] = []
    n = 0
    for uid, name in {**SYNTAXES, **ENCODED_ELSEWHERE}.items():
        if syntaxes is not None and name not in syntaxes:
            continue
        if uid in HTJ2K_SYNTAXES and not _can_encode_htj2k():
            continue
        if uid in JPEG_LOSSLESS_SYNTAXES and not _can_encode_jpeg_lossless():
            continue
        for k in range(per_syntax):
            rows, columns, bits = _DETECTORS[n % len(_DETECTORS)]
            rows, columns = max(64, int(rows * scale)), max(64, int(columns * scale))
            if uid == JPEGBaseline8Bit:
                bits = 8
            elif uid in (JPEG2000Lossless, JPEG2000, JPEGLSLossless, *HTJ2K_SYNTAXES) and bits > 15:
                bits = 15  # keep the encoders on their well-trodden paths
            view = "frontal" if k % 2 == 0 else "lateral"
            mono1 = (k // 2 + n) % 2 == 1
            pixels = real_pixels(1, bits=bits, seed=n, view=view, shape=(rows, columns), start=n)[0]
            top = (1 << bits) - 1
            if mono1:
                pixels = top - pixels
            windowed = k % 3 == 1
            window = (top * 0.5, top * 0.8) if windowed else None
            path = root / f"{name}-{k:02d}.dcm"
            make_dicom(
                path,
                pixels,
                photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
                bits_stored=bits,
                transfer_syntax=ExplicitVRLittleEndian if uid in ENCODED_ELSEWHERE else uid,
                view_position="PA" if view == "frontal" else "LL",
                patient_id=f"B{n % 7}",
                study_uid=f"1.2.826.0.1.3680043.10.2.{n // 2}",
                window=window,
            )
            if uid in HTJ2K_SYNTAXES:
                _to_htj2k(path, uid)
            elif uid in JPEG_LOSSLESS_SYNTAXES:
                _to_jpeg_lossless(path, bits)
            items.append(
                CorpusItem(
                    path=path,
                    syntax=name,
                    photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
                    bits_stored=bits,
                    rows=rows,
                    columns=columns,
                    view=view,
                    windowed=windowed,
                )
            )
            n += 1
    logger.info("corpus: %d files under %s (real pixels: %s)", len(items), root, COVID_CXR.is_dir())
    return items


def _can_encode_htj2k() -> bool:
    try:
        import imagecodecs

        return bool(imagecodecs.HTJ2K.available)
    except Exception:
        return False


def _can_encode_jpeg_lossless() -> bool:
    try:
        import imagecodecs

        return bool(imagecodecs.JPEG8.available)
    except Exception:
        return False


def _to_jpeg_lossless(path: Path, bits: int) -> None:
    """Re-encode a native file in place as JPEG lossless, first-order prediction
    (libjpeg-turbo's process 14, predictor 1, no point transform)."""
    import imagecodecs
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(path)
    stream = imagecodecs.jpeg8_encode(
        ds.pixel_array, lossless=True, predictor=1, bitspersample=max(bits, 2)
    )
    ds.PixelData = encapsulate([bytes(stream)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.save_as(path, enforce_file_format=True)


def _to_htj2k(path: Path, syntax: UID) -> None:
    """Re-encode a native file in place as HTJ2K (reversible 5-3 for lossless)."""
    import imagecodecs
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(path)
    if syntax == HTJ2K:
        stream = imagecodecs.htj2k_encode(ds.pixel_array, _HTJ2K_LOSSY_STEP, reversible=False)
        ds.LossyImageCompression = "01"
    else:
        stream = imagecodecs.htj2k_encode(ds.pixel_array, reversible=True)
    ds.PixelData = encapsulate([bytes(stream)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)


def load_corpus(folder: Path) -> list[CorpusItem]:
    """The items of corpus files already written (e.g. carried to a machine that cannot
    encode them), read back from their headers."""
    names = {**SYNTAXES, **ENCODED_ELSEWHERE}
    items = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        window = "WindowCenter" in ds
        items.append(
            CorpusItem(
                path=path,
                syntax=names.get(ds.file_meta.TransferSyntaxUID, "other"),
                photometric=str(ds.PhotometricInterpretation),
                bits_stored=int(ds.BitsStored),
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                view="frontal" if ds.get("ViewPosition") in ("PA", "AP") else "lateral",
                windowed=window,
            )
        )
    return items


def clone_with_new_uids(source: Path, target: Path, *, study_uid: str, patient_id: str) -> Path:
    """Copy a DICOM file with fresh SOP/series UIDs (no re-encoding of the pixels)."""
    ds = pydicom.dcmread(source)
    sop = generate_uid()
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.PatientID = patient_id
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def uses_real_pixels() -> bool:
    return COVID_CXR.is_dir()


def max_pixel_difference(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
