"""Tests for cxr_orient.imaging on real DICOM files (pydicom-data, covid-cxr wrapped)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from cxr_orient.errors import (
    DecodeError,
    FileMissingError,
    ImageTooLargeError,
    InvalidAttributeError,
    MissingAttributeError,
    NoPixelDataError,
    NotDicomError,
    TruncatedFileError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
)
from cxr_orient.imaging import (
    DEFAULT_MAX_PIXELS,
    MODEL_INPUT_SIZE,
    DicomHeader,
    dataset_to_image,
    load_dicom_image,
    load_dicom_image_naive,
    load_image_file,
    normalise_to_uint8,
    read_header,
    resize_square,
    to_rgb,
)
from cxr_orient.imaging.decoders.jpeg2000 import jpeg2000_reduced
from cxr_orient.imaging.validation import validate_pixel_spec
from cxr_orient.imaging.wavelet import wavelet_box_matrix
from tests.utils.dicom_factory import COVID_CXR, make_dicom, real_pixels


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def _mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ------------------------------------------------------------------ RG1 (real CR)


def pydicom_file(name: str) -> Path:
    """A file of pydicom's test data (pydicom-data), as a path."""
    found = get_testdata_file(name)
    assert isinstance(found, str), f"pydicom test file {name} not installed"
    return Path(found)


RG1 = ["RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"]


@pytest.fixture(scope="module")
def rg1_images() -> dict[str, np.ndarray]:
    return {name: load_dicom_image(pydicom_file(name)) for name in RG1}


@pytest.mark.parametrize("name", RG1, ids=[n.removesuffix(".dcm") for n in RG1])
def test_rg1_shape_dtype_and_monochrome1_inverted(name: str, rg1_images) -> None:
    image = rg1_images[name]
    assert image.shape == (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)
    assert image.dtype == np.uint8
    # Bone bright: the mediastinum/spine band is brighter than both lung bands.
    centre = image[64:192, 112:144].mean()
    assert centre > image[64:192, 40:80].mean() + 20
    assert centre > image[64:192, 176:216].mean() + 20


def test_rg1_lossless_encodings_identical(rg1_images) -> None:
    assert _max_diff(rg1_images["RG1_UNCR.dcm"], rg1_images["RG1_UNCI.dcm"]) <= 1
    naive_uncr = load_dicom_image_naive(pydicom_file("RG1_UNCR.dcm"))
    naive_j2kr = load_dicom_image_naive(pydicom_file("RG1_J2KR.dcm"))
    np.testing.assert_array_equal(naive_uncr, naive_j2kr)


def test_rg1_jpeg2000_fast_close_to_uncompressed(rg1_images) -> None:
    # Reduced-resolution J2K decode vs full-resolution block mean: same picture.
    assert _mean_diff(rg1_images["RG1_J2KR.dcm"], rg1_images["RG1_UNCR.dcm"]) < 1.0
    assert _mean_diff(rg1_images["RG1_J2KI.dcm"], rg1_images["RG1_UNCR.dcm"]) < 1.5


@pytest.mark.parametrize("name", RG1, ids=[n.removesuffix(".dcm") for n in RG1])
def test_rg1_fast_matches_naive(name: str, rg1_images) -> None:
    naive = load_dicom_image_naive(pydicom_file(name))
    fast = rg1_images[name]
    assert _mean_diff(fast, naive) < 1.0
    assert _max_diff(fast, naive) <= 40
    assert np.mean(np.abs(fast.astype(int) - naive) > 8) < 0.005


def test_read_header_rg1() -> None:
    header = read_header(pydicom_file("RG1_J2KR.dcm"))
    assert isinstance(header, DicomHeader)
    assert header.transfer_syntax_uid == JPEG2000Lossless
    assert (header.rows, header.columns) == (1955, 1841)
    assert header.sop_instance_uid and header.study_instance_uid


# --------------------------------------------------------- transfer syntaxes

LOSSLESS = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
]
LOSSY = [(JPEGLSNearLossless, 2), (JPEG2000, 16)]


#: Lossy tolerances are set for radiographs: a clone without the development films gets
#: the synthetic stand-in (a gradient under noise), which JPEG and JPEG 2000 keep less well.
NEEDS_FILMS = pytest.mark.skipif(
    not COVID_CXR.is_dir(), reason="lossy tolerances are for real films: ../shared/data/covid-cxr"
)


