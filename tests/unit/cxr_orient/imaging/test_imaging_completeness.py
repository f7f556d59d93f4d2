"""cxr_orient.imaging.validation.check_pixel_data_complete, the one rule STOW-RS and the
C-STORE listener apply before acknowledging an instance: the same verdict whether the
file is parsed from memory (STOW-RS) or from disk with its large values deferred (the
listener), and a deferred value is never read."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from cxr_orient.errors import TruncatedFileError
from cxr_orient.imaging.reading import pixel_data_extent, read_dataset
from cxr_orient.imaging.validation import check_pixel_data_complete
from tests.utils.dicom_factory import make_dicom, synthetic_pixels


def _native(path: Path) -> Path:
    return make_dicom(path, synthetic_pixels((64, 64)))


def _short(path: Path) -> Path:
    ds = pydicom.dcmread(_native(path))
    ds.PixelData = ds.PixelData[:1000]
    ds.save_as(path)
    return path


def _huge_length(path: Path) -> Path:
    data = _native(path).read_bytes()
    at = data.rindex(b"\xe0\x7f\x10\x00OW\x00\x00") + 8
    path.write_bytes(data[:at] + struct.pack("<I", 0xFFFFFFF0) + data[at + 4 :])
    return path


def _cut(keep: int) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        data = make_dicom(
            path, synthetic_pixels((64, 64)), transfer_syntax=RLELossless
        ).read_bytes()
        path.write_bytes(data[:keep])
        return path

    return make


def _two_frames_one_there(path: Path) -> Path:
    ds = pydicom.dcmread(_native(path))
    ds.NumberOfFrames = 2
    ds.save_as(path)
    return path


CUT = {
    "native-short": _short,
    "native-4gb-length": _huge_length,
    "rle-no-delimiter": _cut(-8),
    "rle-fragment-cut": _cut(-100),
    "frames-missing": _two_frames_one_there,
}
WHOLE = {
    "native": _native,
    "rle": lambda p: make_dicom(p, synthetic_pixels((64, 64)), transfer_syntax=RLELossless),
    "8-bit": lambda p: make_dicom(
        p, (synthetic_pixels((64, 64)) % 256).astype(np.uint8), bits_stored=8
    ),
}
READS = {
    "memory": lambda p: read_dataset(p, stop_before_pixels=False, data=p.read_bytes()),
    "deferred": lambda p: read_dataset(p, stop_before_pixels=False, defer_size=256),
}


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
@pytest.mark.parametrize("make", CUT.values(), ids=CUT.keys())
def test_an_instance_cut_short_is_truncated(
    tmp_path: Path, make: Callable[[Path], Path], read: Callable[[Path], pydicom.Dataset]
) -> None:
    path = make(tmp_path / "cut.dcm")
    with pytest.raises(TruncatedFileError):
        check_pixel_data_complete(read(path), path=path)


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
@pytest.mark.parametrize("make", WHOLE.values(), ids=WHOLE.keys())
def test_a_whole_instance_passes(
    tmp_path: Path, make: Callable[[Path], Path], read: Callable[[Path], pydicom.Dataset]
) -> None:
    path = make(tmp_path / "whole.dcm")
    check_pixel_data_complete(read(path), path=path)


def test_a_deferred_pixel_data_is_never_read(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "a.dcm", synthetic_pixels((512, 512)))
    ds = read_dataset(path, stop_before_pixels=False, defer_size=256)
    assert pixel_data_extent(ds) == (512 * 512 * 2, 512 * 512 * 2)
    check_pixel_data_complete(ds, path=path)
    assert pixel_data_extent(ds) is not None, "still deferred: not read to be checked"
