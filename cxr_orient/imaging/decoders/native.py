"""Native (uncompressed) pixel data: implicit/explicit VR little endian, deflated
(inflated by :mod:`cxr_orient.imaging.reading`) and explicit VR big endian."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from cxr_orient.imaging.decoders.base import Decoded, Decoder, PixelSpec, mask_to_bits_stored

__all__ = ["DECODER", "NATIVE_SYNTAXES", "decode_native"]

NATIVE_SYNTAXES = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
    }
)


def decode_native(ds: pydicom.Dataset, spec: PixelSpec, *, size: int, path: Path | None) -> Decoded:
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
    return Decoded(mask_to_bits_stored(stored, spec), 1.0, None)


def _always() -> bool:
    return True


DECODER = Decoder(
    name="native",
    transfer_syntaxes=NATIVE_SYNTAXES,
    decode=decode_native,
    is_available=_always,
    encapsulated=False,
)