@pytest.fixture(scope="module")
def radiograph() -> np.ndarray:
    return real_pixels(1, bits=12)[0]


@pytest.fixture(scope="module")
def reference(radiograph, tmp_path_factory) -> np.ndarray:
    path = tmp_path_factory.mktemp("ref") / "ref.dcm"
    return load_dicom_image(make_dicom(path, radiograph))


@pytest.mark.parametrize("syntax", LOSSLESS, ids=[s.keyword for s in LOSSLESS])
def test_lossless_syntax_round_trips(syntax, radiograph, reference, tmp_path) -> None:
    path = make_dicom(tmp_path / "x.dcm", radiograph, transfer_syntax=syntax)
    assert read_header(path).transfer_syntax_uid == syntax
    fast = load_dicom_image(path)
    np.testing.assert_array_equal(fast, reference)
    assert _max_diff(fast, load_dicom_image_naive(path)) <= 2


@NEEDS_FILMS
@pytest.mark.parametrize(("syntax", "tolerance"), LOSSY, ids=[s.keyword for s, _ in LOSSY])
def test_lossy_syntax_close(syntax, tolerance, radiograph, reference, tmp_path) -> None:
    path = make_dicom(tmp_path / "x.dcm", radiograph, transfer_syntax=syntax)
    fast = load_dicom_image(path)
    assert _mean_diff(fast, reference) < tolerance / 4
    assert _max_diff(fast, reference) <= tolerance
    assert _max_diff(fast, load_dicom_image_naive(path)) <= 2


def test_jpeg_baseline_8bit_close(radiograph, tmp_path) -> None:
    eight_bit = (radiograph >> 4).astype(np.uint8)
    reference = load_dicom_image(make_dicom(tmp_path / "u.dcm", eight_bit, bits_stored=8))
    path = make_dicom(
        tmp_path / "j.dcm", eight_bit, bits_stored=8, transfer_syntax=JPEGBaseline8Bit
    )
    fast = load_dicom_image(path)
    assert _mean_diff(fast, reference) < 1.0
    assert _max_diff(fast, reference) <= 8
    assert _max_diff(fast, load_dicom_image_naive(path)) <= 4


# No encoder is installed for JPEG lossless / extended: pydicom's own test files.
@pytest.mark.parametrize(
    "name", ["JPEG-LL.dcm", "JPGExtended.dcm"], ids=["JPEGLosslessSV1", "JPEGExtended12Bit"]
)
def test_pydicom_jpeg_files_fast_matches_naive(name: str) -> None:
    path = pydicom_file(name)
    fast = load_dicom_image(path)
    assert fast.shape == (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE) and fast.dtype == np.uint8
    assert _max_diff(fast, load_dicom_image_naive(path)) <= 2


def test_jpeg_lossless_process14(tmp_path) -> None:
    # An SV1 stream is a valid process-14 stream: relabel it as 1.2.840.10008.1.2.4.57.
    ds = pydicom.dcmread(pydicom_file("JPEG-LL.dcm"))
    sv1 = dataset_to_image(ds)
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.save_as(tmp_path / "p14.dcm")
    np.testing.assert_array_equal(load_dicom_image(tmp_path / "p14.dcm"), sv1)


# ------------------------------------------------------------- pixel semantics


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, JPEG2000Lossless], ids=["native", "j2k"]
)
def test_monochrome1_equals_monochrome2(syntax, radiograph, tmp_path) -> None:
    mono2 = load_dicom_image(make_dicom(tmp_path / "m2.dcm", radiograph, transfer_syntax=syntax))
    inverted = (4095 - radiograph.astype(np.int32)).astype(np.uint16)
    path = make_dicom(
        tmp_path / "m1.dcm", inverted, photometric="MONOCHROME1", transfer_syntax=syntax
    )
    assert _max_diff(load_dicom_image(path), mono2) <= 1
    assert _max_diff(load_dicom_image_naive(path), load_dicom_image_naive(tmp_path / "m2.dcm")) <= 1


