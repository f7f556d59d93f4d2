"""Bytes to :class:`pydicom.Dataset`: DICOM Part 10 parsing from memory.

A deflated dataset (Deflated Explicit VR Little Endian) is inflated here within a
bound, with ISA-L where installed; truncation and non-DICOM input are told apart
(a zeroed preamble cut short is a truncated file, not "not DICOM").
"""

from __future__ import annotations

import io
import os
import warnings
import zlib
from pathlib import Path
from typing import Any, BinaryIO, cast

import pydicom

# pydicom's own steps of dcmread: ``read_preamble`` and ``read_dataset`` are public,
# ``_read_file_meta_info`` (file meta from an open file object; the public
# ``read_file_meta_info`` only takes a path) and ``_at_pixel_data`` (dcmread's
# ``stop_before_pixels`` test) are private and have no public equivalent. They are
# used in this module only, so that a pydicom upgrade that moves them breaks one place.
# So is ``Dataset._dict`` (:func:`pixel_data_extent`): every public accessor of an
# element reads a deferred value whole.
from pydicom import filereader
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from cxr_orient.errors import (
    CxrError,
    DecodeError,
    ImageTooLargeError,
    NotDicomError,
    TruncatedFileError,
)
from cxr_orient.imaging.errors import require_file, where
from cxr_orient.imaging.limits import DEFAULT_MAX_PIXELS

# pydicom checks each value as it is read and, in its default mode, logs and warns with
# the value quoted ("Invalid value for VR UI: '../../x'"): a malformed PatientName or
# date would reach the logs. The checks that matter are ours and name the attribute,
# never the value (the UIDs: cxr_orient.dicomnet.policy.check_uids; the pixel module:
# imaging.validation), so pydicom's are off wherever a dataset is read.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

__all__ = [
    "bounded_inflate",
    "dcmread_bytes",
    "inflated_size_limit",
    "is_truncated_preamble",
    "pixel_data_extent",
    "read_dataset",
]

_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_UNDEFINED_LENGTH = 0xFFFFFFFF


def inflated_size_limit(max_pixels: int) -> int:
    """Bytes a Deflated Explicit VR Little Endian dataset may inflate to: 4 bytes for each
    allowed pixel (up to 32-bit grey, or 8-bit colour) and 16 MiB for everything else."""
    return 4 * max_pixels + 16 * 2**20


def bounded_inflate(deflated: bytes, limit: int, path: Path | None) -> bytes:
    """Raw deflate (PS3.5 A.5) refusing output beyond ``limit`` bytes before making it:
    a few megabytes of deflate can stand for gigabytes, and a worker must not allocate
    what a crafted file asks for. Uses ISA-L (``isal``) where installed, about twice as
    fast as zlib here, with the same output."""
    inflater = _raw_inflater()
    try:
        out = inflater.decompress(deflated, limit + 1)
    except Exception as e:  # zlib.error / isal_zlib.error: corrupt or cut stream
        raise TruncatedFileError(f"{where(path)}deflated dataset is corrupt or cut: {e}") from e
    if len(out) > limit:
        raise ImageTooLargeError(
            f"{where(path)}deflated dataset inflates to more than {limit} bytes "
            "(the CXR_MAX_PIXELS bound)"
        )
    if not inflater.eof:
        raise TruncatedFileError(f"{where(path)}deflated dataset ends early")
    return out


def _raw_inflater() -> Any:
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
        return zlib.decompressobj(-zlib.MAX_WBITS)
    return isal_zlib.decompressobj(-isal_zlib.MAX_WBITS)


def dcmread_bytes(
    data: bytes, *, stop_before_pixels: bool, inflate_limit: int, path: Path | None
) -> pydicom.Dataset:
    """``pydicom.dcmread`` from memory, except that a deflated dataset is inflated here,
    within ``inflate_limit`` (pydicom would inflate it whole, however large)."""
    fp = io.BytesIO(data)
    preamble = filereader.read_preamble(fp, False)
    file_meta = filereader._read_file_meta_info(fp)
    if file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    inflated = DicomBytesIO(bounded_inflate(data[fp.tell() :], inflate_limit, path))
    dataset = filereader.read_dataset(
        cast(BinaryIO, inflated),
        is_implicit_VR=False,
        is_little_endian=True,
        stop_when=filereader._at_pixel_data if stop_before_pixels else None,
    )
    return FileDataset(
        str(path) if path else "",
        dataset,
        preamble=preamble,
        file_meta=file_meta,
        is_implicit_VR=False,
        is_little_endian=True,
    )


