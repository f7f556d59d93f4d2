"""The entry points: files and datasets to ``(size, size)`` uint8 model input.

They compose the other modules: :mod:`~cxr_orient.imaging.reading` (bytes to a
dataset), :mod:`~cxr_orient.imaging.validation` (checks before decoding),
:mod:`~cxr_orient.imaging.decoders` (stored values, possibly reduced) and
:mod:`~cxr_orient.imaging.processing` (the pixel steps), all inside
:func:`~cxr_orient.imaging.errors.errors_named` so that only
:mod:`cxr_orient.errors` classes come out.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
from PIL import Image, ImageOps

from cxr_orient.errors import DecodeError
from cxr_orient.imaging.decoders import Decoded, PixelSpec, decode_stored
from cxr_orient.imaging.errors import errors_named, require_file
from cxr_orient.imaging.limits import DEFAULT_MAX_PIXELS
from cxr_orient.imaging.processing import (
    Window,
    apply_modality_lut,
    apply_rescale,
    apply_voi_lut,
    apply_window,
    area_mean,
    block_mean,
    clip_to_window,
    invert,
    normalise_to_uint8,
    resize_box,
    resize_square,
)
from cxr_orient.imaging.reading import inflated_size_limit, read_dataset
from cxr_orient.imaging.validation import (
    check_size,
    choose_voi,
    read_rescale,
    validate_pixel_spec,
)
from cxr_orient.imaging.wavelet import wavelet_box_matrix

__all__ = [
    "MODEL_INPUT_SIZE",
    "dataset_to_image",
    "decode_dataset",
    "load_dicom_image",
    "load_dicom_image_naive",
    "load_image_file",
    "stored_to_image",
]

MODEL_INPUT_SIZE = 256
"""Side of the square greyscale image every model takes."""

_PILLOW_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


# ------------------------------------------------------------------ PNG / JPEG


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
    with errors_named(path):
        require_file(path)
        try:
            with Image.open(path) as opened:
                columns, rows = opened.size
                check_size(rows, columns, max_pixels, path)
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


# ----------------------------------------------------------------------- DICOM


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
    with errors_named(path):
        ds = read_dataset(
            path,
            stop_before_pixels=False,
            data=data,
            inflate_limit=inflated_size_limit(max_pixels),
        )
        return decode_dataset(ds, size=size, max_pixels=max_pixels, path=path)


def dataset_to_image(
    ds: pydicom.Dataset, *, size: int = MODEL_INPUT_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """The fast path of :func:`load_dicom_image`, for a dataset already read."""
    filename = getattr(ds, "filename", None)
    path = Path(filename) if isinstance(filename, str) and filename else None
    with errors_named(path):
        return decode_dataset(ds, size=size, max_pixels=max_pixels, path=path)


def load_dicom_image_naive(path: Path, *, size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    """Reference decoder: full-resolution pydicom processing in float64.

    ``pixel_array`` -> ``apply_modality_lut`` -> VOI (``apply_windowing`` or
    ``apply_voi``, chosen as in the package docstring) -> min-max to [0, 1] ->
    MONOCHROME1 inverted -> :func:`resize_square` -> :func:`normalise_to_uint8`.
    Slow; used by tests and benchmarks to check :func:`load_dicom_image`.
    """
    path = Path(path)
    with errors_named(path):
        ds = read_dataset(path, stop_before_pixels=False)
        spec = validate_pixel_spec(ds, max_pixels=DEFAULT_MAX_PIXELS, path=path)
        stored = pydicom.pixels.pixel_array(ds)
        values = apply_modality_lut(stored, ds)
        voi = choose_voi(ds, path)
        if isinstance(voi, Window):
            values = pydicom.pixels.apply_windowing(np.asarray(values, dtype=np.float64), ds, 0)
        elif voi == "lut":
            values = apply_voi_lut(values, ds)
        values = np.asarray(values, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        if spec.monochrome1:
            values = 1.0 - values
        return normalise_to_uint8(resize_square(values, size))


def decode_dataset(
    ds: pydicom.Dataset, *, size: int, max_pixels: int, path: Path | None
) -> np.ndarray:
    """Validate, decode and process ``ds`` (the fast path), without the error wrapping
    of :func:`dataset_to_image`; ``path`` only names the file in errors."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    spec = validate_pixel_spec(ds, max_pixels=max_pixels, path=path)
    decoded = decode_stored(ds, spec, size=size, path=path)
    return stored_to_image(decoded, ds, spec, size=size, path=path)


def stored_to_image(
    decoded: Decoded, ds: pydicom.Dataset, spec: PixelSpec, *, size: int, path: Path | None
) -> np.ndarray:
    """Modality LUT, VOI, MONOCHROME1 inversion, resize and normalisation.

    ``decoded.stored`` may already be reduced by ``decoded.factor``: a JPEG 2000
    low-pass band when ``decoded.wavelet`` is set, resampled by
    :func:`~cxr_orient.imaging.wavelet.wavelet_box_matrix`. Tables (Modality LUT
    Sequence, VOI LUT Sequence) are applied at full resolution by pydicom; the common
    linear case is applied after block averaging, in float32.
    """
    stored, factor, wavelet = decoded
    voi = choose_voi(ds, path)
    window = voi if isinstance(voi, Window) else None
    values: np.ndarray = stored
    rescale: tuple[float, float] | None = None  # None: applied with the tables
    if "ModalityLUTSequence" in ds or voi == "lut":
        values = apply_modality_lut(stored, ds)
        if voi == "lut":
            values = apply_voi_lut(values, ds)
    else:
        rescale = read_rescale(ds, path)

    rows, columns = values.shape
    if wavelet is not None:
        if window is not None and rescale is not None:
            values = clip_to_window(values, window, *rescale)
        levels = round(math.log2(factor))
        row_matrix = wavelet_box_matrix(spec.rows, size, levels, wavelet)
        column_matrix = wavelet_box_matrix(spec.columns, size, levels, wavelet)
        small = row_matrix @ (values.astype(np.float32) @ column_matrix.T)
        box = None
    elif rows >= size and columns >= size and values.dtype.kind in "ui":
        # A linear window is affine between its clip points: clipping the stored
        # integers there first makes "average, then window" equal "window, then
        # average" (to a rounding of the clip points), so the mean comes first.
        if window is not None and rescale is not None:
            values = clip_to_window(values, window, *rescale)
        small = area_mean(values, size)
        box = None
    else:
        block = max(1, min(values.shape) // (2 * size))
        small = block_mean(values, block)
        # Extent of the original image in ``small``'s pixel units (edges may be partial).
        box = (0.0, 0.0, spec.columns / factor / block, spec.rows / factor / block)

    if rescale is not None:
        small = apply_rescale(small, *rescale)
    if window is not None:
        small = apply_window(small, window)
    # Min-max VOI is a linear map: normalise_to_uint8 absorbs it, so skip it.
    if spec.monochrome1:
        small = invert(small)
    if small.shape == (size, size):
        return normalise_to_uint8(small)
    return normalise_to_uint8(resize_box(small, (size, size), box=box))