@pytest.mark.parametrize(
    ("window", "rescale"),
    [((2000, 3000), None), ((1000, 2000), (2.0, -1024.0)), (None, (0.5, 100.0))],
    ids=["window", "window+rescale", "rescale"],
)
def test_window_and_rescale_fast_matches_naive(window, rescale, radiograph, tmp_path) -> None:
    path = make_dicom(tmp_path / "w.dcm", radiograph, window=window, rescale=rescale)
    fast, naive = load_dicom_image(path), load_dicom_image_naive(path)
    assert _mean_diff(fast, naive) < 1.0
    assert _max_diff(fast, naive) <= 40


def test_sigmoid_window(radiograph, tmp_path) -> None:
    path = make_dicom(tmp_path / "s.dcm", radiograph, window=(2000, 1500))
    ds = pydicom.dcmread(path)
    ds.VOILUTFunction = "SIGMOID"
    ds.save_as(path)
    assert _mean_diff(load_dicom_image(path), load_dicom_image_naive(path)) < 1.0


def test_signed_16bit_with_junk_above_bits_stored(radiograph, tmp_path) -> None:
    signed = radiograph.astype(np.int16) - 2048
    reference = load_dicom_image(make_dicom(tmp_path / "s.dcm", signed))
    ds = pydicom.dcmread(tmp_path / "s.dcm")
    stored = np.frombuffer(ds.PixelData, dtype="<u2") | np.uint16(0x5000)  # overlay bits
    ds.PixelData = stored.tobytes()
    ds.save_as(tmp_path / "junk.dcm")
    np.testing.assert_array_equal(load_dicom_image(tmp_path / "junk.dcm"), reference)


def test_large_image_block_mean_path(tmp_path) -> None:
    y, x = np.mgrid[0:1303, 0:1111]
    pixels = ((np.sin(x / 50.0) * np.cos(y / 70.0) + 1.0) * 2000).astype(np.uint16)
    path = make_dicom(tmp_path / "big.dcm", pixels, window=(2000, 3000))
    fast, naive = load_dicom_image(path), load_dicom_image_naive(path)
    assert _mean_diff(fast, naive) < 1.0 and _max_diff(fast, naive) <= 8


# ------------------------------------------------------------------ PNG / JPEG


@NEEDS_FILMS
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".jpeg", ".PNG"])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_load_image_file_pillow(suffix, mode, radiograph, tmp_path) -> None:
    grey = (radiograph >> 4).astype(np.uint8)
    path = tmp_path / f"x{suffix}"
    Image.fromarray(grey).convert(mode).save(
        path, format="PNG" if "png" in suffix.lower() else "JPEG"
    )
    image = load_image_file(path)
    assert image.shape == (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE) and image.dtype == np.uint8
    dicom = load_image_file(make_dicom(tmp_path / "x.dcm", grey, bits_stored=8))
    assert _mean_diff(image, dicom) < 2.0


def test_load_image_file_dispatches_dicom(tmp_path, radiograph, reference) -> None:
    path = make_dicom(tmp_path / "no_suffix", radiograph)
    np.testing.assert_array_equal(load_image_file(path), reference)


@pytest.mark.parametrize("size", [64, 224])
def test_size_argument(size, radiograph, tmp_path) -> None:
    path = make_dicom(tmp_path / "x.dcm", radiograph)
    assert load_dicom_image(path, size=size).shape == (size, size)
    assert load_dicom_image_naive(path, size=size).shape == (size, size)


# -------------------------------------------------------------- array helpers


def test_normalise_to_uint8() -> None:
    ramp = np.linspace(0.0, 1.0, 10_000, dtype=np.float32).reshape(100, 100)
    out = normalise_to_uint8(ramp)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert normalise_to_uint8(np.full((8, 8), 7.0)).tolist() == np.zeros((8, 8)).tolist()


def test_resize_square_and_to_rgb() -> None:
    image = np.arange(12 * 20, dtype=np.float32).reshape(12, 20)
    resized = resize_square(image, 4)
    assert resized.shape == (4, 4)
    assert resized.mean() == pytest.approx(image.mean(), rel=1e-4)
    rgb = to_rgb(np.zeros((5, 6), dtype=np.uint8))
    assert rgb.shape == (5, 6, 3) and rgb.dtype == np.uint8


# -------------------------------------------------------------------- refusals


