"""Checks made before anything is decoded, and the attribute choices of the pipeline.

:func:`validate_pixel_spec` applies every rule of the package docstring's "accepted
images" to a dataset and returns its :class:`~cxr_orient.imaging.decoders.PixelSpec`;
:func:`check_size` is the size rule alone (also used for PNG/JPEG files).
:func:`choose_voi` picks the VOI step, :func:`read_rescale` parses the modality
rescale (*RescaleSlope*/*RescaleIntercept*), the one place that does.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.uid import UID

from cxr_orient.errors import (
    ImageTooLargeError,
    InvalidAttributeError,
    MissingAttributeError,
    NoPixelDataError,
    TruncatedFileError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
)
from cxr_orient.imaging.attributes import is_multi, optional_text, required_int
from cxr_orient.imaging.decoders import PixelSpec, decoder_for
from cxr_orient.imaging.errors import where as _where
from cxr_orient.imaging.limits import MAX_SIDE
from cxr_orient.imaging.processing import Window
from cxr_orient.imaging.reading import pixel_data_extent

__all__ = [
    "Voi",
    "check_pixel_data_complete",
    "check_size",
    "choose_voi",
    "read_rescale",
    "validate_pixel_spec",
]

logger = logging.getLogger(__name__)

_ACCEPTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")

Voi = Window | Literal["lut", "minmax"]
"""The VOI step: a window, the first VOI LUT Sequence table, or min-max."""


def check_size(rows: int, columns: int, max_pixels: int, path: Path | None) -> None:
    """Refuse sides that are not positive or exceed 65535, and more than ``max_pixels``."""
    if rows <= 0 or columns <= 0:
        raise InvalidAttributeError(f"{_where(path)}Rows {rows} / Columns {columns} not positive")
    if rows > MAX_SIDE or columns > MAX_SIDE:
        raise InvalidAttributeError(
            f"{_where(path)}Rows {rows} / Columns {columns} exceed {MAX_SIDE}"
        )
    if rows * columns > max_pixels:
        raise ImageTooLargeError(
            f"{_where(path)}Rows*Columns {rows}x{columns} = {rows * columns} "
            f"exceeds max_pixels {max_pixels}"
        )


def validate_pixel_spec(ds: pydicom.Dataset, *, max_pixels: int, path: Path | None) -> PixelSpec:
    """Check every rule of the package docstring before anything is decoded."""
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
    decoder = decoder_for(transfer_syntax)
    if decoder is None:
        raise UnsupportedTransferSyntaxError(
            f"{where}TransferSyntaxUID {transfer_syntax} ({transfer_syntax.name}) is not supported"
        )

    samples = required_int(ds, "SamplesPerPixel", where, default=1)
    if samples != 1:
        raise UnsupportedImageError(f"{where}SamplesPerPixel {samples} is not 1 (greyscale)")
    photometric = optional_text(ds, "PhotometricInterpretation")
    if photometric is None:
        raise MissingAttributeError(f"{where}PhotometricInterpretation is missing")
    if photometric not in _ACCEPTED_PHOTOMETRIC:
        raise UnsupportedImageError(
            f"{where}PhotometricInterpretation '{photometric}' is not MONOCHROME1/MONOCHROME2"
        )
    frames = required_int(ds, "NumberOfFrames", where, default=1)
    if frames < 1:
        raise InvalidAttributeError(f"{where}NumberOfFrames {frames} is not positive")
    if frames > 1:
        raise UnsupportedImageError(f"{where}NumberOfFrames {frames}: only single frames")

    bits_allocated = required_int(ds, "BitsAllocated", where)
    if bits_allocated not in (8, 16):
        raise UnsupportedImageError(f"{where}BitsAllocated {bits_allocated} is not 8 or 16")
    bits_stored = required_int(ds, "BitsStored", where, default=bits_allocated)
    if bits_stored == 1:
        raise UnsupportedImageError(f"{where}BitsStored 1: bilevel images are not radiographs")
    if not 2 <= bits_stored <= bits_allocated:
        raise InvalidAttributeError(
            f"{where}BitsStored {bits_stored} not in 2..BitsAllocated ({bits_allocated})"
        )
    representation = required_int(ds, "PixelRepresentation", where, default=0)
    if representation not in (0, 1):
        raise InvalidAttributeError(f"{where}PixelRepresentation {representation} is not 0 or 1")

    rows = required_int(ds, "Rows", where)
    columns = required_int(ds, "Columns", where)
    check_size(rows, columns, max_pixels, path)

    if not decoder.encapsulated:
        expected = rows * columns * bits_allocated // 8
        actual = len(ds.PixelData)
        if actual < expected:
            raise TruncatedFileError(
                f"{where}PixelData holds {actual} bytes, Rows*Columns*BitsAllocated/8 "
                f"needs {expected}"
            )
    return PixelSpec(
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=representation == 1,
        monochrome1=photometric == "MONOCHROME1",
        transfer_syntax=transfer_syntax,
    )


def check_pixel_data_complete(ds: pydicom.Dataset, *, path: Path | None) -> None:
    """Raise TruncatedFileError when a dataset read with its pixels (``read_dataset(...,
    stop_before_pixels=False)``) holds fewer native pixel bytes than Rows x Columns x
    SamplesPerPixel x BitsAllocated/8 x NumberOfFrames, or whose declared length runs
    past the end of the file (a 4 GB length): a file cut short that pydicom reads
    without a word. Encapsulated pixel data cut short (a fragment incomplete, no
    sequence delimiter) is already refused by the read itself. Nothing else is judged
    here (colour, frames, sizes are the worker's to record), so the network sources
    (STOW-RS, C-STORE) refuse an incomplete instance at once, before acknowledging it,
    with the one rule."""
    if "PixelData" not in ds:
        return
    file_meta = getattr(ds, "file_meta", None)
    syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not syntax or UID(str(syntax)).is_encapsulated:
        return
    actual = _pixel_bytes(ds, _where(path))
    try:
        factors = [
            int(ds.get(k) or d)
            for k, d in (("Rows", 0), ("Columns", 0), ("SamplesPerPixel", 1), ("NumberOfFrames", 1))
        ]
        bits_allocated = int(ds.get("BitsAllocated") or 0)
    except (TypeError, ValueError):
        return  # attributes the worker refuses with their own code
    expected = math.prod(factors) * bits_allocated // 8
    if actual < expected:
        raise TruncatedFileError(
            f"{_where(path)}PixelData holds {actual} bytes, Rows*Columns*SamplesPerPixel*"
            f"BitsAllocated/8*NumberOfFrames needs {expected}"
        )


def _pixel_bytes(ds: pydicom.Dataset, where: str) -> int:
    """The PixelData bytes there are, without reading a deferred value; an element whose
    declared length runs past the end of the file (a file cut short, or a crafted 4 GB
    length) is refused as such."""
    extent = pixel_data_extent(ds)
    if extent is None:
        return len(ds.PixelData)
    declared, there = extent
    if there < declared:
        raise TruncatedFileError(
            f"{where}PixelData declares {declared} bytes, the file holds {there}"
        )
    return declared


def read_rescale(ds: pydicom.Dataset, path: Path | None) -> tuple[float, float]:
    """(*RescaleSlope*, *RescaleIntercept*) as floats, (1.0, 0.0) where absent or empty.

    Raises InvalidAttributeError when either is not a number. Not checked for zero or
    non-finite values: those are the caller's to judge.
    """
    slope_value, intercept_value = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    try:
        slope = 1.0 if slope_value in (None, "") else float(slope_value)
        intercept = 0.0 if intercept_value in (None, "") else float(intercept_value)
    except (TypeError, ValueError) as e:
        raise InvalidAttributeError(
            f"{_where(path)}RescaleSlope {slope_value!r} / RescaleIntercept "
            f"{intercept_value!r} not numbers"
        ) from e
    return slope, intercept


def choose_voi(ds: pydicom.Dataset, path: Path | None) -> Voi:
    """First window if present and sane, else VOI LUT sequence, else min-max."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None and center != "" and width != "":
        try:
            first_center = float(center[0] if is_multi(center) else center)
            first_width = float(width[0] if is_multi(width) else width)
        except (TypeError, ValueError, IndexError):
            first_center, first_width = math.nan, math.nan
        function = (optional_text(ds, "VOILUTFunction") or "LINEAR").upper()
        # PS3.3 C.11.2.1.2: LINEAR needs width >= 1, the other functions width > 0.
        wide_enough = first_width >= 1.0 if function == "LINEAR" else first_width > 0.0
        if math.isfinite(first_center) and math.isfinite(first_width) and wide_enough:
            return Window(first_center, first_width, function)
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
