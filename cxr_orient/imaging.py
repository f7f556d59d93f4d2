"""Decode chest radiographs and turn them into model input.

One module for training and inference, so both see the same pixels.

Accepted images
---------------
* PNG and JPEG files (by suffix ``.png``, ``.jpg``, ``.jpeg``), read with Pillow;
  colour is converted to grey (``L``), EXIF orientation is applied.
* DICOM: single-frame greyscale radiographs only:

  - *SamplesPerPixel* 1 (assumed when absent), *PhotometricInterpretation*
    ``MONOCHROME1`` or ``MONOCHROME2``, *NumberOfFrames* absent or 1;
  - *BitsAllocated* 8 or 16; *BitsStored* 2..16 and <= *BitsAllocated*
    (1-bit images refused); *PixelRepresentation* 0 or 1 (0 when absent);
  - *Rows* and *Columns* present, positive, each <= 65535, and
    ``Rows * Columns <= max_pixels``; checked before anything is decoded;
  - *PixelData* present; for native (uncompressed) syntaxes its length must hold
    ``Rows * Columns * BitsAllocated / 8`` bytes;
  - transfer syntaxes: implicit/explicit VR little endian, deflated, explicit
    VR big endian, RLE lossless, JPEG baseline (8-bit) and extended (12-bit),
    JPEG lossless (process 14 and SV1), JPEG-LS lossless and near-lossless,
    JPEG 2000 lossless and lossy. Anything else is refused, naming the UID.

Pixel pipeline (DICOM)
----------------------
1. Modality LUT: *RescaleSlope*/*RescaleIntercept*, or *ModalityLUTSequence*.
2. VOI: the first *WindowCenter*/*WindowWidth* pair when present (linear, or
   as *VOILUTFunction* says: ``LINEAR_EXACT``, ``SIGMOID``); else the first
   item of *VOILUTSequence*; else min-max over the values.
3. ``MONOCHROME1`` is inverted after VOI, so the output is always
   "bone bright" (lungs dark).
4. :func:`resize_square` to ``size x size`` (aspect not kept), then
   :func:`normalise_to_uint8` (0.5th..99.5th percentile to 0..255).

PNG/JPEG files go through steps 4 only.

:func:`load_dicom_image` is the fast path of the product. Uncompressed and
losslessly decoded pixels are summed in integers straight into the output
pixels (the same bins as Pillow's BOX resize), after clipping them to a linear
window's end points, so the result equals :func:`load_dicom_image_naive` (the
straightforward reference) up to float rounding. JPEG 2000 is decoded at
reduced resolution (its wavelet low-pass band, smallest level >= ``2 * size``),
resampled as the band's own inverse wavelet transform (details zero) averaged over
the reference's bins; JPEG baseline with DCT scaling. Those differ from the
reference by a few grey levels (tens at some sharp edges), with the same
predictions (checked by ``cxr-orient bench`` and the tests).

Every failure is raised as a :class:`~cxr_orient.errors.InputError` subclass;
no pydicom, numpy, Pillow or codec exception escapes the ``load_*`` functions
or :func:`dataset_to_image` (unknown ones become
:class:`~cxr_orient.errors.DecodeError`).
"""

from __future__ import annotations

import io
import logging
import math
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import numpy as np
import numpy.typing as npt
import pydicom
import pydicom.pixels
from PIL import Image, ImageOps
from pydicom.dataset import FileDataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import (  # the private ones: pydicom's own steps of dcmread
    _at_pixel_data,
    _read_file_meta_info,
    read_dataset,
    read_preamble,
)
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from cxr_orient.errors import (
    CxrError,
    DecodeError,
    FileMissingError,
    ImageTooLargeError,
    InvalidAttributeError,
    MissingAttributeError,
    NoPixelDataError,
    NotDicomError,
    TruncatedFileError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MODEL_INPUT_SIZE",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "DicomHeader",
    "dataset_to_image",
    "load_dicom_image",
    "load_dicom_image_naive",
    "load_image_file",
    "normalise_to_uint8",
    "read_header",
    "resize_square",
    "to_rgb",
]

logger = logging.getLogger(__name__)

MODEL_INPUT_SIZE = 256
"""Side of the square greyscale image every model takes."""

DEFAULT_MAX_PIXELS = 60_000_000
"""Largest Rows * Columns accepted (about 7750 x 7750); bigger is refused unread."""

_MAX_SIDE = 65535
_PERCENTILE_LOW = 0.5
_PERCENTILE_HIGH = 99.5
_PILLOW_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_ACCEPTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")

_NATIVE_SYNTAXES = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
    }
)
_JPEG2000_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000})
#: Fastest installed decoder per syntax (measured on a 2500x2048 12-bit film: JPEG-LS
#: 89 ms with CharLS/pyjpegls vs 223 ms with libjpeg; RLE 24 ms with pylibjpeg-rle vs
#: 113 ms in pure Python). pydicom's own order is the fallback.
_PREFERRED_PLUGIN = {
    JPEGLSLossless: "pyjpegls",
    JPEGLSNearLossless: "pyjpegls",
    RLELossless: "pylibjpeg",
}
SUPPORTED_TRANSFER_SYNTAXES: frozenset[UID] = _NATIVE_SYNTAXES | frozenset(
    {
        RLELossless,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
    }
)
"""Transfer syntaxes :func:`dataset_to_image` decodes."""


# --------------------------------------------------------------------------- arrays


