"""The replacement's pixels: the original's decoded, turned upright, and written without
losing anything: in the original's transfer syntax when it is lossless and pydicom can
encode it (RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless), else explicit VR little
endian; an original in a lossy syntax stays flagged lossy (PS3.3 C.7.6.1.1.5)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_encoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from cxr_orient.dicomnet.corrections.geometry import Turn, upright_pixels
from cxr_orient.errors import DecodeError, NoPixelDataError, UnsupportedImageError

__all__ = ["mark_lossy", "output_syntax", "stored_pixels", "write_upright_pixels"]

#: Transfer syntaxes re-encoded as they came (lossless and pydicom can encode them).
_REENCODED = frozenset({RLELossless, JPEGLSLossless, JPEG2000Lossless})
#: Syntaxes that may have lost information, with PS3.3 C.7.6.1.1.5's method name.
_LOSSY_METHODS = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    JPEG2000: "ISO_15444_1",
    HTJ2K: "ISO_15444_15",
    JPEGLSNearLossless: "ISO_14495_1",
}


def stored_pixels(original: Dataset) -> np.ndarray:
    """The original's one greyscale frame, decoded."""
    if "PixelData" not in original:
        raise NoPixelDataError("the original has no Pixel Data (7FE0,0010)")
    if int(original.get("SamplesPerPixel", 1)) != 1:
        raise UnsupportedImageError(
            f"SamplesPerPixel {original.SamplesPerPixel}: only greyscale is corrected"
        )
    if int(original.get("NumberOfFrames", 1) or 1) != 1:
        raise UnsupportedImageError(
            f"NumberOfFrames {original.NumberOfFrames}: only single frames are corrected"
        )
    try:
        return np.asarray(original.pixel_array)
    except Exception as exc:  # any codec failure: name the syntax
        syntax = original.file_meta.get("TransferSyntaxUID", "unknown")
        raise DecodeError(f"cannot decode the original's Pixel Data ({syntax}): {exc}") from exc


def output_syntax(original_syntax: UID) -> UID:
    """The original's syntax when it is lossless and pydicom encodes it, else explicit VR
    little endian."""
    if original_syntax in _REENCODED and get_encoder(original_syntax).is_available:
        return original_syntax
    return ExplicitVRLittleEndian


def write_upright_pixels(ds: Dataset, stored: np.ndarray, turn: Turn, original_syntax: UID) -> None:
    """``stored`` turned upright as ``ds``'s Pixel Data (Rows and Columns follow), in
    :func:`output_syntax`; ``ds.file_meta`` gets the syntax."""
    pixels = upright_pixels(stored, turn)
    syntax = output_syntax(original_syntax)
    bits_stored = int(ds.BitsStored)
    photometric = str(ds.PhotometricInterpretation)
    ds.set_pixel_data(pixels, photometric, bits_stored, generate_instance_uid=False)
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, generate_instance_uid=False)


def mark_lossy(ds: Dataset, original_syntax: UID) -> None:
    """Once lossy, always flagged (PS3.3 C.7.6.1.1.5): an original in a lossy syntax
    (unless it says 00: a lossless JPEG 2000 in the lossy syntax) keeps or gets 01 and
    the method its syntax names."""
    method = _LOSSY_METHODS.get(original_syntax)
    if method is None or str(ds.get("LossyImageCompression", "")) == "00":
        return
    ds.LossyImageCompression = "01"
    if not ds.get("LossyImageCompressionMethod"):
        ds.LossyImageCompressionMethod = method
