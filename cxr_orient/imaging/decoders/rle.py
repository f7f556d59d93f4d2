"""RLE Lossless, by pydicom with pylibjpeg-rle first (24 ms vs 113 ms in pure Python
on a 2500x2048 12-bit film)."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import RLELossless

from cxr_orient.imaging.decoders.base import (
    Decoded,
    Decoder,
    PixelSpec,
    decode_with_pydicom,
    pydicom_can_decode,
)

__all__ = ["DECODER", "RLE_SYNTAXES", "decode_rle"]

RLE_SYNTAXES = frozenset({RLELossless})
_PLUGIN = "pylibjpeg"


def decode_rle(ds: pydicom.Dataset, spec: PixelSpec, *, size: int, path: Path | None) -> Decoded:
    """Full-resolution decode, pylibjpeg-rle first, then pydicom's own order."""
    return decode_with_pydicom(ds, spec, path=path, plugin=_PLUGIN)


DECODER = Decoder(
    name="rle",
    transfer_syntaxes=RLE_SYNTAXES,
    decode=decode_rle,
    is_available=pydicom_can_decode(RLE_SYNTAXES),
)