def normalise_to_uint8(image: np.ndarray) -> np.ndarray:
    """Map the [0.5th, 99.5th] percentile range of a grey image to [0, 255], clipped.

    A flat image (no spread between the percentiles) becomes all zeros.
    """
    values = np.asarray(image, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = np.percentile(values, [_PERCENTILE_LOW, _PERCENTILE_HIGH])
    spread = float(high) - float(low)
    if spread <= 1e-6 * max(1.0, abs(float(low)), abs(float(high))):
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - np.float32(low)) * np.float32(255.0 / spread)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Area-average ``image`` (2-D) to ``(size, size)`` float32; the aspect is not kept."""
    return _resize_float(image, (size, size))


def to_rgb(grey: np.ndarray) -> np.ndarray:
    """Repeat a ``(H, W)`` grey image into three identical channels ``(H, W, 3)``."""
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {grey.shape}")
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)


def _resize_float(
    image: np.ndarray,
    shape: tuple[int, int],
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Pillow BOX (area-averaging) resize of a 2-D array to ``shape`` (rows, cols)."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    rows, cols = shape
    source = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    if source.size == (cols, rows) and box is None:
        return np.asarray(source, dtype=np.float32).copy()
    resized = source.resize((cols, rows), Image.Resampling.BOX, box=box)
    return np.asarray(resized, dtype=np.float32)


# ---------------------------------------------------------------------- entry points


def load_image_file(
    path: Path, *, size: int = MODEL_INPUT_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Load any supported file as a ``(size, size)`` uint8 grey image.

    ``.png``, ``.jpg`` and ``.jpeg`` are read with Pillow (colour becomes grey);
    anything else is read as DICOM with :func:`load_dicom_image`.
    """
    path = Path(path)
    if path.suffix.lower() in _PILLOW_SUFFIXES:
        return _load_pillow_image(path, size=size, max_pixels=max_pixels)
    return load_dicom_image(path, size=size, max_pixels=max_pixels)


def _load_pillow_image(path: Path, *, size: int, max_pixels: int) -> np.ndarray:
    with _errors_named(path):
        _require_file(path)
        try:
            with Image.open(path) as opened:
                columns, rows = opened.size
                _check_size(rows, columns, max_pixels, path)
                image = ImageOps.exif_transpose(opened)
                grey = _pillow_to_grey(image)
        except OSError as e:  # includes PIL.UnidentifiedImageError
            raise DecodeError(f"{path}: not a readable PNG/JPEG image: {e}") from e
        return normalise_to_uint8(resize_square(grey, size))


def _pillow_to_grey(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(image, dtype=np.float32)
    if image.mode != "L":
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            image = image.convert("RGBA").convert("RGB")
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32)


# ------------------------------------------------------------------------ errors


@contextmanager
def _errors_named(path: Path | None) -> Iterator[None]:
    """Let our errors through; turn every other exception into DecodeError."""
    try:
        yield
    except CxrError:
        raise
    except MemoryError as e:
        raise DecodeError(f"{_where(path)}out of memory while decoding") from e
    except Exception as e:
        raise DecodeError(f"{_where(path)}{type(e).__name__}: {e}") from e
    except BaseException as e:
        # Rust codecs (pylibjpeg-rle via pyo3) panic on crafted data with PanicException,
        # a BaseException: it must fail this file, not the whole batch (found by fuzzing).
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise DecodeError(f"{_where(path)}codec panic {type(e).__name__}: {e}") from e


def _where(path: Path | None) -> str:
    return f"{path}: " if path is not None else ""


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileMissingError(f"{path}: no such file")


def _check_size(rows: int, columns: int, max_pixels: int, path: Path | None) -> None:
    if rows <= 0 or columns <= 0:
        raise InvalidAttributeError(f"{_where(path)}Rows {rows} / Columns {columns} not positive")
    if rows > _MAX_SIDE or columns > _MAX_SIDE:
        raise InvalidAttributeError(
            f"{_where(path)}Rows {rows} / Columns {columns} exceed {_MAX_SIDE}"
        )
    if rows * columns > max_pixels:
        raise ImageTooLargeError(
            f"{_where(path)}Rows*Columns {rows}x{columns} = {rows * columns} "
            f"exceeds max_pixels {max_pixels}"
        )


# ------------------------------------------------------------------------ DICOM


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


@dataclass(frozen=True)
class _PixelSpec:
    """The validated attributes that say how to read the pixels."""

    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    monochrome1: bool
    transfer_syntax: UID


@dataclass(frozen=True)
class _Window:
    center: float
    width: float
    function: str


_Voi = _Window | Literal["lut", "minmax"]
_Wavelet = Literal["5-3", "9-7"]


def read_header(path: Path, *, data: bytes | None = None) -> DicomHeader:
    """Read the identifying attributes of a DICOM file, without its pixel data.

    ``data``, when given, is the file's content already read; ``path`` then only
    names the file in errors.

    Raises NotDicomError, TruncatedFileError, or MissingAttributeError when
    SOPInstanceUID or StudyInstanceUID is absent or empty.
    """
    path = Path(path)
    with _errors_named(path):
        ds = _read_dataset(path, stop_before_pixels=True, data=data)
        sop_instance_uid = _optional_text(ds, "SOPInstanceUID")
        study_instance_uid = _optional_text(ds, "StudyInstanceUID")
        for keyword, value in (
            ("SOPInstanceUID", sop_instance_uid),
            ("StudyInstanceUID", study_instance_uid),
        ):
            if value is None:
                raise MissingAttributeError(f"{path}: {keyword} is missing or empty")
        assert sop_instance_uid is not None and study_instance_uid is not None
        transfer_syntax = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta else None
        return DicomHeader(
            sop_instance_uid=sop_instance_uid,
            study_instance_uid=study_instance_uid,
            series_instance_uid=_optional_text(ds, "SeriesInstanceUID"),
            patient_id=_optional_text(ds, "PatientID"),
            modality=_optional_text(ds, "Modality"),
            view_position=_optional_text(ds, "ViewPosition"),
            transfer_syntax_uid=str(transfer_syntax) if transfer_syntax else None,
            rows=_optional_int(ds, "Rows"),
            columns=_optional_int(ds, "Columns"),
        )