def _edited(tmp_path: Path, pixels: np.ndarray, edit: Callable[[pydicom.Dataset], None]) -> Path:
    path = make_dicom(tmp_path / "bad.dcm", pixels)
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path)
    return path


def _del(keyword: str) -> Callable[[pydicom.Dataset], None]:
    return lambda ds: delattr(ds, keyword)


def _set(keyword: str, value: object) -> Callable[[pydicom.Dataset], None]:
    return lambda ds: setattr(ds, keyword, value)


def _short_pixels(ds: pydicom.Dataset) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


def _mpeg2(ds: pydicom.Dataset) -> None:
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.100")
    ds.PixelData = encapsulate([ds.PixelData])


EDITS = {
    "no_pixel_data": (_del("PixelData"), NoPixelDataError, "PixelData"),
    "rgb": (_set("PhotometricInterpretation", "RGB"), UnsupportedImageError, "'RGB'"),
    "ybr": (_set("PhotometricInterpretation", "YBR_FULL"), UnsupportedImageError, "YBR"),
    "three_samples": (_set("SamplesPerPixel", 3), UnsupportedImageError, "SamplesPerPixel"),
    "multi_frame": (_set("NumberOfFrames", 2), UnsupportedImageError, "NumberOfFrames"),
    "bits_allocated_1": (_set("BitsAllocated", 1), UnsupportedImageError, "BitsAllocated"),
    "bits_stored_1": (_set("BitsStored", 1), UnsupportedImageError, "BitsStored"),
    "bits_stored_20": (_set("BitsStored", 20), InvalidAttributeError, "BitsStored"),
    "rows_0": (_set("Rows", 0), InvalidAttributeError, "Rows"),
    "rows_missing": (_del("Rows"), MissingAttributeError, "Rows"),
    "photometric_missing": (
        _del("PhotometricInterpretation"),
        MissingAttributeError,
        "PhotometricInterpretation",
    ),
    "pixel_data_short": (_short_pixels, TruncatedFileError, "PixelData"),
    "mpeg2": (_mpeg2, UnsupportedTransferSyntaxError, "1.2.840.10008.1.2.4.100"),
}


@pytest.mark.parametrize("case", list(EDITS), ids=list(EDITS))
def test_bad_dicom_refused(case, radiograph, tmp_path) -> None:
    edit, error, fragment = EDITS[case]
    path = _edited(tmp_path, radiograph, edit)
    for loader in (load_dicom_image, load_dicom_image_naive, load_image_file):
        with pytest.raises(error, match=fragment):
            loader(path)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("SC_rgb.dcm", UnsupportedImageError),
        ("emri_small.dcm", UnsupportedImageError),
        ("liver.dcm", UnsupportedImageError),
    ],
    ids=["rgb", "multi_frame", "one_bit"],
)
def test_pydicom_files_refused(name, error) -> None:
    with pytest.raises(error):
        load_dicom_image(pydicom_file(name))


def test_huge_image_refused_before_decoding(radiograph, tmp_path, monkeypatch) -> None:
    path = make_dicom(tmp_path / "x.dcm", radiograph, transfer_syntax=JPEG2000Lossless)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(pydicom.pixels, "pixel_array", no_decoding)
    monkeypatch.setattr(Image, "open", no_decoding)
    with pytest.raises(ImageTooLargeError, match="max_pixels"):
        load_dicom_image(path, max_pixels=1000)


