"""Pixel data decoders, one module per codec family, chosen by transfer syntax.

Each module defines a :class:`~cxr_orient.imaging.decoders.base.Decoder`
(``DECODER``): its transfer syntaxes, an ``is_available()`` check, and a ``decode``
function taking the dataset and its validated
:class:`~cxr_orient.imaging.decoders.base.PixelSpec` to the first frame's stored
values (:class:`~cxr_orient.imaging.decoders.base.Decoded`), possibly reduced.
:data:`DECODERS` is the table, in order of preference; :func:`decoder_for` picks
the first available decoder that lists a syntax.

To add one (HTJ2K, a GPU decoder): write ``decoders/<name>.py`` with its ``DECODER``
and add it to :data:`DECODERS`, before any older decoder of the same syntaxes that it
should take precedence over (that one stays the fallback while ``is_available()`` is
False). A new syntax is then accepted by validation and listed in
:data:`SUPPORTED_TRANSFER_SYNTAXES`; say so in the package docstring's accepted images.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.uid import UID

from cxr_orient.errors import UnsupportedTransferSyntaxError
from cxr_orient.imaging.decoders import htj2k, jpeg, jpeg2000, jpeg_turbo, jpegls, native, rle
from cxr_orient.imaging.decoders.base import Decoded, Decoder, PixelSpec
from cxr_orient.imaging.errors import where

__all__ = [
    "DECODERS",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "Decoded",
    "Decoder",
    "PixelSpec",
    "decode_stored",
    "decoder_for",
    "turn_off",
]

DECODERS: tuple[Decoder, ...] = (
    native.DECODER,
    rle.DECODER,
    jpeg_turbo.DECODER,
    jpeg.DECODER,
    jpegls.DECODER,
    jpeg2000.DECODER,
    htj2k.DECODER,
)
"""Every decoder, in order of preference where two list the same transfer syntax."""

SUPPORTED_TRANSFER_SYNTAXES: frozenset[UID] = frozenset().union(
    *(decoder.transfer_syntaxes for decoder in DECODERS)
)
"""Transfer syntaxes :func:`cxr_orient.imaging.dataset_to_image` decodes."""

_BY_SYNTAX: dict[UID, tuple[Decoder, ...]] = {
    syntax: tuple(d for d in DECODERS if syntax in d.transfer_syntaxes)
    for syntax in SUPPORTED_TRANSFER_SYNTAXES
}


_OFF: frozenset[str] = frozenset()
"""Names of decoders passed over (CXR_CPU_DECODERS_OFF, :func:`turn_off`)."""


def turn_off(names: Iterable[str]) -> None:
    """Pass over the decoders named (``libjpeg-turbo``: JPEG lossless by pydicom's
    plugins instead) in this process from now on; an empty list turns every one back
    on. The last decoder of a syntax is never passed over. Raises ValueError for a name
    no decoder has."""
    global _OFF
    wanted = frozenset(n.strip() for n in names if n.strip())
    unknown = wanted - {d.name for d in DECODERS}
    if unknown:
        raise ValueError(
            f"no decoder named {sorted(unknown)}; known: {sorted(d.name for d in DECODERS)}"
        )
    _OFF = wanted


def decoder_for(transfer_syntax: UID) -> Decoder | None:
    """The decoder for ``transfer_syntax``: the first available of those listing it
    that is not turned off (the last one when none is, so that its decode reports what
    is missing), or None when no decoder lists it."""
    candidates = _BY_SYNTAX.get(transfer_syntax)
    if not candidates:
        return None
    for decoder in candidates[:-1]:
        if decoder.name not in _OFF and decoder.is_available():
            return decoder
    return candidates[-1]


def decode_stored(ds: pydicom.Dataset, spec: PixelSpec, *, size: int, path: Path | None) -> Decoded:
    """Stored values of the first frame, possibly at reduced resolution, the reduction
    factor, and the JPEG 2000 wavelet when the values are its low-pass band."""
    decoder = decoder_for(spec.transfer_syntax)
    if decoder is None:
        raise UnsupportedTransferSyntaxError(
            f"{where(path)}TransferSyntaxUID {spec.transfer_syntax} "
            f"({spec.transfer_syntax.name}) is not supported"
        )
    return decoder.decode(ds, spec, size=size, path=path)
