"""JPEG 2000 lossless and lossy (ITU-T T.800), decoded at reduced resolution.

Only the wavelet levels the output needs are decoded (Pillow's OpenJPEG binding,
``reduce``): the smallest low-pass band whose sides stay >= ``2 * size``. The band
is returned with its wavelet for :mod:`cxr_orient.imaging.wavelet` to resample.
Signed data, unexpected codestreams and decoder errors fall back to a full decode
by pydicom. A codestream whose SIZ disagrees with Rows x Columns is refused first.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import JPEG2000, JPEG2000Lossless

from cxr_orient.errors import DecodeError
from cxr_orient.imaging.decoders.base import (
    Decoded,
    Decoder,
    PixelSpec,
    decode_with_pydicom,
    first_frame,
    mask_to_bits_stored,
    pydicom_can_decode,
)
from cxr_orient.imaging.errors import where
from cxr_orient.imaging.wavelet import Wavelet

__all__ = [
    "DECODER",
    "JPEG2000_SYNTAXES",
    "J2kInfo",
    "check_j2k_dimensions",
    "codestream_spec",
    "decode_jpeg2000",
    "j2k_codestream_info",
    "jpeg2000_reduced",
]

logger = logging.getLogger(__name__)

JPEG2000_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000})


def decode_jpeg2000(
    ds: pydicom.Dataset, spec: PixelSpec, *, size: int, path: Path | None
) -> Decoded:
    """Check the codestream's size, then decode reduced where possible, else in full."""
    check_j2k_dimensions(ds, spec, path)
    reduced = jpeg2000_reduced(ds, spec, size=size, path=path)
    if reduced is not None:
        return reduced
    return decode_with_pydicom(ds, codestream_spec(ds, spec), path=path)


def codestream_spec(ds: pydicom.Dataset, spec: PixelSpec) -> PixelSpec:
    """``spec`` with BitsStored raised to the codestream's precision where that is larger
    (up to BitsAllocated), for a full decode: pydicom reads J2K samples at the
    codestream's precision (so does the naive path), and a lossy decode overshoots past
    BitsStored when the precision is larger (OpenJPH writes 16 for uint16 input), which
    masking at BitsStored would wrap (a white edge turned black).
    """
    try:
        info = j2k_codestream_info(first_frame(ds))
    except Exception:
        return spec
    precision = min(info.precision, spec.bits_allocated)
    return replace(spec, bits_stored=precision) if precision > spec.bits_stored else spec