def read_dataset(
    path: Path,
    *,
    stop_before_pixels: bool,
    data: bytes | None = None,
    inflate_limit: int | None = None,
    defer_size: int | None = None,
) -> pydicom.Dataset:
    """Read a DICOM Part 10 file (128-byte preamble + ``DICM``), or its ``data``.

    A deflated dataset may inflate to ``inflate_limit`` bytes at most (default: the
    :func:`inflated_size_limit` of ``DEFAULT_MAX_PIXELS``).

    ``defer_size`` (a file, no ``data``): parsed from the file, values longer than this
    left unread (pydicom's deferred elements: their length and offset are known, which
    is what :func:`~cxr_orient.imaging.validation.check_pixel_data_complete` needs), so
    that a large instance is checked without holding it in memory; a crafted length is
    a seek, not an allocation. A deflated file is read from memory all the same.
    """
    if data is None and defer_size is not None:
        require_file(path)
        with path.open("rb") as head:
            head_bytes = head.read(1 << 16)
        if not _is_deflated(head_bytes):
            return _parse_checked(
                path,
                head_bytes,
                lambda: pydicom.dcmread(
                    str(path), stop_before_pixels=stop_before_pixels, defer_size=defer_size
                ),
            )
    if data is None:
        require_file(path)
        data = path.read_bytes()
    limit = inflated_size_limit(DEFAULT_MAX_PIXELS) if inflate_limit is None else inflate_limit
    # Parsed from memory, not from the file: a crafted element length makes pydicom ask
    # a file for gigabytes, which a buffered read allocates before finding the file
    # short; a BytesIO hands back only the bytes that exist.
    read = data
    return _parse_checked(
        path,
        data,
        lambda: dcmread_bytes(
            read, stop_before_pixels=stop_before_pixels, inflate_limit=limit, path=path
        ),
    )


def _is_deflated(head: bytes) -> bool:
    try:
        fp = io.BytesIO(head)
        filereader.read_preamble(fp, False)
        file_meta = filereader._read_file_meta_info(fp)
    except Exception:  # not DICOM, cut: the parse proper says which
        return False
    return bool(file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian)


def _parse_checked(path: Path, head: bytes, parse: Any) -> pydicom.Dataset:
    """``parse()`` with pydicom's failures told apart (``head``: the file's first bytes,
    to tell a cut preamble from a file that is not DICOM)."""
    if len(head) == 0:
        raise TruncatedFileError(f"{path}: empty file")
    try:
        # pydicom turns a truncated encapsulated PixelData into a warning and drops
        # the element; catch it so a cut file is not reported as "no pixel data".
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = parse()
        for warning in caught:
            message = str(warning.message)
            if "end of file" in message.lower():
                # pydicom names the file it read, a BytesIO here: the path says it.
                message = message.replace(" in file <no filename>", "")
                raise TruncatedFileError(f"{path}: file ends early: {message}")
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
        return ds
    except CxrError:
        raise
    except InvalidDicomError as e:
        if is_truncated_preamble(head):
            raise TruncatedFileError(f"{path}: file ends inside the DICOM preamble") from e
        raise NotDicomError(f"{path}: not a DICOM file (no 'DICM' prefix): {e}") from e
    except EOFError as e:
        raise TruncatedFileError(f"{path}: file ends early: {e}") from e
    except (OSError, MemoryError) as e:
        raise DecodeError(f"{path}: cannot read DICOM: {type(e).__name__}: {e}") from e
    except Exception as e:
        # Malformed element lengths and similar: pydicom fails in many ways.
        raise NotDicomError(f"{path}: malformed DICOM: {type(e).__name__}: {e}") from e


def pixel_data_extent(ds: pydicom.Dataset) -> tuple[int, int] | None:
    """(declared length, bytes the file holds) of a defined-length PixelData element not
    yet converted, without reading its value when it was deferred (``read_dataset`` with
    ``defer_size``); None when there is no such element (absent, encapsulated, or
    already read)."""
    raw = ds._dict.get(_PIXEL_DATA)
    if not isinstance(raw, RawDataElement) or raw.length == _UNDEFINED_LENGTH:
        return None
    if raw.value is not None:
        return raw.length, len(raw.value)
    filename = getattr(ds, "filename", None)
    if not filename:
        return None
    return raw.length, max(0, os.path.getsize(filename) - (raw.value_tell or 0))


def is_truncated_preamble(head: bytes) -> bool:
    """Whether ``head``, all there is of a file, is the start of a DICOM preamble."""
    if len(head) >= 132:
        return False
    if len(head) <= 128:
        # A zeroed preamble cut short looks like a truncated DICOM file.
        return not any(head)
    return b"DICM".startswith(head[128:])
