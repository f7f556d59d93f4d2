"""JPEG lossless on the CPU by libjpeg-turbo (imagecodecs): the same stored values and the
same image as pydicom's plugins, chosen first, and turned off by CXR_CPU_DECODERS_OFF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLossless, JPEGLosslessSV1

from cxr_orient.errors import DecodeError
from cxr_orient.imaging import load_dicom_image
from cxr_orient.imaging.decoders import Decoded, decoder_for, turn_off
from cxr_orient.imaging.decoders.base import decode_with_pydicom
from cxr_orient.imaging.decoders.jpeg_turbo import decode_jpeg_lossless
from cxr_orient.imaging.validation import validate_pixel_spec
from cxr_orient.settings import Settings
from tests.utils.dicom_factory import make_dicom, real_pixels

imagecodecs = pytest.importorskip("imagecodecs")
pytestmark = pytest.mark.skipif(
    not imagecodecs.JPEG8.available, reason="imagecodecs without libjpeg-turbo"
)


@pytest.fixture(autouse=True)
def _every_decoder_on():
    turn_off([])
    yield
    turn_off([])


def _jpeg_lossless(
    path: Path,
    pixels: np.ndarray,
    *,
    bits: int,
    syntax=JPEGLosslessSV1,
    predictor: int = 1,
    photometric: str = "MONOCHROME2",
) -> Path:
    """A real film written natively, then its pixels re-encoded as JPEG lossless."""
    make_dicom(path, pixels, bits_stored=bits, photometric=photometric)
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array
    if raw.dtype.kind == "i":  # the stream carries the stored bit patterns
        raw = (raw.astype(np.int32) & ((1 << bits) - 1)).astype(np.uint16)
    stream = imagecodecs.jpeg8_encode(raw, lossless=True, predictor=predictor, bitspersample=bits)
    ds.PixelData = encapsulate([bytes(stream)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def _stored(path: Path, decode) -> Decoded:
    ds = pydicom.dcmread(path)
    spec = validate_pixel_spec(ds, max_pixels=10**8, path=path)
    return (
        decode(ds, spec, path=path)
        if decode is decode_with_pydicom
        else decode(ds, spec, size=256, path=path)
    )


@pytest.mark.parametrize(
    ("bits", "syntax", "predictor", "photometric"),
    [
        (12, JPEGLosslessSV1, 1, "MONOCHROME2"),
        (14, JPEGLosslessSV1, 1, "MONOCHROME1"),
        (16, JPEGLosslessSV1, 1, "MONOCHROME2"),
        (8, JPEGLosslessSV1, 1, "MONOCHROME2"),
        (12, JPEGLossless, 6, "MONOCHROME2"),
    ],
    ids=["12-bit", "14-bit-mono1", "16-bit", "8-bit", "process14-predictor6"],
)
def test_same_stored_values_and_image_as_pydicom(
    bits, syntax, predictor, photometric, tmp_path
) -> None:
    pixels = real_pixels(1, bits=bits, shape=(600, 480))[0]
    if bits == 8:
        pixels = pixels.astype(np.uint8)
    path = _jpeg_lossless(
        tmp_path / "ll.dcm",
        pixels,
        bits=bits,
        syntax=syntax,
        predictor=predictor,
        photometric=photometric,
    )
    assert getattr(decoder_for(syntax), "name", None) == "libjpeg-turbo"
    turbo, plugin = _stored(path, decode_jpeg_lossless), _stored(path, decode_with_pydicom)
    assert turbo.stored.dtype == plugin.stored.dtype
    np.testing.assert_array_equal(turbo.stored, plugin.stored)
    fast = load_dicom_image(path)
    turn_off(["libjpeg-turbo"])
    assert getattr(decoder_for(syntax), "name", None) == "jpeg"
    np.testing.assert_array_equal(load_dicom_image(path), fast)


def test_signed_film_sign_extended_as_pydicom(tmp_path) -> None:
    pixels = real_pixels(1, bits=12, shape=(300, 240))[0].astype(np.int16) - 2048
    path = _jpeg_lossless(tmp_path / "s.dcm", pixels, bits=12)
    turbo, plugin = _stored(path, decode_jpeg_lossless), _stored(path, decode_with_pydicom)
    assert turbo.stored.dtype == np.int16 and turbo.stored.min() < 0
    np.testing.assert_array_equal(turbo.stored, plugin.stored)


def test_a_stream_libjpeg_turbo_refuses_fails_with_pydicoms_error(tmp_path) -> None:
    # Not a JPEG stream at all: libjpeg-turbo refuses it, pydicom's plugins are asked
    # and their error is the film's recorded one. (A truncated stream is decoded with
    # its tail filled by both libraries alike: no error either way.)
    path = _jpeg_lossless(tmp_path / "t.dcm", real_pixels(1, bits=12, shape=(200, 160))[0], bits=12)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\x00\x01" * 500])
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DecodeError, match=r"(?s)cannot decode JPEG Lossless.*pylibjpeg"):
        load_dicom_image(path)


def test_turning_off_names_a_real_decoder() -> None:
    with pytest.raises(ValueError, match="no decoder named"):
        turn_off(["libjpeg-tubro"])
    assert Settings(cpu_decoders_off=" libjpeg-turbo ,").decode.cpu_decoders_off == [
        "libjpeg-turbo"
    ]
    with pytest.raises(ValueError, match="CXR_CPU_DECODERS_OFF"):
        Settings(cpu_decoders_off="nope")
