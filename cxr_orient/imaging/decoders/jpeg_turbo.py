"""JPEG lossless (process 14 and its first-order predictor SV1) by libjpeg-turbo 3.

libjpeg-turbo (through imagecodecs, where installed) decodes a CR/DX film four to five
times faster than pydicom's pylibjpeg plugin (docs/performance.md), with the same stored
values. It comes first in :data:`~cxr_orient.imaging.decoders.DECODERS` for these two
syntaxes; :mod:`~cxr_orient.imaging.decoders.jpeg` (pydicom's plugins) stays the fallback
where imagecodecs is missing, where this decoder is turned off
(``CXR_CPU_DECODERS_OFF=libjpeg-turbo``), and for any stream libjpeg-turbo refuses.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEGLossless, JPEGLosslessSV1

from cxr_orient.imaging.decoders.base import (
    Decoded,
    Decoder,
    PixelSpec,
    decode_with_pydicom,
    first_frame,
    mask_to_bits_stored,
)
from cxr_orient.imaging.errors import where

__all__ = ["DECODER", "JPEG_LOSSLESS_SYNTAXES", "decode_jpeg_lossless", "turbo_available"]

logger = logging.getLogger(__name__)

JPEG_LOSSLESS_SYNTAXES = frozenset({JPEGLossless, JPEGLosslessSV1})


@functools.cache
def turbo_available() -> bool:
    """Whether imagecodecs with its libjpeg-turbo 3 codec is installed."""
    try:
        import imagecodecs
    except ImportError:
        return False
    try:
        return bool(imagecodecs.JPEG8.available)
    except Exception:
        return False


def decode_jpeg_lossless(
    ds: pydicom.Dataset, spec: PixelSpec, *, size: int, path: Path | None
) -> Decoded:
    """The first frame's stored values at full resolution (lossless JPEG has no scaled
    decode); any libjpeg-turbo failure or unexpected result goes to pydicom's plugins,
    which report their own error."""
    import imagecodecs

    try:
        decoded = np.asarray(imagecodecs.jpeg8_decode(first_frame(ds)))
    except Exception as e:
        logger.debug("%slibjpeg-turbo refused the JPEG lossless stream: %s", where(path), e)
        return decode_with_pydicom(ds, spec, path=path)
    if decoded.shape != (spec.rows, spec.columns) or decoded.dtype.kind != "u":
        logger.debug(
            "%slibjpeg-turbo gave %s %s, not %dx%d grey; decoding with pydicom",
            where(path),
            decoded.shape,
            decoded.dtype,
            spec.rows,
            spec.columns,
        )
        return decode_with_pydicom(ds, spec, path=path)
    # pydicom hands back BitsAllocated-wide values (8-bit precision in 16 bits too);
    # signed data is sign-extended from BitsStored by the mask, as pydicom's is.
    stored_type = np.dtype(f"u{max(1, spec.bits_allocated // 8)}")
    if decoded.dtype != stored_type:
        decoded = decoded.astype(stored_type)
    if spec.signed:
        decoded = decoded.view(np.dtype(f"i{stored_type.itemsize}"))
    return Decoded(mask_to_bits_stored(decoded, spec), 1.0, None)


DECODER = Decoder(
    name="libjpeg-turbo",
    transfer_syntaxes=JPEG_LOSSLESS_SYNTAXES,
    decode=decode_jpeg_lossless,
    is_available=turbo_available,
)
