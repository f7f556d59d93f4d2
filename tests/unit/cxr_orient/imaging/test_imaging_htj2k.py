"""HTJ2K (High-Throughput JPEG 2000) transfer syntaxes: decoded like JPEG 2000.

The files are made here with imagecodecs' HTJ2K encoder (OpenJPH, a dev dependency)
from RG1 (a real CR film of pydicom-data) and from real radiographs, then read through
the fast path (reduced resolution, Pillow's OpenJPEG) and the naive path (pydicom with
pylibjpeg-openjpeg, full resolution). Tolerances are those of the JPEG 2000 tests in
test_imaging.py.
"""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import HTJ2K, UID, HTJ2KLossless, HTJ2KLosslessRPCL

from cxr_orient.errors import (
    DecodeError,
    ImageTooLargeError,
    InvalidAttributeError,
    UnsupportedImageError,
)
from cxr_orient.imaging import (
    DEFAULT_MAX_PIXELS,
    MODEL_INPUT_SIZE,
    SUPPORTED_TRANSFER_SYNTAXES,
    load_dicom_image,
    load_dicom_image_naive,
    read_header,
)
from cxr_orient.imaging.decoders import decoder_for, htj2k
from cxr_orient.imaging.decoders.jpeg2000 import j2k_codestream_info, jpeg2000_reduced
from cxr_orient.imaging.validation import validate_pixel_spec
from tests.utils.dicom_factory import COVID_CXR, make_dicom, real_pixels

LOSSLESS = [HTJ2KLossless, HTJ2KLosslessRPCL]
ALL = [*LOSSLESS, HTJ2K]
IDS = {HTJ2KLossless: "htj2k-lossless", HTJ2KLosslessRPCL: "htj2k-rpcl", HTJ2K: "htj2k-lossy"}
#: OpenJPH's quantisation step for the lossy files (relative to the 16-bit range it
#: codes uint16 in): about 20:1 on a 12-bit film, like the JPEG 2000 tests' j2k_cr=[20].
LOSSY_STEP = 0.0005


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def _mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def encode_htj2k(stored: np.ndarray, syntax: UID) -> bytes:
    """An HTJ2K codestream of ``stored``: reversible 5-3 for the lossless syntaxes,
    irreversible 9-7 for HTJ2K; OpenJPH writes RPCL order, plus TLM for the RPCL one."""
    if syntax == HTJ2K:
        return bytes(imagecodecs.htj2k_encode(stored, LOSSY_STEP, reversible=False))
    return bytes(imagecodecs.htj2k_encode(stored, reversible=True, tlm=syntax == HTJ2KLosslessRPCL))


