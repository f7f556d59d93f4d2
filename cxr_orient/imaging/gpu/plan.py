"""Which datasets the card decodes, and what it needs to know about each.

:func:`plan_card_job` is run on the CPU, in the decode threads, after the file is read
and its pixel attributes validated; it returns a :class:`CardJob` (the first frame's
codestream and the few numbers the card's steps need) or None where the CPU path must
decode: another transfer syntax, signed pixels, a *ModalityLUTSequence* or
*VOILUTSequence* (tables are applied by pydicom on the CPU), an image smaller than the
output, or a JPEG 2000 codestream the header reader does not understand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEG2000, UID, JPEG2000Lossless, JPEGBaseline8Bit

from cxr_orient.imaging.decoders import PixelSpec
from cxr_orient.imaging.decoders.base import first_frame
from cxr_orient.imaging.decoders.htj2k import HTJ2K_SYNTAXES
from cxr_orient.imaging.decoders.jpeg2000 import check_j2k_dimensions, j2k_codestream_info
from cxr_orient.imaging.processing import Window, window_clip_bounds
from cxr_orient.imaging.validation import choose_voi, read_rescale

__all__ = ["CARD_TRANSFER_SYNTAXES", "CardJob", "plan_card_job"]

_J2K_FAMILY = frozenset({JPEG2000Lossless, JPEG2000}) | HTJ2K_SYNTAXES

CARD_TRANSFER_SYNTAXES: frozenset[UID] = _J2K_FAMILY | {JPEGBaseline8Bit}
"""Transfer syntaxes the card decodes (nvJPEG2000: JPEG 2000 and HTJ2K; nvJPEG: JPEG
baseline). JPEG lossless and extended, JPEG-LS, RLE and the native syntaxes stay on
the CPU."""


@dataclass(frozen=True)
class CardJob:
    """One image for the card: the codestream, and how to turn its values into the
    model's input."""

    codestream: bytes
    rows: int
    columns: int
    #: Decoded values above this are clipped to it (a codestream whose precision exceeds
    #: BitsStored, as the CPU path clips its JPEG 2000 bands), or None.
    clip_max: int | None
    #: The stored-value clip points of a linear window (clipped before the averaging,
    #: as the CPU path does), or None.
    window_bounds: tuple[int, int] | None
    window: Window | None
    slope: float
    intercept: float
    monochrome1: bool
    path: Path | None


def plan_card_job(
    ds: pydicom.Dataset, spec: PixelSpec, *, size: int, path: Path | None
) -> CardJob | None:
    """A :class:`CardJob` for ``ds``, or None where the CPU path decodes it.

    A JPEG 2000 codestream whose size disagrees with Rows x Columns raises
    :class:`~cxr_orient.errors.DecodeError`, as on the CPU path.
    """
    if spec.transfer_syntax not in CARD_TRANSFER_SYNTAXES or spec.signed:
        return None
    if spec.rows < size or spec.columns < size or "ModalityLUTSequence" in ds:
        return None
    voi = choose_voi(ds, path)
    if voi == "lut":
        return None
    clip_max = None
    if spec.transfer_syntax in _J2K_FAMILY:
        check_j2k_dimensions(ds, spec, path)
        try:
            info = j2k_codestream_info(first_frame(ds))
        except Exception:
            return None
        if info.signed or not 1 <= info.precision <= 16:
            return None
        if info.precision > spec.bits_stored:
            clip_max = (1 << spec.bits_stored) - 1
    elif spec.bits_allocated != 8:
        return None
    try:
        codestream = first_frame(ds)
    except Exception:
        return None  # the CPU path reports unreadable pixel data itself
    slope, intercept = read_rescale(ds, path)
    window = voi if isinstance(voi, Window) else None
    dtype = np.uint8 if spec.bits_allocated == 8 else np.uint16
    bounds = window_clip_bounds(window, slope, intercept, dtype) if window else None
    return CardJob(codestream, spec.rows, spec.columns, clip_max, bounds, window, slope,
                   intercept, spec.monochrome1, path)