def load_dicom_image(
    path: Path,
    *,
    size: int = MODEL_INPUT_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    data: bytes | None = None,
) -> np.ndarray:
    """Decode a DICOM radiograph to a ``(size, size)`` uint8 grey image (fast path).

    ``data``, when given, is the file's content already read (e.g. to check its
    hash); ``path`` then only names the file in errors.
    """
    path = Path(path)
    with _errors_named(path):
        ds = _read_dataset(path, stop_before_pixels=False, data=data,
                           inflate_limit=inflated_size_limit(max_pixels))
        return _dataset_to_image(ds, size=size, max_pixels=max_pixels, path=path)


def dataset_to_image(
    ds: pydicom.Dataset, *, size: int = MODEL_INPUT_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """The fast path of :func:`load_dicom_image`, for a dataset already read."""
    filename = getattr(ds, "filename", None)
    path = Path(filename) if isinstance(filename, str) and filename else None
    with _errors_named(path):
        return _dataset_to_image(ds, size=size, max_pixels=max_pixels, path=path)


def load_dicom_image_naive(path: Path, *, size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    """Reference decoder: full-resolution pydicom processing in float64.

    ``pixel_array`` -> ``apply_modality_lut`` -> VOI (``apply_windowing`` or
    ``apply_voi``, chosen as in the module docstring) -> min-max to [0, 1] ->
    MONOCHROME1 inverted -> :func:`resize_square` -> :func:`normalise_to_uint8`.
    Slow; used by tests and benchmarks to check :func:`load_dicom_image`.
    """
    path = Path(path)
    with _errors_named(path):
        ds = _read_dataset(path, stop_before_pixels=False)
        spec = _validate(ds, max_pixels=DEFAULT_MAX_PIXELS, path=path)
        stored = pydicom.pixels.pixel_array(ds)
        values = pydicom.pixels.apply_modality_lut(stored, ds)
        voi = _choose_voi(ds, path)
        if isinstance(voi, _Window):
            values = pydicom.pixels.apply_windowing(np.asarray(values, dtype=np.float64), ds, 0)
        elif voi == "lut":
            values = pydicom.pixels.apply_voi(values, ds, 0)
        values = np.asarray(values, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        if spec.monochrome1:
            values = 1.0 - values
        return normalise_to_uint8(resize_square(values, size))


def inflated_size_limit(max_pixels: int) -> int:
    """Bytes a Deflated Explicit VR Little Endian dataset may inflate to: 4 bytes for each
    allowed pixel (up to 32-bit grey, or 8-bit colour) and 16 MiB for everything else."""
    return 4 * max_pixels + 16 * 2**20


def _bounded_inflate(deflated: bytes, limit: int, path: Path | None) -> bytes:
    """Raw deflate (PS3.5 A.5) refusing output beyond ``limit`` bytes before making it:
    a few megabytes of deflate can stand for gigabytes, and a worker must not allocate
    what a crafted file asks for. Uses ISA-L (``isal``) where installed, about twice as
    fast as zlib here, with the same output."""
    inflater = _raw_inflater()
    try:
        out = inflater.decompress(deflated, limit + 1)
    except Exception as e:  # zlib.error / isal_zlib.error: corrupt or cut stream
        raise TruncatedFileError(f"{_where(path)}deflated dataset is corrupt or cut: {e}") from e
    if len(out) > limit:
        raise ImageTooLargeError(
            f"{_where(path)}deflated dataset inflates to more than {limit} bytes "
            "(the CXR_MAX_PIXELS bound)"
        )
    if not inflater.eof:
        raise TruncatedFileError(f"{_where(path)}deflated dataset ends early")
    return out


def _raw_inflater() -> Any:
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
        return zlib.decompressobj(-zlib.MAX_WBITS)
    return isal_zlib.decompressobj(-isal_zlib.MAX_WBITS)


def _dcmread(data: bytes, *, stop_before_pixels: bool, inflate_limit: int,
             path: Path | None) -> pydicom.Dataset:
    """``pydicom.dcmread`` from memory, except that a deflated dataset is inflated here,
    within ``inflate_limit`` (pydicom would inflate it whole, however large)."""
    fp = io.BytesIO(data)
    preamble = read_preamble(fp, False)
    file_meta = _read_file_meta_info(fp)
    if file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    inflated = DicomBytesIO(_bounded_inflate(data[fp.tell():], inflate_limit, path))
    dataset = read_dataset(cast(BinaryIO, inflated), is_implicit_VR=False, is_little_endian=True,
                           stop_when=_at_pixel_data if stop_before_pixels else None)
    return FileDataset(str(path) if path else "", dataset, preamble=preamble,
                       file_meta=file_meta, is_implicit_VR=False, is_little_endian=True)


def _read_dataset(
    path: Path, *, stop_before_pixels: bool, data: bytes | None = None,
    inflate_limit: int | None = None,
) -> pydicom.Dataset:
    """Read a DICOM Part 10 file (128-byte preamble + ``DICM``), or its ``data``.

    A deflated dataset may inflate to ``inflate_limit`` bytes at most (default: the
    :func:`inflated_size_limit` of ``DEFAULT_MAX_PIXELS``).
    """
    if data is None:
        _require_file(path)
        data = path.read_bytes()
    file_size = len(data)
    if file_size == 0:
        raise TruncatedFileError(f"{path}: empty file")
    limit = inflated_size_limit(DEFAULT_MAX_PIXELS) if inflate_limit is None else inflate_limit
    try:
        # pydicom turns a truncated encapsulated PixelData into a warning and drops
        # the element; catch it so a cut file is not reported as "no pixel data".
        # Parsed from memory, not from the file: a crafted element length makes
        # pydicom ask a file for gigabytes, which a buffered read allocates before
        # finding the file short; a BytesIO hands back only the bytes that exist.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = _dcmread(data, stop_before_pixels=stop_before_pixels, inflate_limit=limit,
                          path=path)
        for warning in caught:
            message = str(warning.message)
            if "end of file" in message.lower():
                # pydicom names the file it read, a BytesIO here: the path says it.
                message = message.replace(" in file <no filename>", "")
                raise TruncatedFileError(f"{path}: file ends early: {message}")
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
        return ds
    except CxrError:
        raise
    except InvalidDicomError as e:
        if _is_truncated_preamble(data):
            raise TruncatedFileError(f"{path}: file ends inside the DICOM preamble") from e
        raise NotDicomError(f"{path}: not a DICOM file (no 'DICM' prefix): {e}") from e
    except EOFError as e:
        raise TruncatedFileError(f"{path}: file ends early: {e}") from e
    except (OSError, MemoryError) as e:
        raise DecodeError(f"{path}: cannot read DICOM: {type(e).__name__}: {e}") from e
    except Exception as e:
        # Malformed element lengths and similar: pydicom fails in many ways.
        raise NotDicomError(f"{path}: malformed DICOM: {type(e).__name__}: {e}") from e


def _is_truncated_preamble(head: bytes) -> bool:
    if len(head) >= 132:
        return False
    if len(head) <= 128:
        # A zeroed preamble cut short looks like a truncated DICOM file.
        return not any(head)
    return b"DICM".startswith(head[128:])


def _dataset_to_image(
    ds: pydicom.Dataset, *, size: int, max_pixels: int, path: Path | None
) -> np.ndarray:
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    spec = _validate(ds, max_pixels=max_pixels, path=path)
    stored, extent, wavelet = _decode_stored(ds, spec, size=size, path=path)
    return _stored_to_image(stored, extent, ds, spec, size=size, path=path, wavelet=wavelet)


# ----------------------------------------------------------------- validation


def _validate(ds: pydicom.Dataset, *, max_pixels: int, path: Path | None) -> _PixelSpec:
    """Check every rule of the module docstring before anything is decoded."""
    where = _where(path)
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedImageError(f"{where}float pixel data is not a radiograph")
        raise NoPixelDataError(f"{where}PixelData is missing")

    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not transfer_syntax:
        raise MissingAttributeError(f"{where}TransferSyntaxUID is missing")
    transfer_syntax = UID(str(transfer_syntax))
    if transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise UnsupportedTransferSyntaxError(
            f"{where}TransferSyntaxUID {transfer_syntax} ({transfer_syntax.name}) is not supported"
        )

    samples = _required_int(ds, "SamplesPerPixel", where, default=1)
    if samples != 1:
        raise UnsupportedImageError(f"{where}SamplesPerPixel {samples} is not 1 (greyscale)")
    photometric = _optional_text(ds, "PhotometricInterpretation")
    if photometric is None:
        raise MissingAttributeError(f"{where}PhotometricInterpretation is missing")
    if photometric not in _ACCEPTED_PHOTOMETRIC:
        raise UnsupportedImageError(
            f"{where}PhotometricInterpretation '{photometric}' is not MONOCHROME1/MONOCHROME2"
        )
    frames = _required_int(ds, "NumberOfFrames", where, default=1)
    if frames < 1:
        raise InvalidAttributeError(f"{where}NumberOfFrames {frames} is not positive")
    if frames > 1:
        raise UnsupportedImageError(f"{where}NumberOfFrames {frames}: only single frames")

    bits_allocated = _required_int(ds, "BitsAllocated", where)
    if bits_allocated not in (8, 16):
        raise UnsupportedImageError(f"{where}BitsAllocated {bits_allocated} is not 8 or 16")
    bits_stored = _required_int(ds, "BitsStored", where, default=bits_allocated)
    if bits_stored == 1:
        raise UnsupportedImageError(f"{where}BitsStored 1: bilevel images are not radiographs")
    if not 2 <= bits_stored <= bits_allocated:
        raise InvalidAttributeError(
            f"{where}BitsStored {bits_stored} not in 2..BitsAllocated ({bits_allocated})"
        )
    representation = _required_int(ds, "PixelRepresentation", where, default=0)
    if representation not in (0, 1):
        raise InvalidAttributeError(f"{where}PixelRepresentation {representation} is not 0 or 1")

    rows = _required_int(ds, "Rows", where)
    columns = _required_int(ds, "Columns", where)
    _check_size(rows, columns, max_pixels, path)

    if transfer_syntax in _NATIVE_SYNTAXES:
        expected = rows * columns * bits_allocated // 8
        actual = len(ds.PixelData)
        if actual < expected:
            raise TruncatedFileError(
                f"{where}PixelData holds {actual} bytes, Rows*Columns*BitsAllocated/8 "
                f"needs {expected}"
            )
    return _PixelSpec(
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=representation == 1,
        monochrome1=photometric == "MONOCHROME1",
        transfer_syntax=transfer_syntax,
    )


def _required_int(ds: pydicom.Dataset, keyword: str, where: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise MissingAttributeError(f"{where}{keyword} is missing")
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise InvalidAttributeError(f"{where}{keyword} {value!r} is not an integer") from e


def _optional_int(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _optional_text(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _choose_voi(ds: pydicom.Dataset, path: Path | None) -> _Voi:
    """First window if present and sane, else VOI LUT sequence, else min-max."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None and center != "" and width != "":
        try:
            first_center = float(center[0] if _is_multi(center) else center)
            first_width = float(width[0] if _is_multi(width) else width)
        except (TypeError, ValueError, IndexError):
            first_center, first_width = math.nan, math.nan
        function = (_optional_text(ds, "VOILUTFunction") or "LINEAR").upper()
        # PS3.3 C.11.2.1.2: LINEAR needs width >= 1, the other functions width > 0.
        wide_enough = first_width >= 1.0 if function == "LINEAR" else first_width > 0.0
        if math.isfinite(first_center) and math.isfinite(first_width) and wide_enough:
            return _Window(first_center, first_width, function)
        logger.warning(
            "%sWindowCenter %r / WindowWidth %r unusable; window ignored",
            _where(path),
            center,
            width,
        )
    sequence = ds.get("VOILUTSequence")
    if sequence:
        return "lut"
    return "minmax"


def _is_multi(value: object) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


# ------------------------------------------------------------------- decoding


def _decode_stored(
    ds: pydicom.Dataset, spec: _PixelSpec, *, size: int, path: Path | None
) -> tuple[np.ndarray, float, _Wavelet | None]:
    """Stored values, possibly at reduced resolution, the reduction factor, and the
    JPEG 2000 wavelet when the values are its low-pass band."""
    if spec.transfer_syntax in _NATIVE_SYNTAXES:
        return _native_stored(ds, spec), 1.0, None
    if spec.transfer_syntax in _JPEG2000_SYNTAXES:
        _check_j2k_dimensions(ds, spec, path)
        reduced = _jpeg2000_reduced(ds, spec, size=size, path=path)
        if reduced is not None:
            return reduced
    if spec.transfer_syntax == JPEGBaseline8Bit:
        drafted = _jpeg_baseline_draft(ds, spec, size=size, path=path)
        if drafted is not None:
            return (*drafted, None)
    try:
        stored = _pixel_array(ds, spec.transfer_syntax)
    except Exception as e:
        raise DecodeError(
            f"{_where(path)}cannot decode {spec.transfer_syntax.name} PixelData: "
            f"{type(e).__name__}: {e}"
        ) from e
    if stored.shape != (spec.rows, spec.columns):
        raise DecodeError(
            f"{_where(path)}decoded shape {stored.shape} != Rows x Columns "
            f"{(spec.rows, spec.columns)}"
        )
    return _mask_to_bits_stored(stored, spec), 1.0, None


def _pixel_array(ds: pydicom.Dataset, transfer_syntax: UID) -> np.ndarray:
    plugin = _PREFERRED_PLUGIN.get(transfer_syntax)
    if plugin is not None:
        try:
            return np.asarray(pydicom.pixels.pixel_array(ds, decoding_plugin=plugin))
        except Exception:
            logger.debug("decoder %s failed for %s; trying the others", plugin,
                         transfer_syntax.name, exc_info=True)
    return np.asarray(pydicom.pixels.pixel_array(ds))


def _native_stored(ds: pydicom.Dataset, spec: _PixelSpec) -> np.ndarray:
    """Read uncompressed pixel data straight from the bytes (no copy until masking)."""
    kind = "i" if spec.signed else "u"
    dtype = np.dtype(f"{kind}{spec.bits_allocated // 8}")
    if spec.transfer_syntax == ExplicitVRBigEndian:
        dtype = dtype.newbyteorder(">")
    else:
        dtype = dtype.newbyteorder("<")
    count = spec.rows * spec.columns
    stored = np.frombuffer(ds.PixelData, dtype=dtype, count=count).reshape(spec.rows, spec.columns)
    if not stored.dtype.isnative:
        stored = stored.astype(stored.dtype.newbyteorder("="))
    return _mask_to_bits_stored(stored, spec)


def _mask_to_bits_stored(stored: np.ndarray, spec: _PixelSpec) -> np.ndarray:
    """Drop bits above BitsStored (overlays, junk); sign-extend signed values."""
    if spec.bits_stored >= spec.bits_allocated or stored.dtype.itemsize * 8 != spec.bits_allocated:
        return stored
    mask = (1 << spec.bits_stored) - 1
    unsigned = stored.view(np.dtype(f"u{stored.dtype.itemsize}"))
    if not spec.signed:
        return unsigned & unsigned.dtype.type(mask)
    sign = 1 << (spec.bits_stored - 1)
    flipped = (unsigned & unsigned.dtype.type(mask)) ^ unsigned.dtype.type(sign)
    signed = flipped.astype(np.dtype(f"i{stored.dtype.itemsize}"))
    return signed - signed.dtype.type(sign)


def _first_frame(ds: pydicom.Dataset) -> bytes:
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _reduction_for(spec: _PixelSpec, size: int, max_levels: int, *, margin: int = 2) -> int:
    """Largest r such that the 2**r-reduced image keeps min side >= margin * size."""
    levels = 0
    while levels < max_levels:
        factor = 2 ** (levels + 1)
        smaller = min(-(-spec.rows // factor), -(-spec.columns // factor))
        if smaller < margin * size:
            break
        levels += 1
    return levels


def _jpeg2000_reduced(
    ds: pydicom.Dataset, spec: _PixelSpec, *, size: int, path: Path | None
) -> tuple[np.ndarray, float, _Wavelet] | None:
    """Decode only the wavelet levels needed (Pillow/OpenJPEG ``reduce``).

    The bundled ``openjpeg`` package has no reduced-resolution decode, Pillow's
    OpenJPEG binding does. Returns the low-pass band (stored values), its factor
    and its wavelet, or None to ask for a full decode (signed data, an unexpected
    codestream, or any decoder error).
    """
    if spec.signed:
        return None
    try:
        frame = _first_frame(ds)
        info = _j2k_codestream_info(frame)
    except Exception:
        return None
    if info.signed or not 1 <= info.precision <= 16 or not info.origin_at_zero:
        return None
    # Keep >= 2 * size. With the band at ``size`` (one level deeper) the answers move
    # by up to 0.02 on real films even with the exact resampling of _wavelet_box_matrix:
    # the box bins of the reference keep detail that the band has already dropped.
    levels = _reduction_for(spec, size, max_levels=info.levels, margin=2)
    if levels == 0:
        return None
    # Some codestreams refuse deep reductions; fewer levels still beat a full decode.
    for reduce in range(levels, 0, -1):
        factor = 2**reduce
        expected = (-(-spec.rows // factor), -(-spec.columns // factor))
        try:
            with Image.open(io.BytesIO(frame)) as image:
                if image.size != (spec.columns, spec.rows) or image.mode not in ("L", "I;16"):
                    return None
                # Pillow sizes the reduced image as round(side / factor), OpenJPEG as
                # ceil(side / factor), and refuses the decode where they differ (e.g.
                # 1841 columns at reduce 2): announce sides that round to the ceiling.
                image._size = (expected[1] * factor, expected[0] * factor)
                image.reduce = reduce  # type: ignore[method-assign,assignment]
                image.load()
                decoded = np.asarray(image)
                # Pillow scales samples up to the full 8 or 16 bits of its mode.
                shift = (8 if image.mode == "L" else 16) - info.precision
                if shift > 0:
                    decoded = decoded >> decoded.dtype.type(shift)
        except Exception as e:
            logger.debug("%sJPEG 2000 reduce=%d failed: %s", _where(path), reduce, e)
            continue
        if decoded.shape != expected:
            return None
        wavelet: _Wavelet = "5-3" if info.reversible else "9-7"
        return _mask_to_bits_stored(decoded, spec), float(factor), wavelet
    return None


def _check_j2k_dimensions(ds: pydicom.Dataset, spec: _PixelSpec, path: Path | None) -> None:
    """Refuse a JPEG 2000 codestream whose SIZ declares another image size than Rows x
    Columns: decoders allocate what the codestream says, and Rows x Columns is what
    CXR_MAX_PIXELS checked (a fuzzed byte made a 3 kB file allocate 260 MB)."""
    try:
        frame = _first_frame(ds)
    except Exception:
        return  # the decoder reports unreadable pixel data itself
    siz = frame.find(b"\xff\x51", 0, 64)
    if not frame.startswith(b"\xff\x4f") or siz < 0 or len(frame) < siz + 22:
        return
    x_siz, y_siz, x_offset, y_offset = (
        int.from_bytes(frame[siz + k : siz + k + 4], "big") for k in (6, 10, 14, 18)
    )
    width, height = x_siz - x_offset, y_siz - y_offset
    if (height, width) != (spec.rows, spec.columns):
        raise DecodeError(
            f"{_where(path)}JPEG 2000 codestream is {width}x{height}, but Columns x Rows "
            f"is {spec.columns}x{spec.rows}"
        )


@dataclass(frozen=True)
class _J2kInfo:
    """What the main header of a JPEG 2000 codestream says about component 0."""

    precision: int
    signed: bool
    levels: int
    reversible: bool  # 5-3 wavelet (else 9-7)
    origin_at_zero: bool  # image and tile offsets 0: band sample k sits at 2**r * k


def _j2k_codestream_info(frame: bytes) -> _J2kInfo:
    """Read SIZ and COD of a J2K codestream's main header (marker segments up to SOT).

    Raises ValueError for anything unexpected, including a COC or a second COD
    (per-component coding style): the caller then decodes in full.
    """
    if not frame.startswith(b"\xff\x4f\xff\x51"):
        raise ValueError("no SOC/SIZ at the start of the JPEG 2000 codestream")
    siz = cod = -1
    position = 2
    while True:
        if position + 4 > len(frame) or frame[position] != 0xFF:
            raise ValueError("JPEG 2000 main header ends before its first tile")
        marker = frame[position + 1]
        if marker == 0x90:  # SOT: the main header is over
            break
        length = int.from_bytes(frame[position + 2 : position + 4], "big")
        if length < 2 or position + 2 + length > len(frame):
            raise ValueError("JPEG 2000 marker segment runs past the codestream")
        if marker == 0x51:
            siz = position
        elif marker == 0x52 and cod < 0:
            cod = position
        elif marker in (0x52, 0x53):
            raise ValueError("JPEG 2000 coding style differs per component")
        position += 2 + length
    if siz < 0 or cod < 0 or len(frame) < siz + 41 or len(frame) < cod + 14:
        raise ValueError("no complete SIZ/COD in the JPEG 2000 main header")
    x_offset, y_offset, tile_x_offset, tile_y_offset = (
        int.from_bytes(frame[siz + k : siz + k + 4], "big") for k in (14, 18, 30, 34)
    )
    ssiz = frame[siz + 40]
    return _J2kInfo(
        precision=(ssiz & 0x7F) + 1,
        signed=bool(ssiz & 0x80),
        levels=frame[cod + 9],
        reversible=frame[cod + 13] == 1,
        origin_at_zero=x_offset == y_offset == tile_x_offset == tile_y_offset == 0,
    )


def _jpeg_baseline_draft(
    ds: pydicom.Dataset, spec: _PixelSpec, *, size: int, path: Path | None
) -> tuple[np.ndarray, float] | None:
    """Decode 8-bit baseline JPEG with DCT scaling (1/2, 1/4, 1/8) via Pillow."""
    if spec.bits_allocated != 8 or spec.signed:
        return None
    try:
        frame = _first_frame(ds)
        with Image.open(io.BytesIO(frame)) as image:
            if image.mode != "L" or image.size != (spec.columns, spec.rows):
                return None
            scale = min(spec.rows, spec.columns) / (2 * size)
            if scale >= 2:
                image.draft("L", (int(spec.columns / scale), int(spec.rows / scale)))
            decoded = np.asarray(image)
    except Exception as e:
        logger.debug("%sJPEG draft decode failed: %s", _where(path), e)
        return None
    factor = spec.columns / decoded.shape[1]
    if abs(spec.rows / factor - decoded.shape[0]) >= 1.0:
        return None
    return _mask_to_bits_stored(decoded, spec), factor


# ------------------------------------------------------------------ processing


def _stored_to_image(
    stored: np.ndarray,
    factor: float,
    ds: pydicom.Dataset,
    spec: _PixelSpec,
    *,
    size: int,
    path: Path | None,
    wavelet: _Wavelet | None = None,
) -> np.ndarray:
    """Modality LUT, VOI, MONOCHROME1 inversion, resize and normalisation.

    ``stored`` may already be reduced by ``factor``: a JPEG 2000 low-pass band when
    ``wavelet`` is given, resampled by :func:`_wavelet_box_matrix`. Tables
    (Modality LUT Sequence, VOI LUT Sequence) are applied at full resolution by
    pydicom; the common linear case is applied after block averaging, in float32.
    """
    voi = _choose_voi(ds, path)
    values: np.ndarray = stored
    modality_done = voi_done = False
    if "ModalityLUTSequence" in ds or voi == "lut":
        values = pydicom.pixels.apply_modality_lut(stored, ds)
        modality_done = True
        if voi == "lut":
            values = pydicom.pixels.apply_voi(values, ds, 0)
            voi_done = True

    rows, columns = values.shape
    if wavelet is not None:
        if isinstance(voi, _Window) and not voi_done and not modality_done:
            values = _clip_to_window(values, voi, ds, path)
        levels = round(math.log2(factor))
        row_matrix = _wavelet_box_matrix(spec.rows, size, levels, wavelet)
        column_matrix = _wavelet_box_matrix(spec.columns, size, levels, wavelet)
        small = row_matrix @ (values.astype(np.float32) @ column_matrix.T)
        box = None
    elif rows >= size and columns >= size and values.dtype.kind in "ui":
        # A linear window is affine between its clip points: clipping the stored
        # integers there first makes "average, then window" equal "window, then
        # average" (to a rounding of the clip points), so the mean comes first.
        if isinstance(voi, _Window) and not voi_done and not modality_done:
            values = _clip_to_window(values, voi, ds, path)
        small = _area_mean(values, size)
        box = None
    else:
        block = max(1, min(values.shape) // (2 * size))
        small = _block_mean(values, block)
        # Extent of the original image in ``small``'s pixel units (edges may be partial).
        box = (0.0, 0.0, spec.columns / factor / block, spec.rows / factor / block)

    if not modality_done:
        small = _apply_rescale(small, ds, path)
    if isinstance(voi, _Window) and not voi_done:
        small = _apply_window(small, voi)
    # Min-max VOI is a linear map: normalise_to_uint8 absorbs it, so skip it.
    if spec.monochrome1:
        small = -small
    if small.shape == (size, size):
        return normalise_to_uint8(small)
    return normalise_to_uint8(_resize_float(small, (size, size), box=box))


#: JPEG 2000 9-7 lifting constants (ITU-T T.800 Annex F): alpha, beta, gamma, and K.
_ALPHA_97, _BETA_97, _GAMMA_97 = -1.586134342059924, -0.052980118572961, 0.882911075530934
_K_97 = 1.230174104914001


@lru_cache(maxsize=64)
def _wavelet_box_matrix(
    length: int, size: int, levels: int, wavelet: _Wavelet
) -> npt.NDArray[np.float32]:
    """``(size, n)`` matrix taking a J2K low-pass band of ``n`` samples (``levels``
    below a side of ``length``) to the means of Pillow's BOX bins over the full side.

    The band is synthesised back to ``length`` samples with all detail bands zero
    (the decoder's own inverse transform, whole-sample symmetric extension, band
    sample ``k`` at full-resolution sample ``2**levels * k``), then averaged over
    each bin of :func:`_box_starts`. Resampling the band as if it were already a box
    mean moves every sample by up to half an output pixel and keeps the 9-7 band's
    sharper spectrum: answers moved by 0.01 where this moves them by 0.001.
    """
    lengths = [length]
    for _ in range(levels):
        lengths.append(-(-lengths[-1] // 2))
    synthesis = np.eye(lengths[-1], dtype=np.float64)
    for level in range(levels, 0, -1):
        synthesis = _synthesise_low(synthesis, lengths[level - 1], wavelet)
    starts = _box_starts(length, size)
    counts = np.diff(np.append(starts, length))
    matrix = np.add.reduceat(synthesis, starts, axis=0) / counts[:, np.newaxis]
    result = matrix.astype(np.float32)
    result.flags.writeable = False
    return result


def _synthesise_low(low: np.ndarray, length: int, wavelet: _Wavelet) -> np.ndarray:
    """One level of 1-D J2K inverse DWT along axis 0 with a zero high-pass band."""
    n_even, n_odd = (length + 1) // 2, length // 2
    if low.shape[0] != n_even:
        raise ValueError(f"low-pass band of {low.shape[0]} samples cannot make {length}")

    def right(even: np.ndarray) -> np.ndarray:  # even[n + 1] for each odd n, mirrored
        return even[1 : n_odd + 1] if n_even > n_odd else np.concatenate([even[1:], even[-1:]])

    if wavelet == "5-3":
        even = low
        odd = (low[:n_odd] + right(low)) / 2
    else:
        even = low * _K_97
        odd = -_GAMMA_97 * (even[:n_odd] + right(even))
        left = np.concatenate([odd[:1], odd[: n_even - 1]])  # odd[n - 1], mirrored
        ahead = odd if n_even == n_odd else np.concatenate([odd, odd[-1:]])
        even = even - _BETA_97 * (left + ahead)
        odd = odd - _ALPHA_97 * (even[:n_odd] + right(even))
    out = np.empty((length, *low.shape[1:]), dtype=low.dtype)
    out[0::2] = even
    out[1::2] = odd
    return out


def _box_starts(length: int, size: int) -> npt.NDArray[np.intp]:
    """First source index of each of ``size`` bins, as Pillow's BOX filter forms them.

    Pillow (``Resample.c``) keeps source pixel ``j`` for output ``i`` when
    ``-0.5 < (j + 0.5 - (i + 0.5) * scale) / scale <= 0.5``, ``scale = length / size``
    (downscaling only): contiguous bins that tile the source. Computed in float64
    like Pillow, so the boundaries match its own.
    """
    scale = length / size
    centers = (np.arange(size, dtype=np.float64) + 0.5) * scale
    # Smallest j with (j + 0.5 - center) / scale > -0.5.
    starts = np.floor(centers - 0.5 * scale - 0.5).astype(np.intp) + 1
    fix = (starts - 1 + 0.5 - centers) / scale > -0.5
    starts[fix] -= 1
    return np.clip(starts, 0, length)


def _area_mean(values: np.ndarray, size: int) -> npt.NDArray[np.float32]:
    """Pillow BOX downscale of integer ``values`` to ``(size, size)``, summed in integers.

    Equal to ``resize_square`` of the same values (up to float32 rounding) at a
    fraction of the cost: one pass over the source, one contiguous slice sum per
    output row, no float copy of the full image.
    """
    rows, columns = values.shape
    # A row bin holds fewer than 65536 rows of 16-bit values: 32 bits cannot overflow.
    accumulator: type[np.integer] = np.int64 if values.dtype.kind == "i" else np.uint64
    if values.dtype.itemsize <= 2:
        accumulator = np.int32 if values.dtype.kind == "i" else np.uint32
    row_starts = _box_starts(rows, size)
    row_ends = np.append(row_starts[1:], rows)
    summed = np.empty((size, columns), dtype=accumulator)
    for i in range(size):
        values[row_starts[i] : row_ends[i]].sum(axis=0, dtype=accumulator, out=summed[i])
    column_starts = _box_starts(columns, size)
    column_counts = np.diff(np.append(column_starts, columns))
    if np.all(column_counts == column_counts[0]) and column_starts[0] == 0:
        tiles = summed.reshape(size, size, int(column_counts[0])).sum(axis=2, dtype=np.int64)
    else:
        tiles = np.add.reduceat(summed.astype(np.int64), column_starts, axis=1)
    counts = np.outer(row_ends - row_starts, column_counts).astype(np.float64)
    return (tiles / counts).astype(np.float32)


def _clip_to_window(
    values: np.ndarray, window: _Window, ds: pydicom.Dataset, path: Path | None
) -> np.ndarray:
    """Clip stored integers to the values where a linear window reaches 0 and 1."""
    if window.function == "SIGMOID":
        return values
    if window.function == "LINEAR_EXACT":
        low, high = window.center - window.width / 2, window.center + window.width / 2
    else:
        half = (max(window.width - 1.0, 1e-3)) / 2
        low, high = window.center - 0.5 - half, window.center - 0.5 + half
    slope_value, intercept_value = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    try:
        slope = 1.0 if slope_value in (None, "") else float(slope_value)
        intercept = 0.0 if intercept_value in (None, "") else float(intercept_value)
    except (TypeError, ValueError):
        return values  # _apply_rescale reports it
    if slope == 0.0 or not (math.isfinite(slope) and math.isfinite(intercept)):
        return values
    ends = sorted(((low - intercept) / slope, (high - intercept) / slope))
    info = np.iinfo(values.dtype)
    lowest = int(max(info.min, min(info.max, round(ends[0]))))
    highest = int(max(info.min, min(info.max, round(ends[1]))))
    if lowest > highest:
        return values
    return np.clip(values, values.dtype.type(lowest), values.dtype.type(highest))


def _block_mean(values: np.ndarray, block: int) -> npt.NDArray[np.float32]:
    """Mean over ``block x block`` tiles; the last row/column of tiles may be partial."""
    if block == 1:
        return values.astype(np.float32)
    if values.dtype.kind == "u":
        accumulator: type[np.generic] = np.uint32 if values.dtype.itemsize <= 2 else np.float64
    elif values.dtype.kind == "i":
        accumulator = np.int32 if values.dtype.itemsize <= 2 else np.float64
    else:
        accumulator = np.float64
    rows, columns = values.shape
    full_rows, full_columns = rows // block * block, columns // block * block

    row_sums = values[:full_rows].reshape(full_rows // block, block, columns)
    summed = row_sums.sum(axis=1, dtype=accumulator)
    row_counts = [block] * (full_rows // block)
    if full_rows < rows:
        tail = values[full_rows:].sum(axis=0, dtype=accumulator)
        summed = np.vstack([summed, tail[np.newaxis, :]])
        row_counts.append(rows - full_rows)

    tiles = summed[:, :full_columns].reshape(summed.shape[0], full_columns // block, block)
    tile_sums = tiles.sum(axis=2, dtype=accumulator)
    column_counts = [block] * (full_columns // block)
    if full_columns < columns:
        tail = summed[:, full_columns:].sum(axis=1, dtype=accumulator)
        tile_sums = np.hstack([tile_sums, tail[:, np.newaxis]])
        column_counts.append(columns - full_columns)

    counts = np.outer(
        np.asarray(row_counts, dtype=np.float32), np.asarray(column_counts, dtype=np.float32)
    )
    return (tile_sums.astype(np.float32) / counts).astype(np.float32)


def _apply_rescale(values: np.ndarray, ds: pydicom.Dataset, path: Path | None) -> np.ndarray:
    slope_value, intercept_value = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    try:
        slope = 1.0 if slope_value in (None, "") else float(slope_value)
        intercept = 0.0 if intercept_value in (None, "") else float(intercept_value)
    except (TypeError, ValueError) as e:
        raise InvalidAttributeError(
            f"{_where(path)}RescaleSlope {slope_value!r} / RescaleIntercept "
            f"{intercept_value!r} not numbers"
        ) from e
    if slope == 1.0 and intercept == 0.0:
        return values
    return values * np.float32(slope) + np.float32(intercept)


def _apply_window(values: np.ndarray, window: _Window) -> npt.NDArray[np.float32]:
    """DICOM PS3.3 C.11.2.1.2 windowing to [0, 1], in float32."""
    x = np.asarray(values, dtype=np.float32)
    center, width = np.float32(window.center), np.float32(window.width)
    if window.function == "SIGMOID":
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(np.float32(-4.0) * (x - center) / width))).astype(
                np.float32
            )
    if window.function == "LINEAR_EXACT":
        scaled = (x - center) / width + np.float32(0.5)
    else:
        denominator = max(float(width) - 1.0, 1e-3)
        scaled = (x - (center - np.float32(0.5))) / np.float32(denominator) + np.float32(0.5)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)