def to_htj2k(source: Path, target: Path, syntax: UID) -> Path:
    """``source`` (a native DICOM file) re-encoded in ``syntax``, every other element kept."""
    ds = pydicom.dcmread(source)
    ds.PixelData = encapsulate([encode_htj2k(ds.pixel_array, syntax)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax == HTJ2K:
        ds.LossyImageCompression = "01"
    ds.save_as(target, enforce_file_format=True)
    return target


def make_htj2k(path: Path, pixels: np.ndarray, syntax: UID, **attributes) -> Path:
    """:func:`make_dicom` for the HTJ2K syntaxes (its encoders do not write them)."""
    native = make_dicom(path.with_suffix(".native.dcm"), pixels, **attributes)
    return to_htj2k(native, path, syntax)


def rg1_file(name: str = "RG1_UNCR.dcm") -> Path:
    found = get_testdata_file(name)
    assert isinstance(found, str), f"pydicom test file {name} not installed"
    return Path(found)


@pytest.fixture(scope="module")
def rg1(tmp_path_factory) -> dict[UID, Path]:
    """RG1 (1955 x 1841, 15-bit MONOCHROME1 CR) in each HTJ2K syntax."""
    folder = tmp_path_factory.mktemp("rg1")
    return {s: to_htj2k(rg1_file(), folder / f"{IDS[s]}.dcm", s) for s in ALL}


@pytest.fixture(scope="module")
def rg1_reference() -> tuple[np.ndarray, np.ndarray]:
    """(fast, naive) images of the uncompressed RG1."""
    return load_dicom_image(rg1_file()), load_dicom_image_naive(rg1_file())


@pytest.fixture(scope="module")
def detector() -> np.ndarray:
    """A real radiograph at a detector's size (12 bits): decoded 4x reduced."""
    return real_pixels(1, bits=12, shape=(2560, 2048))[0]


@pytest.fixture(scope="module")
def radiograph() -> np.ndarray:
    """A small real radiograph (12 bits): too small to reduce, decoded in full."""
    return real_pixels(1, bits=12)[0]


# ------------------------------------------------------------------ the table


def test_htj2k_syntaxes_are_decoded_by_the_htj2k_decoder() -> None:
    for syntax in ALL:
        assert syntax in SUPPORTED_TRANSFER_SYNTAXES
        decoder = decoder_for(syntax)
        assert decoder is not None and decoder.name == "htj2k" and decoder.is_available()
    assert htj2k.pillow_decodes_htj2k()  # Pillow's OpenJPEG >= 2.5: the fast path runs


def test_encoder_writes_what_the_syntaxes_say(rg1) -> None:
    for syntax, path in rg1.items():
        ds = pydicom.dcmread(path)
        assert read_header(path).transfer_syntax_uid == syntax
        frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
        assert frame[:4] == b"\xff\x4f\xff\x51" and b"\xff\x50" in frame[:200]  # SOC, SIZ, CAP
        cod = frame.find(b"\xff\x52")
        assert frame[cod + 5] == 2  # RPCL progression
        assert frame[cod + 12] & 0x40  # HT code-blocks
        info = j2k_codestream_info(frame)
        assert info.reversible == (syntax != HTJ2K)
        if syntax == HTJ2KLosslessRPCL:
            assert b"\xff\x55" in frame[: frame.find(b"\xff\x90")]  # TLM in the main header


# ----------------------------------------------------------------- round trips


@pytest.mark.parametrize("syntax", LOSSLESS, ids=[IDS[s] for s in LOSSLESS])
def test_lossless_stored_values_equal_the_original(syntax, rg1, detector, tmp_path) -> None:
    original = pydicom.dcmread(rg1_file()).pixel_array
    np.testing.assert_array_equal(pydicom.dcmread(rg1[syntax]).pixel_array, original)
    path = make_htj2k(tmp_path / "d.dcm", detector, syntax)
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, detector)


def test_lossy_stored_values_close_to_the_original(rg1, detector, tmp_path) -> None:
    original = pydicom.dcmread(rg1_file()).pixel_array.astype(np.int32)
    decoded = pydicom.dcmread(rg1[HTJ2K]).pixel_array.astype(np.int32)
    assert 0 < np.abs(decoded - original).mean() < 0.002 * 32767  # lossy, by 15 of 32767
    path = make_htj2k(tmp_path / "d.dcm", detector, HTJ2K)
    decoded = pydicom.dcmread(path).pixel_array.astype(np.int32)
    assert 0 < np.abs(decoded - detector).mean() < 0.004 * 4095


# ------------------------------------------------- RG1: fast (reduced) vs naive


@pytest.mark.parametrize(
    ("syntax", "wavelet"),
    [(s, "9-7" if s == HTJ2K else "5-3") for s in ALL],
    ids=[IDS[s] for s in ALL],
)
@pytest.mark.parametrize(("size", "factor"), [(MODEL_INPUT_SIZE, 2.0), (128, 4.0)])
def test_rg1_is_decoded_at_reduced_resolution(syntax, wavelet, size, factor, rg1) -> None:
    # The smallest wavelet level with both sides >= 2 * size: 1955 x 1841 halves to
    # 978 x 921 for 256 (489 x 461 would be < 512), and quarters for 128 (1841 / 4 is
    # where Pillow alone rounds the side down).
    ds = pydicom.dcmread(rg1[syntax])
    spec = validate_pixel_spec(ds, max_pixels=DEFAULT_MAX_PIXELS, path=None)
    reduced = jpeg2000_reduced(ds, spec, size=size, path=None)
    assert reduced is not None
    rows, columns = -(-1955 // int(factor)), -(-1841 // int(factor))
    assert (reduced.stored.shape, reduced.factor, reduced.wavelet) == (
        (rows, columns),
        factor,
        wavelet,
    )


@pytest.mark.parametrize("syntax", ALL, ids=[IDS[s] for s in ALL])
def test_rg1_fast_matches_naive(syntax, rg1, rg1_reference) -> None:
    fast, naive = load_dicom_image(rg1[syntax]), load_dicom_image_naive(rg1[syntax])
    assert fast.shape == (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE) and fast.dtype == np.uint8
    assert _mean_diff(fast, naive) < 1.0
    assert _max_diff(fast, naive) <= 40
    assert np.mean(np.abs(fast.astype(int) - naive) > 8) < 0.005
    # ... and the same picture as the uncompressed file's fast path.
    assert _mean_diff(fast, rg1_reference[0]) < (1.5 if syntax == HTJ2K else 1.0)
    # RG1 is MONOCHROME1: inverted, bone bright (the spine band above both lungs).
    centre = fast[64:192, 112:144].mean()
    assert centre > fast[64:192, 40:80].mean() + 20
    assert centre > fast[64:192, 176:216].mean() + 20


@pytest.mark.parametrize("syntax", LOSSLESS, ids=[IDS[s] for s in LOSSLESS])
def test_rg1_lossless_naive_identical_to_uncompressed(syntax, rg1, rg1_reference) -> None:
    np.testing.assert_array_equal(load_dicom_image_naive(rg1[syntax]), rg1_reference[1])


def test_full_decode_when_pillow_cannot_decode_htj2k(rg1, rg1_reference, monkeypatch) -> None:
    # Without HT support in Pillow's OpenJPEG the decoder reads everything through
    # pydicom: for lossless data that is the uncompressed file's fast path exactly.
    monkeypatch.setattr(htj2k, "pillow_decodes_htj2k", lambda: False)
    np.testing.assert_array_equal(load_dicom_image(rg1[HTJ2KLossless]), rg1_reference[0])


# ------------------------------------------ real radiographs, other attributes


@pytest.mark.parametrize("syntax", ALL, ids=[IDS[s] for s in ALL])
def test_detector_sized_film_fast_matches_naive(syntax, detector, tmp_path) -> None:
    reference = load_dicom_image(make_dicom(tmp_path / "ref.dcm", detector))
    path = make_htj2k(tmp_path / "x.dcm", detector, syntax)
    ds = pydicom.dcmread(path)
    spec = validate_pixel_spec(ds, max_pixels=DEFAULT_MAX_PIXELS, path=None)
    reduced = jpeg2000_reduced(ds, spec, size=MODEL_INPUT_SIZE, path=None)
    assert reduced is not None and reduced.factor == 4.0
    fast, naive = load_dicom_image(path), load_dicom_image_naive(path)
    assert _mean_diff(fast, naive) < 1.0
    assert _max_diff(fast, naive) <= 40
    assert np.mean(np.abs(fast.astype(int) - naive) > 8) < 0.005
    assert _mean_diff(fast, reference) < 1.0


@pytest.mark.parametrize("syntax", LOSSLESS, ids=[IDS[s] for s in LOSSLESS])
def test_small_lossless_film_round_trips(syntax, radiograph, tmp_path) -> None:
    # Too small to reduce: decoded in full, so exactly the uncompressed answer.
    reference = load_dicom_image(make_dicom(tmp_path / "ref.dcm", radiograph))
    path = make_htj2k(tmp_path / "x.dcm", radiograph, syntax)
    fast = load_dicom_image(path)
    np.testing.assert_array_equal(fast, reference)
    assert _max_diff(fast, load_dicom_image_naive(path)) <= 2


def test_small_lossy_film_close(radiograph, tmp_path) -> None:
    reference = load_dicom_image(make_dicom(tmp_path / "ref.dcm", radiograph))
    path = make_htj2k(tmp_path / "x.dcm", radiograph, HTJ2K)
    fast = load_dicom_image(path)
    assert _mean_diff(fast, reference) < 16 / 4
    assert _max_diff(fast, reference) <= 16
    assert _max_diff(fast, load_dicom_image_naive(path)) <= 2


@pytest.mark.parametrize("syntax", ALL, ids=[IDS[s] for s in ALL])
def test_monochrome1_equals_monochrome2(syntax, detector, tmp_path) -> None:
    mono2 = make_htj2k(tmp_path / "m2.dcm", detector, syntax)
    inverted = (4095 - detector.astype(np.int32)).astype(np.uint16)
    mono1 = make_htj2k(tmp_path / "m1.dcm", inverted, syntax, photometric="MONOCHROME1")
    # Lossy coding errors differ between the two files by a level or two.
    tolerance = 2 if syntax == HTJ2K else 1
    assert _max_diff(load_dicom_image(mono1), load_dicom_image(mono2)) <= tolerance
    assert _max_diff(load_dicom_image_naive(mono1), load_dicom_image_naive(mono2)) <= tolerance


@pytest.mark.skipif(
    not COVID_CXR.is_dir(), reason="the tolerances are for real films: ../shared/data/covid-cxr"
)
@pytest.mark.parametrize(
    ("window", "rescale"),
    [(None, None), ((2000, 3000), None), ((1000, 2000), (2.0, -1024.0))],
    ids=["minmax", "window", "window+rescale"],
)
def test_voi_and_rescale_fast_matches_naive(window, rescale, detector, tmp_path) -> None:
    path = make_htj2k(tmp_path / "x.dcm", detector, HTJ2K, window=window, rescale=rescale)
    fast, naive = load_dicom_image(path), load_dicom_image_naive(path)
    assert _mean_diff(fast, naive) < 1.0
    assert _max_diff(fast, naive) <= 40


# --------------------------------------------------------------------- refusals


@pytest.mark.parametrize("syntax", ALL, ids=[IDS[s] for s in ALL])
def test_codestream_larger_than_its_header_is_refused(syntax, tmp_path) -> None:
    """As for JPEG 2000: decoders allocate what the codestream declares, CXR_MAX_PIXELS
    checked Rows x Columns, so a disagreement is refused before decoding."""
    path = make_htj2k(tmp_path / "x.dcm", np.full((128, 96), 700, dtype=np.uint16), syntax)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 64, 48  # the header now claims a quarter of the codestream
    ds.save_as(path)
    with pytest.raises(DecodeError, match="codestream is 96x128, but Columns x Rows is 48x64"):
        load_dicom_image(path, max_pixels=64 * 48)


def test_huge_image_refused_before_decoding(rg1, monkeypatch) -> None:
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(pydicom.pixels, "pixel_array", no_decoding)
    monkeypatch.setattr(Image, "open", no_decoding)
    with pytest.raises(ImageTooLargeError, match="max_pixels") as caught:
        load_dicom_image(rg1[HTJ2KLossless], max_pixels=1955 * 1841 - 1)
    assert caught.value.code == "image_too_large"


@pytest.mark.parametrize(
    ("bits_stored", "error", "code"),
    [
        (1, UnsupportedImageError, "unsupported_image"),
        (17, InvalidAttributeError, "invalid_attribute"),
    ],
)
def test_bits_stored_checked(bits_stored, error, code, rg1, tmp_path) -> None:
    ds = pydicom.dcmread(rg1[HTJ2KLossless])
    ds.BitsStored = bits_stored
    path = tmp_path / "x.dcm"
    ds.save_as(path)
    for loader in (load_dicom_image, load_dicom_image_naive):
        with pytest.raises(error, match="BitsStored") as caught:
            loader(path)
        assert caught.value.code == code


def test_corrupt_codestream_is_a_decode_error(rg1, tmp_path) -> None:
    ds = pydicom.dcmread(rg1[HTJ2K])
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3] + bytes(64)])
    path = tmp_path / "x.dcm"
    ds.save_as(path)
    try:
        image = load_dicom_image(path)
    except DecodeError as e:  # OpenJPEG refuses the cut codestream ...
        assert e.code == "decode_failed"
    else:  # ... or decodes what it has (it is lenient with truncation)
        assert image.shape == (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)


