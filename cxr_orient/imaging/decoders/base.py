"""The decoder interface: what a decoder is given, what it returns, and shared steps.

A decoder gets the dataset and its validated :class:`PixelSpec` and returns the
first frame's stored values (:class:`Decoded`), at full resolution or reduced by a
factor when that is cheaper and the caller's ``size`` allows it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from cxr_orient.errors import DecodeError
from cxr_orient.imaging.errors import where
from cxr_orient.imaging.wavelet import Wavelet

__all__ = [
    "DecodeFunction",
    "Decoded",
    "Decoder",
    "PixelSpec",
    "decode_with_pydicom",
    "first_frame",
    "mask_to_bits_stored",
    "pydicom_can_decode",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PixelSpec:
    """The validated attributes that say how to read the pixels."""

    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    monochrome1: bool
    transfer_syntax: UID


class Decoded(NamedTuple):
    """Stored values of the first frame (masked to *BitsStored*, sign-extended)."""

    stored: np.ndarray
    #: Full-resolution pixels per decoded pixel along each axis (1.0: not reduced).
    factor: float
    #: Set when ``stored`` is a JPEG 2000 low-pass band (to be resampled by
    #: :func:`cxr_orient.imaging.wavelet.wavelet_box_matrix`), else None.
    wavelet: Wavelet | None


class DecodeFunction(Protocol):
    """Decode the first frame of ``ds``; ``size`` is the side of the final image (a
    decoder may reduce resolution while both sides stay >= ``2 * size``)."""

    def __call__(
        self, ds: pydicom.Dataset, spec: PixelSpec, *, size: int, path: Path | None
    ) -> Decoded: ...


@dataclass(frozen=True)
class Decoder:
    """One codec family: the transfer syntaxes it decodes and how."""

    name: str
    transfer_syntaxes: frozenset[UID]
    decode: DecodeFunction
    #: Whether the libraries it needs are installed (checked when several decoders
    #: list the same transfer syntax: the first available one is used).
    is_available: Callable[[], bool]
    #: False for native (uncompressed) syntaxes, whose PixelData length is checked
    #: against Rows * Columns * BitsAllocated / 8 before decoding.
    encapsulated: bool = True


def mask_to_bits_stored(stored: np.ndarray, spec: PixelSpec) -> np.ndarray:
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


def first_frame(ds: pydicom.Dataset) -> bytes:
    """The first frame of encapsulated PixelData, as bytes."""
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def decode_with_pydicom(
    ds: pydicom.Dataset, spec: PixelSpec, *, path: Path | None, plugin: str | None = None
) -> Decoded:
    """Full-resolution decode by ``pydicom.pixels.pixel_array``, with ``plugin`` tried
    first when given (then pydicom's own order), checked against Rows x Columns."""
    try:
        stored = _pixel_array(ds, spec.transfer_syntax, plugin)
    except Exception as e:
        raise DecodeError(
            f"{where(path)}cannot decode {spec.transfer_syntax.name} PixelData: "
            f"{type(e).__name__}: {e}"
        ) from e
    if stored.shape != (spec.rows, spec.columns):
        raise DecodeError(
            f"{where(path)}decoded shape {stored.shape} != Rows x Columns "
            f"{(spec.rows, spec.columns)}"
        )
    return Decoded(mask_to_bits_stored(stored, spec), 1.0, None)


def _pixel_array(ds: pydicom.Dataset, transfer_syntax: UID, plugin: str | None) -> np.ndarray:
    if plugin is not None:
        try:
            return np.asarray(pydicom.pixels.pixel_array(ds, decoding_plugin=plugin))
        except Exception:
            logger.debug(
                "decoder %s failed for %s; trying the others",
                plugin,
                transfer_syntax.name,
                exc_info=True,
            )
    return np.asarray(pydicom.pixels.pixel_array(ds))


def pydicom_can_decode(transfer_syntaxes: Iterable[UID]) -> Callable[[], bool]:
    """An ``is_available`` for decoders built on pydicom's: True when pydicom has an
    installed plugin for every one of ``transfer_syntaxes``."""
    syntaxes = tuple(transfer_syntaxes)

    def available() -> bool:
        return all(pydicom.pixels.get_decoder(uid).is_available for uid in syntaxes)

    return available