def test_huge_png_refused(tmp_path) -> None:
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((100, 100), dtype=np.uint8)).save(path)
    with pytest.raises(ImageTooLargeError):
        load_image_file(path, max_pixels=1000)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", TruncatedFileError),
        (b"hello, this is a text file\n" * 20, NotDicomError),
        (np.random.default_rng(1).bytes(4096), NotDicomError),
        (b"\x00" * 100, TruncatedFileError),
    ],
    ids=["empty", "text", "random_bytes", "preamble_only"],
)
def test_not_dicom(content, error, tmp_path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(content)
    for call in (load_dicom_image, load_dicom_image_naive, read_header):
        with pytest.raises(error):
            call(path)


def test_garbage_png_is_decode_error(tmp_path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"not a png")
    with pytest.raises(DecodeError, match=r"x\.png"):
        load_image_file(path)


def test_missing_file(tmp_path) -> None:
    for call in (load_dicom_image, load_image_file):
        with pytest.raises(FileMissingError):
            call(tmp_path / "absent.dcm")
    with pytest.raises(FileMissingError):
        read_header(tmp_path / "absent.dcm")


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless], ids=["native", "j2k", "rle"]
)
@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.5, 0.9, 0.999])
def test_truncated_files(syntax, fraction, radiograph, tmp_path) -> None:
    path = make_dicom(tmp_path / "x.dcm", radiograph, transfer_syntax=syntax)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    # pydicom silently drops a cut element before PixelData, which then reads as
    # "no pixel data"; a cut inside the pixel data is always reported as truncation.
    with pytest.raises((TruncatedFileError, NotDicomError, NoPixelDataError)) as caught:
        load_dicom_image(path)
    if fraction >= 0.5:
        assert caught.type is TruncatedFileError


def test_read_header_requires_uids(radiograph, tmp_path) -> None:
    path = _edited(tmp_path, radiograph, _del("StudyInstanceUID"))
    with pytest.raises(MissingAttributeError, match="StudyInstanceUID"):
        read_header(path)
    path = _edited(tmp_path, radiograph, _del("SOPInstanceUID"))
    with pytest.raises(MissingAttributeError, match="SOPInstanceUID"):
        read_header(path)


def test_read_header_fields(radiograph, tmp_path) -> None:
    path = make_dicom(
        tmp_path / "x.dcm",
        radiograph,
        view_position=None,
        patient_id="P9",
        modality="CR",
        study_uid="1.2.3",
        sop_uid="1.2.3.4",
    )
    header = read_header(path)
    assert header.view_position is None and header.patient_id == "P9"
    assert header.modality == "CR" and header.study_instance_uid == "1.2.3"
    assert header.sop_instance_uid == "1.2.3.4"
    assert (header.rows, header.columns) == radiograph.shape


def test_rg1_copy_with_odd_name(tmp_path) -> None:
    target = tmp_path / "rg1.jpg.dcm"
    shutil.copy(pydicom_file("RG1_UNCI.dcm"), target)
    assert load_image_file(target).shape == (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)


# ------------------------------------------- JPEG 2000 reduced-resolution decode


@pytest.mark.parametrize("wavelet", ["5-3", "9-7"])
@pytest.mark.parametrize(("length", "levels"), [(2500, 2), (1841, 2), (2048, 3), (1024, 1)])
def test_wavelet_box_matrix_keeps_constants(wavelet, length, levels) -> None:
    matrix = wavelet_box_matrix(length, MODEL_INPUT_SIZE, levels, wavelet)
    band = -(-length // 2**levels)
    assert matrix.shape == (MODEL_INPUT_SIZE, band)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)


