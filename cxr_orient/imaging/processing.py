"""Pure array steps of the pixel pipeline: arrays (and numbers) in, arrays out.

Modality rescale, VOI windowing and its clip points, MONOCHROME1 inversion, the
Pillow BOX resizes (float, integer area mean, block mean), percentile
normalisation, and the grey-to-RGB step the models take. Nothing here reads a file
or parses a DICOM attribute; the tables of a *ModalityLUTSequence* or
*VOILUTSequence* are applied by pydicom, from the dataset that holds them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pydicom
import pydicom.pixels
from PIL import Image

__all__ = [
    "Window",
    "apply_modality_lut",
    "apply_rescale",
    "apply_voi_lut",
    "apply_window",
    "area_mean",
    "block_mean",
    "box_starts",
    "clip_to_window",
    "invert",
    "normalise_to_uint8",
    "resize_box",
    "resize_square",
    "to_rgb",
    "window_clip_bounds",
]

_PERCENTILE_LOW = 0.5
_PERCENTILE_HIGH = 99.5


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): centre, width and *VOILUTFunction*."""

    center: float
    width: float
    function: str


# ------------------------------------------------------------------ normalisation


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


def to_rgb(grey: np.ndarray) -> np.ndarray:
    """Repeat a ``(H, W)`` grey image into three identical channels ``(H, W, 3)``."""
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {grey.shape}")
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)


# ------------------------------------------------------------------------ resizing


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Area-average ``image`` (2-D) to ``(size, size)`` float32; the aspect is not kept."""
    return resize_box(image, (size, size))


def resize_box(
    image: np.ndarray,
    shape: tuple[int, int],
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Pillow BOX (area-averaging) resize of a 2-D array to ``shape`` (rows, cols).

    ``box`` is the source region (left, upper, right, lower) in source pixels, as
    Pillow's ``resize`` takes it; the whole image when None.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    rows, cols = shape
    source = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    if source.size == (cols, rows) and box is None:
        return np.asarray(source, dtype=np.float32).copy()
    resized = source.resize((cols, rows), Image.Resampling.BOX, box=box)
    return np.asarray(resized, dtype=np.float32)


def box_starts(length: int, size: int) -> npt.NDArray[np.intp]:
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


def area_mean(values: np.ndarray, size: int) -> npt.NDArray[np.float32]:
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
    row_starts = box_starts(rows, size)
    row_ends = np.append(row_starts[1:], rows)
    summed = np.empty((size, columns), dtype=accumulator)
    for i in range(size):
        values[row_starts[i] : row_ends[i]].sum(axis=0, dtype=accumulator, out=summed[i])
    column_starts = box_starts(columns, size)
    column_counts = np.diff(np.append(column_starts, columns))
    if np.all(column_counts == column_counts[0]) and column_starts[0] == 0:
        tiles = summed.reshape(size, size, int(column_counts[0])).sum(axis=2, dtype=np.int64)
    else:
        tiles = np.add.reduceat(summed.astype(np.int64), column_starts, axis=1)
    counts = np.outer(row_ends - row_starts, column_counts).astype(np.float64)
    return (tiles / counts).astype(np.float32)


def block_mean(values: np.ndarray, block: int) -> npt.NDArray[np.float32]:
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


# -------------------------------------------------------------- modality and VOI


def apply_rescale(values: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Modality rescale ``values * slope + intercept`` in float32 (``values`` itself
    when the rescale is the identity)."""
    if slope == 1.0 and intercept == 0.0:
        return values
    return values * np.float32(slope) + np.float32(intercept)


def apply_modality_lut(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """The dataset's Modality LUT (its *ModalityLUTSequence* table, else its rescale), by
    pydicom."""
    return np.asarray(pydicom.pixels.apply_modality_lut(values, ds))


def apply_voi_lut(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """The first table of the dataset's *VOILUTSequence*, by pydicom."""
    return np.asarray(pydicom.pixels.apply_voi(values, ds, 0))


def clip_to_window(
    values: np.ndarray, window: Window, slope: float, intercept: float
) -> np.ndarray:
    """Clip stored integers to the values where a linear window reaches 0 and 1.

    ``slope`` and ``intercept`` are the modality rescale that comes between the stored
    values and the window. A linear window is affine between its clip points, so after
    this clip "average, then window" equals "window, then average" (to a rounding of
    the clip points). SIGMOID windows, and a zero or non-finite rescale, are left alone.
    """
    bounds = window_clip_bounds(window, slope, intercept, values.dtype)
    if bounds is None:
        return values
    return np.clip(values, values.dtype.type(bounds[0]), values.dtype.type(bounds[1]))


def window_clip_bounds(
    window: Window, slope: float, intercept: float, dtype: npt.DTypeLike
) -> tuple[int, int] | None:
    """The stored-value clip points of :func:`clip_to_window` for integers of ``dtype``,
    or None where nothing is to be clipped (the GPU path clips with them on the card)."""
    if window.function == "SIGMOID":
        return None
    if window.function == "LINEAR_EXACT":
        low, high = window.center - window.width / 2, window.center + window.width / 2
    else:
        half = (max(window.width - 1.0, 1e-3)) / 2
        low, high = window.center - 0.5 - half, window.center - 0.5 + half
    if slope == 0.0 or not (math.isfinite(slope) and math.isfinite(intercept)):
        return None
    ends = sorted(((low - intercept) / slope, (high - intercept) / slope))
    info = np.iinfo(np.dtype(dtype))
    lowest = int(max(info.min, min(info.max, round(ends[0]))))
    highest = int(max(info.min, min(info.max, round(ends[1]))))
    if lowest > highest:
        return None
    return lowest, highest


def apply_window(values: np.ndarray, window: Window) -> npt.NDArray[np.float32]:
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


def invert(values: np.ndarray) -> np.ndarray:
    """MONOCHROME1 to MONOCHROME2 ahead of :func:`normalise_to_uint8`: negation (the
    normalisation absorbs any offset, so no ``max - x`` is needed)."""
    return -values
