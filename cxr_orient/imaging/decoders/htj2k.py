"""High-Throughput JPEG 2000 (ITU-T T.814, JPEG 2000 Part 15), decoded at reduced
resolution like JPEG 2000.

An HTJ2K codestream is a JPEG 2000 one (SOC, SIZ, CAP, COD, ...) whose code-blocks are
HT-coded; its wavelets, levels and resolutions are those of Part 1. OpenJPEG >= 2.5
decodes it, both in Pillow's binding (with ``reduce``: only the wavelet levels the
output needs) and in pydicom's pylibjpeg-openjpeg plugin (full decode). So the steps of
:mod:`~cxr_orient.imaging.decoders.jpeg2000` apply unchanged: the codestream's SIZ is
checked against Rows x Columns, then the smallest low-pass band whose sides stay >=
``2 * size`` is decoded and returned with its wavelet, or everything is decoded by
pydicom where that cannot be done (signed data, an unexpected codestream, a Pillow
whose OpenJPEG predates HT decoding, any decoder error). Where the codestream's
precision exceeds BitsStored (OpenJPH writes 16 for 12-bit data), a band is clipped
at BitsStored and a full decode masked at the precision, as pydicom reads it; masking
at BitsStored would wrap the overshoot at white edges to black.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pydicom
from PIL import features
from pydicom.uid import HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL

from cxr_orient.imaging.decoders.base import (
    Decoded,
    Decoder,
    PixelSpec,
    decode_with_pydicom,
    pydicom_can_decode,
)
from cxr_orient.imaging.decoders.jpeg2000 import (
    check_j2k_dimensions,
    codestream_spec,
    jpeg2000_reduced,
)

__all__ = ["DECODER", "HTJ2K_SYNTAXES", "decode_htj2k", "pillow_decodes_htj2k"]

HTJ2K_SYNTAXES = frozenset({HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K})

#: The first OpenJPEG release that decodes HT code-blocks.
_FIRST_HT_OPENJPEG = (2, 5)


@cache
def pillow_decodes_htj2k() -> bool:
    """Whether Pillow's OpenJPEG (``features.version("jpg_2000")``) decodes HTJ2K."""
    try:
        version = features.version("jpg_2000")
        numbers = tuple(int(part) for part in (version or "").split(".")[:2])
    except Exception:
        return False
    return len(numbers) == 2 and numbers >= _FIRST_HT_OPENJPEG


def decode_htj2k(ds: pydicom.Dataset, spec: PixelSpec, *, size: int, path: Path | None) -> Decoded:
    """Check the codestream's size, then decode reduced where possible, else in full."""
    check_j2k_dimensions(ds, spec, path)
    if pillow_decodes_htj2k():
        reduced = jpeg2000_reduced(ds, spec, size=size, path=path)
        if reduced is not None:
            return reduced
    return decode_with_pydicom(ds, codestream_spec(ds, spec), path=path)


DECODER = Decoder(
    name="htj2k",
    transfer_syntaxes=HTJ2K_SYNTAXES,
    decode=decode_htj2k,
    is_available=pydicom_can_decode(HTJ2K_SYNTAXES),
)
