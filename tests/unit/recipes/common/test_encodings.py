"""recipes.common.encodings: a film in each transfer syntax, decoded by the product."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxr_orient.imaging import load_dicom_image
from recipes.common.encodings import ENCODINGS, REFERENCE, Encoding, encode_film


def _film() -> np.ndarray:
    """A smooth, noisy 8-bit stand-in for a radiograph, not square (turns change it)."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:300, 0:260]
    smooth = 120 + 60 * np.sin(x / 23.0) * np.cos(y / 31.0) + 40 * (y / 300)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def _decoded(encoding: Encoding, pixels: np.ndarray) -> np.ndarray:
    data = encode_film(pixels, encoding)
    return load_dicom_image(Path(f"{encoding.name}.dcm"), data=data)


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.name)
def test_each_encoding_writes_its_syntax_and_says_whether_it_lost(
    encoding: Encoding, tmp_path: Path
) -> None:
    pixels = _film()
    path = tmp_path / "film.dcm"
    path.write_bytes(encode_film(pixels, encoding))
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == encoding.syntax
    assert (ds.get("LossyImageCompression") == "01") == encoding.lossy
    stored = ds.pixel_array
    assert stored.shape == pixels.shape
    if encoding.lossy:
        assert not np.array_equal(stored, pixels)
        assert np.abs(stored.astype(int) - pixels).mean() < 8
    else:
        assert np.array_equal(stored, pixels)


@pytest.mark.parametrize("encoding", [e for e in ENCODINGS if not e.lossy], ids=lambda e: e.name)
def test_lossless_encodings_decode_to_the_reference_image(encoding: Encoding) -> None:
    # A film this small the product decodes in full; from twice 512 px on it decodes
    # JPEG 2000 and HTJ2K at reduced resolution: near the reference's image, not equal.
    pixels = _film()
    assert np.array_equal(_decoded(encoding, pixels), _decoded(REFERENCE, pixels))
