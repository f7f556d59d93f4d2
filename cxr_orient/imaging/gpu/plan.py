"""Which datasets the card decodes, and what it needs to know about each.

:func:`plan_card_job` is run on the CPU, in the decode threads, after the file is read
and its pixel attributes validated; it returns a :class:`CardJob` (the first frame's
codestream and the few numbers the card's steps need) or None where the CPU path must
decode: another transfer syntax, signed pixels, a *ModalityLUTSequence* or
*VOILUTSequence* (tables are applied by pydicom on the CPU), an image smaller than the
output, or a JPEG 2000 codestream the header reader does not understand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
)

from cxr_orient.imaging.decoders import PixelSpec
from cxr_orient.imaging.decoders.base import first_frame
from cxr_orient.imaging.decoders.htj2k import HTJ2K_SYNTAXES
from cxr_orient.imaging.decoders.jpeg2000 import check_j2k_dimensions, j2k_codestream_info
from cxr_orient.imaging.processing import Window, window_clip_bounds
from cxr_orient.imaging.validation import choose_voi, read_rescale

__all__ = [
    "CARD_SYNTAX_NAMES",
    "CARD_TRANSFER_SYNTAXES",
    "CardJob",
    "card_syntaxes",
    "plan_card_job",
]

_J2K_FAMILY = frozenset({JPEG2000Lossless, JPEG2000}) | HTJ2K_SYNTAXES
_JPEG_LOSSLESS = frozenset({JPEGLossless, JPEGLosslessSV1})
#: Uncompressed little endian (deflated is inflated when the file is read): the stored
#: values go to the card as they are.
_NATIVE = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)

CARD_SYNTAX_NAMES: dict[str, frozenset[UID]] = {
    "htj2k-lossless": frozenset({HTJ2KLossless, HTJ2KLosslessRPCL}),
    "htj2k-lossy": frozenset({HTJ2K}),
    "j2k-lossless": frozenset({JPEG2000Lossless}),
    "j2k-lossy": frozenset({JPEG2000}),
    "jpeg-baseline": frozenset({JPEGBaseline8Bit}),
    "jpeg-lossless": _JPEG_LOSSLESS,
    "native": _NATIVE,
}
"""The names ``CXR_CARD_SYNTAXES`` takes, and the transfer syntaxes each stands for."""

CARD_TRANSFER_SYNTAXES: frozenset[UID] = frozenset().union(*CARD_SYNTAX_NAMES.values())
"""Transfer syntaxes the card can take (nvJPEG2000: JPEG 2000 and HTJ2K; nvJPEG: JPEG
baseline and lossless; native little endian: copied as read). JPEG extended, JPEG-LS,
RLE and big endian stay on the CPU."""


def card_syntaxes(names: Iterable[str]) -> frozenset[UID]:
    """The transfer syntaxes of ``CXR_CARD_SYNTAXES`` (names of :data:`CARD_SYNTAX_NAMES`,
    as the settings parsed them)."""
    chosen = [n.strip().lower() for n in names]
    unknown = [n for n in chosen if n not in CARD_SYNTAX_NAMES]
    if unknown:
        raise ValueError(
            f"unknown card syntax names {unknown}; choose from {sorted(CARD_SYNTAX_NAMES)}"
        )
    return frozenset().union(*(CARD_SYNTAX_NAMES[n] for n in chosen))


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
    #: Set for native pixel data: ``codestream`` holds the stored values as they are in
    #: the file, of this NumPy dtype (e.g. ``<u2``), masked to BitsStored on the card.
    raw_dtype: str | None = None
    #: BitsStored's mask for native pixel data whose BitsStored < BitsAllocated.
    mask: int | None = None


def plan_card_job(
    ds: pydicom.Dataset,
    spec: PixelSpec,
    *,
    size: int,
    path: Path | None,
    syntaxes: frozenset[UID] = CARD_TRANSFER_SYNTAXES,
) -> CardJob | None:
    """A :class:`CardJob` for ``ds``, or None where the CPU path decodes it (among them
    every transfer syntax not in ``syntaxes``, ``CXR_CARD_SYNTAXES``'s choice).

    A JPEG 2000 codestream whose size disagrees with Rows x Columns raises
    :class:`~cxr_orient.errors.DecodeError`, as on the CPU path.
    """
    if (
        spec.transfer_syntax not in syntaxes
        or spec.transfer_syntax not in CARD_TRANSFER_SYNTAXES
        or spec.signed
    ):
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
    elif spec.transfer_syntax in _NATIVE:
        return _native_job(ds, spec, path)
    elif spec.transfer_syntax in _JPEG_LOSSLESS:
        if spec.bits_allocated not in (8, 16):
            return None
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
    return CardJob(
        codestream,
        spec.rows,
        spec.columns,
        clip_max,
        bounds,
        window,
        slope,
        intercept,
        spec.monochrome1,
        path,
    )


def _native_job(ds: pydicom.Dataset, spec: PixelSpec, path: Path | None) -> CardJob | None:
    """Native little-endian pixels: the first frame's bytes, as read, for the card."""
    if spec.bits_allocated not in (8, 16):
        return None
    if "ModalityLUTSequence" in ds:
        return None
    voi = choose_voi(ds, path)
    if voi == "lut":
        return None
    nbytes = spec.rows * spec.columns * spec.bits_allocated // 8
    try:
        data = ds.PixelData
    except Exception:
        return None
    if not isinstance(data, bytes) or len(data) < nbytes:
        return None  # the CPU path reports short pixel data itself
    slope, intercept = read_rescale(ds, path)
    window = voi if isinstance(voi, Window) else None
    dtype = np.uint8 if spec.bits_allocated == 8 else np.uint16
    bounds = window_clip_bounds(window, slope, intercept, dtype) if window else None
    mask = (1 << spec.bits_stored) - 1 if spec.bits_stored < spec.bits_allocated else None
    return CardJob(
        data[:nbytes],
        spec.rows,
        spec.columns,
        None,
        bounds,
        window,
        slope,
        intercept,
        spec.monochrome1,
        path,
        raw_dtype=f"<u{spec.bits_allocated // 8}",
        mask=mask,
    )
