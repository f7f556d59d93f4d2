"""JPEG (ITU-T T.81): baseline 8-bit, extended 12-bit, lossless process 14 and SV1.

Baseline 8-bit greyscale is decoded by Pillow with DCT scaling (1/2, 1/4, 1/8: the
``draft`` mode) when the image is at least twice the output size at that scale;
everything else (and any draft failure) is a full-resolution decode by pydicom.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1

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

__all__ = ["DECODER", "JPEG_SYNTAXES", "decode_jpeg", "jpeg_baseline_draft"]

logger = logging.getLogger(__name__)

JPEG_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1})


def decode_jpeg(ds: pydicom.Dataset, spec: PixelSpec, *, size: int, path: Path | None) -> Decoded:
    """DCT-scaled decode for baseline 8-bit where it works, else a full decode."""
    if spec.transfer_syntax == JPEGBaseline8Bit:
        drafted = jpeg_baseline_draft(ds, spec, size=size, path=path)
        if drafted is not None:
            return drafted
    return decode_with_pydicom(ds, spec, path=path)


def jpeg_baseline_draft(
    ds: pydicom.Dataset, spec: PixelSpec, *, size: int, path: Path | None
) -> Decoded | None:
    """Decode 8-bit baseline JPEG with DCT scaling (1/2, 1/4, 1/8) via Pillow; None to
    ask for a full decode (not 8-bit unsigned grey, or any decoder error)."""
    if spec.bits_allocated != 8 or spec.signed:
        return None
    try:
        frame = first_frame(ds)
        with Image.open(io.BytesIO(frame)) as image:
            if image.mode != "L" or image.size != (spec.columns, spec.rows):
                return None
            scale = min(spec.rows, spec.columns) / (2 * size)
            if scale >= 2:
                image.draft("L", (int(spec.columns / scale), int(spec.rows / scale)))
            decoded = np.asarray(image)
    except Exception as e:
        logger.debug("%sJPEG draft decode failed: %s", where(path), e)
        return None
    factor = spec.columns / decoded.shape[1]
    if abs(spec.rows / factor - decoded.shape[0]) >= 1.0:
        return None
    return Decoded(mask_to_bits_stored(decoded, spec), factor, None)


DECODER = Decoder(
    name="jpeg",
    transfer_syntaxes=JPEG_SYNTAXES,
    decode=decode_jpeg,
    is_available=pydicom_can_decode(JPEG_SYNTAXES),
)