def _reduction_for(spec: PixelSpec, size: int, max_levels: int, *, margin: int = 2) -> int:
    """Largest r such that the 2**r-reduced image keeps min side >= margin * size."""
    levels = 0
    while levels < max_levels:
        factor = 2 ** (levels + 1)
        smaller = min(-(-spec.rows // factor), -(-spec.columns // factor))
        if smaller < margin * size:
            break
        levels += 1
    return levels


def jpeg2000_reduced(
    ds: pydicom.Dataset, spec: PixelSpec, *, size: int, path: Path | None, margin: int = 2
) -> Decoded | None:
    """Decode only the wavelet levels needed (Pillow/OpenJPEG ``reduce``).

    The bundled ``openjpeg`` package has no reduced-resolution decode, Pillow's
    OpenJPEG binding does. Returns the low-pass band (stored values), its factor
    and its wavelet, or None to ask for a full decode (signed data, an unexpected
    codestream, or any decoder error).
    """
    if spec.signed:
        return None
    try:
        frame = first_frame(ds)
        info = j2k_codestream_info(frame)
    except Exception:
        return None
    if info.signed or not 1 <= info.precision <= 16 or not info.origin_at_zero:
        return None
    # Keep >= 2 * size. With the band at ``size`` (one level deeper) the answers move
    # by up to 0.02 on real films even with the exact resampling of wavelet_box_matrix:
    # the box bins of the reference keep detail that the band has already dropped.
    # (``margin`` 1 is that deeper band: bench/archive_decoders.py measures it.)
    levels = _reduction_for(spec, size, max_levels=info.levels, margin=margin)
    if levels == 0:
        return None
    # Some codestreams refuse deep reductions; fewer levels still beat a full decode.
    for reduce in range(levels, 0, -1):
        factor = 2**reduce
        expected = (-(-spec.rows // factor), -(-spec.columns // factor))
        try:
            with Image.open(io.BytesIO(frame)) as image:
                if image.size != (spec.columns, spec.rows) or image.mode not in ("L", "I;16"):
                    return None
                # Pillow sizes the reduced image as round(side / factor), OpenJPEG as
                # ceil(side / factor), and refuses the decode where they differ (e.g.
                # 1841 columns at reduce 2): announce sides that round to the ceiling.
                image._size = (expected[1] * factor, expected[0] * factor)
                image.reduce = reduce  # type: ignore[method-assign,assignment]
                image.load()
                decoded = np.asarray(image)
                # Pillow scales samples up to the full 8 or 16 bits of its mode.
                shift = (8 if image.mode == "L" else 16) - info.precision
                if shift > 0:
                    decoded = decoded >> decoded.dtype.type(shift)
        except Exception as e:
            logger.debug("%sJPEG 2000 reduce=%d failed: %s", where(path), reduce, e)
            continue
        if decoded.shape != expected:
            return None
        wavelet: Wavelet = "5-3" if info.reversible else "9-7"
        if info.precision > spec.bits_stored:
            # The low-pass band overshoots the image's range at sharp edges; OpenJPEG
            # clips it to the codestream's precision. Where that exceeds BitsStored
            # (OpenJPH writes 16 for 12-bit data), clip at BitsStored as a 12-bit
            # codestream is clipped, rather than mask (which wraps white to black).
            decoded = np.minimum(decoded, decoded.dtype.type((1 << spec.bits_stored) - 1))
        return Decoded(mask_to_bits_stored(decoded, spec), float(factor), wavelet)
    return None


def check_j2k_dimensions(ds: pydicom.Dataset, spec: PixelSpec, path: Path | None) -> None:
    """Refuse a JPEG 2000 codestream whose SIZ declares another image size than Rows x
    Columns: decoders allocate what the codestream says, and Rows x Columns is what
    CXR_MAX_PIXELS checked (a fuzzed byte made a 3 kB file allocate 260 MB)."""
    try:
        frame = first_frame(ds)
    except Exception:
        return  # the decoder reports unreadable pixel data itself
    siz = frame.find(b"\xff\x51", 0, 64)
    if not frame.startswith(b"\xff\x4f") or siz < 0 or len(frame) < siz + 22:
        return
    x_siz, y_siz, x_offset, y_offset = (
        int.from_bytes(frame[siz + k : siz + k + 4], "big") for k in (6, 10, 14, 18)
    )
    width, height = x_siz - x_offset, y_siz - y_offset
    if (height, width) != (spec.rows, spec.columns):
        raise DecodeError(
            f"{where(path)}JPEG 2000 codestream is {width}x{height}, but Columns x Rows "
            f"is {spec.columns}x{spec.rows}"
        )


@dataclass(frozen=True)
class J2kInfo:
    """What the main header of a JPEG 2000 codestream says about component 0."""

    precision: int
    signed: bool
    levels: int
    reversible: bool  # 5-3 wavelet (else 9-7)
    origin_at_zero: bool  # image and tile offsets 0: band sample k sits at 2**r * k


def j2k_codestream_info(frame: bytes) -> J2kInfo:
    """Read SIZ and COD of a J2K codestream's main header (marker segments up to SOT).

    Raises ValueError for anything unexpected, including a COC or a second COD
    (per-component coding style): the caller then decodes in full.
    """
    if not frame.startswith(b"\xff\x4f\xff\x51"):
        raise ValueError("no SOC/SIZ at the start of the JPEG 2000 codestream")
    siz = cod = -1
    position = 2
    while True:
        if position + 4 > len(frame) or frame[position] != 0xFF:
            raise ValueError("JPEG 2000 main header ends before its first tile")
        marker = frame[position + 1]
        if marker == 0x90:  # SOT: the main header is over
            break
        length = int.from_bytes(frame[position + 2 : position + 4], "big")
        if length < 2 or position + 2 + length > len(frame):
            raise ValueError("JPEG 2000 marker segment runs past the codestream")
        if marker == 0x51:
            siz = position
        elif marker == 0x52 and cod < 0:
            cod = position
        elif marker in (0x52, 0x53):
            raise ValueError("JPEG 2000 coding style differs per component")
        position += 2 + length
    if siz < 0 or cod < 0 or len(frame) < siz + 41 or len(frame) < cod + 14:
        raise ValueError("no complete SIZ/COD in the JPEG 2000 main header")
    x_offset, y_offset, tile_x_offset, tile_y_offset = (
        int.from_bytes(frame[siz + k : siz + k + 4], "big") for k in (14, 18, 30, 34)
    )
    ssiz = frame[siz + 40]
    return J2kInfo(
        precision=(ssiz & 0x7F) + 1,
        signed=bool(ssiz & 0x80),
        levels=frame[cod + 9],
        reversible=frame[cod + 13] == 1,
        origin_at_zero=x_offset == y_offset == tile_x_offset == tile_y_offset == 0,
    )


DECODER = Decoder(
    name="jpeg2000",
    transfer_syntaxes=JPEG2000_SYNTAXES,
    decode=decode_jpeg2000,
    is_available=pydicom_can_decode(JPEG2000_SYNTAXES),
)