def test_wavelet_box_matrix_53_is_linear_interpolation_of_the_band() -> None:
    # 5-3 synthesis with zero details interpolates linearly between band samples at
    # full-resolution positions 2**levels * k: a ramp comes back as the same ramp,
    # so each bin gets the mean position of its own pixels (away from the right edge).
    length, levels = 2048, 2
    matrix = wavelet_box_matrix(length, MODEL_INPUT_SIZE, levels, "5-3")
    band = np.arange(length // 4, dtype=np.float64) * 4
    expected = np.arange(MODEL_INPUT_SIZE) * 8 + 3.5
    np.testing.assert_allclose((matrix @ band)[:-1], expected[:-1], atol=1e-3)


@pytest.mark.parametrize(
    ("name", "wavelet"), [("RG1_J2KR.dcm", "5-3"), ("RG1_J2KI.dcm", "9-7")], ids=["J2KR", "J2KI"]
)
def test_jpeg2000_reduce_where_pillow_rounds_the_side_down(name, wavelet) -> None:
    # 1841 / 4 = 460.25: Pillow alone sizes the band 460 wide, OpenJPEG 461, and the
    # decode fails; the fast path must still get the 4x band (not fall back to 2x).
    ds = pydicom.dcmread(pydicom_file(name))
    spec = validate_pixel_spec(ds, max_pixels=DEFAULT_MAX_PIXELS, path=None)
    reduced = jpeg2000_reduced(ds, spec, size=128, path=None)
    assert reduced is not None
    band, factor, found = reduced
    assert (band.shape, factor, found) == ((489, 461), 4.0, wavelet)


def _real_film_at_least(side: int) -> np.ndarray:
    if not COVID_CXR.is_dir():
        pytest.skip("covid-cxr radiographs not available")
    for file in sorted((COVID_CXR / "lateral").glob("*.jpg")):
        with Image.open(file) as image:
            if min(image.size) >= side:
                grey = np.asarray(image.convert("L"), dtype=np.float64)
                return np.rint(grey / 255 * 4095).astype(np.uint16)
    pytest.skip(f"no covid-cxr lateral film of {side} px")


@pytest.fixture(scope="module")
def shipped_classifier(shipped_models):
    return shipped_models()


@pytest.mark.slow
def test_jpeg2000_fast_keeps_the_naive_answer(shipped_classifier, tmp_path) -> None:
    """The reduced decode gives the shipped model the reference's answer (same label,
    p within 0.01) on real CR films and on a real film wrapped in both J2K syntaxes."""
    film = _real_film_at_least(1024)
    paths = [pydicom_file("RG1_J2KR.dcm"), pydicom_file("RG1_J2KI.dcm")]
    for n, syntax in enumerate((JPEG2000Lossless, JPEG2000)):
        paths.append(
            make_dicom(
                tmp_path / f"film-{n}.dcm",
                4095 - film,
                photometric="MONOCHROME1",
                transfer_syntax=syntax,
                window=(2048, 3000),
            )
        )
    fast = np.stack([load_dicom_image(p) for p in paths])
    naive = np.stack([load_dicom_image_naive(p) for p in paths])
    # A few grey levels on average; tens at a few sharp edges (the band lacks detail).
    assert max(_mean_diff(a, b) for a, b in zip(fast, naive, strict=True)) < 0.5
    p_fast = shipped_classifier.predict_proba(fast)[:, 1]
    p_naive = shipped_classifier.predict_proba(naive)[:, 1]
    np.testing.assert_array_equal(p_fast >= 0.5, p_naive >= 0.5)
    assert np.abs(p_fast - p_naive).max() <= 0.01


def _deflated_file(tmp_path, shape=(600, 500)):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from tests.utils.dicom_factory import make_dicom

    pixels = np.random.default_rng(3).integers(0, 4096, shape, dtype=np.uint16)
    path = tmp_path / "deflated.dcm"
    make_dicom(path, pixels, transfer_syntax=DeflatedExplicitVRLittleEndian)
    return path


def test_deflated_dataset_inflated_here_reads_as_pydicom_reads_it(tmp_path):
    import pydicom

    from cxr_orient.imaging import load_dicom_image, read_header
    from cxr_orient.imaging.pipeline import decode_dataset

    path = _deflated_file(tmp_path)
    ours = load_dicom_image(path)
    theirs = decode_dataset(pydicom.dcmread(path), size=256, max_pixels=10**8, path=path)
    np.testing.assert_array_equal(ours, theirs)
    header = read_header(path)
    assert header.rows == 600 and header.transfer_syntax_uid == "1.2.840.10008.1.2.1.99"


def test_deflate_bomb_is_refused_before_it_is_inflated(tmp_path):
    from cxr_orient.errors import ImageTooLargeError
    from cxr_orient.imaging import inflated_size_limit
    from cxr_orient.imaging.reading import read_dataset

    path = _deflated_file(tmp_path)  # inflates to about 600 kB
    with pytest.raises(ImageTooLargeError, match="inflates to more than 100000 bytes"):
        read_dataset(path, stop_before_pixels=False, inflate_limit=100_000)
    assert inflated_size_limit(60_000_000) == 4 * 60_000_000 + 16 * 2**20


def test_corrupt_or_cut_deflate_stream_is_a_truncated_file(tmp_path):
    from cxr_orient.errors import TruncatedFileError
    from cxr_orient.imaging import load_dicom_image

    data = _deflated_file(tmp_path).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedFileError):
        load_dicom_image(cut)
    garbled = tmp_path / "garbled.dcm"
    garbled.write_bytes(data[:400] + bytes(255 - b for b in data[400:]))
    with pytest.raises(TruncatedFileError):
        load_dicom_image(garbled)