# ------------------------------------------------------------ the model's answer


@pytest.fixture(scope="module")
def shipped_classifier(shipped_models):
    return shipped_models()


def _lateral_film(side: int) -> np.ndarray:
    if not COVID_CXR.is_dir():
        pytest.skip("covid-cxr radiographs not available")
    for file in sorted((COVID_CXR / "lateral").glob("*.jpg")):
        with Image.open(file) as image:
            if min(image.size) >= side:
                grey = np.asarray(image.convert("L"), dtype=np.float64)
                return np.rint(grey / 255 * 4095).astype(np.uint16)
    pytest.skip(f"no covid-cxr lateral film of {side} px")


@pytest.mark.slow
def test_shipped_model_answers_htj2k_as_uncompressed(
    shipped_classifier, rg1, rg1_reference, tmp_path
) -> None:
    """RG1 in each HTJ2K syntax (fast and naive paths) gets the uncompressed RG1's
    answer, p within 0.01; a real lateral film in HTJ2K gets its naive answer."""
    images = [load_dicom_image(p) for p in rg1.values()]
    images += [load_dicom_image_naive(p) for p in rg1.values()]
    p_htj2k = shipped_classifier.predict_proba(np.stack(images))[:, 1]
    p_uncompressed = shipped_classifier.predict_proba(np.stack(rg1_reference))[:, 1]
    assert np.abs(p_uncompressed[0] - p_uncompressed[1]) <= 0.01
    np.testing.assert_array_equal(p_htj2k >= 0.5, p_uncompressed[0] >= 0.5)
    assert np.abs(p_htj2k - p_uncompressed[0]).max() <= 0.01

    film = _lateral_film(1024)
    paths = [
        make_htj2k(
            tmp_path / f"film-{IDS[s]}.dcm",
            4095 - film,
            s,
            photometric="MONOCHROME1",
            window=(2048, 3000),
        )
        for s in (HTJ2KLossless, HTJ2K)
    ]
    fast = np.stack([load_dicom_image(p) for p in paths])
    naive = np.stack([load_dicom_image_naive(p) for p in paths])
    assert max(_mean_diff(a, b) for a, b in zip(fast, naive, strict=True)) < 0.5
    p_fast = shipped_classifier.predict_proba(fast)[:, 1]
    p_naive = shipped_classifier.predict_proba(naive)[:, 1]
    np.testing.assert_array_equal(p_fast >= 0.5, p_naive >= 0.5)
    assert np.abs(p_fast - p_naive).max() <= 0.01
