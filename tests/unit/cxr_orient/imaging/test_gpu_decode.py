"""cxr_orient.imaging.gpu and worker.decoding, where there is no GPU (CI): the choice of
decode device, which files the card would take, the card's pixel steps run with NumPy
against the reference decoder, and the worker's batch decode falling back to the CPU.
The card itself is measured by bench/gpu_decode.py on the lent GPU, never here."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import libjpeg
import numpy as np
import openjpeg
import pydicom
import pydicom.pixels
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless

from bench.corpus import CorpusItem, build_corpus
from cxr_orient.errors import FileChangedError
from cxr_orient.imaging import load_dicom_image, load_dicom_image_naive
from cxr_orient.imaging.gpu import (
    CARD_SYNTAX_NAMES,
    CardJob,
    box_matrix,
    card_libraries_installed,
    card_syntaxes,
    choose_decode_device,
    plan_card_job,
    read_and_plan,
    reduce_stored,
)
from cxr_orient.imaging.processing import normalise_to_uint8, resize_square
from cxr_orient.imaging.validation import validate_pixel_spec
from cxr_orient.settings import Settings
from tests.utils.dicom_factory import make_dicom, real_pixels
from worker.decoding import decode_batch, decode_batch_with, decode_device

CARD = (
    "j2k-lossless",
    "j2k-lossy",
    "jpeg-baseline",
    "htj2k-lossless",
    "htj2k-lossy",
    "explicit-le",
    "jpeg-lossless",
    "implicit-le",
    "deflated",
)
CPU = ("rle", "jpeg-ls", "explicit-be")
#: Added with JPEG lossless and native pixels on the card (issue 23), written apart so
#: the files of the first ones stay what they were.
ADDED = ("jpeg-lossless", "implicit-le", "deflated", "explicit-be")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[CorpusItem]:
    """Card and CPU syntaxes, MONOCHROME1 and 2, windowed or not, 600-900 px."""
    root = tmp_path_factory.mktemp("corpus")
    first = tuple(n for n in CARD + CPU if n not in ADDED)
    return build_corpus(root, per_syntax=2, scale=0.3, syntaxes=first) + build_corpus(
        root / "added", per_syntax=2, scale=0.3, syntaxes=ADDED
    )


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


@pytest.mark.parametrize(
    ("setting", "installed", "device"),
    [
        ("cpu", True, "cpu"),
        ("cpu", False, "cpu"),
        ("auto", True, "gpu"),
        ("auto", False, "cpu"),
        ("gpu", True, "gpu"),
        ("gpu", False, "cpu"),
    ],
)
def test_decode_device_choice(setting: str, installed: bool, device: str) -> None:
    chosen, reason = choose_decode_device(setting, libraries_installed=installed)
    assert chosen == device
    assert f"CXR_DECODE_DEVICE={setting}" in reason
    if setting != "cpu" and not installed:
        assert "nvidia-nvimgcodec" in reason  # what to install


def test_decode_device_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="auto, cpu or gpu"):
        choose_decode_device("tpu", libraries_installed=True)
    with pytest.raises(ValueError):
        Settings(decode_device="tpu")


def test_card_plans_its_syntaxes_only(corpus: list[CorpusItem]) -> None:
    for item in corpus:
        planned = read_and_plan(item.path, data=item.path.read_bytes(), size=256, max_pixels=10**8)
        assert (planned.job is not None) == (item.syntax in CARD), item
        if planned.job is not None:
            assert (planned.job.rows, planned.job.columns) == (item.rows, item.columns)
            assert planned.job.monochrome1 == (item.photometric == "MONOCHROME1")
            assert (planned.job.window is not None) == item.windowed
            assert (planned.job.window_bounds is not None) == item.windowed


def test_card_takes_only_the_syntaxes_chosen(corpus: list[CorpusItem]) -> None:
    """CXR_CARD_SYNTAXES: what it does not name is planned for the CPU; the default
    leaves classic JPEG 2000 on the CPU (faster there at reduced resolution)."""
    chosen = card_syntaxes(["htj2k-lossless", "jpeg-baseline", "native"])
    default = card_syntaxes(Settings(_env_file=None).decode.card_syntaxes)
    for item in corpus:
        planned = read_and_plan(
            item.path, data=item.path.read_bytes(), size=256, max_pixels=10**8, syntaxes=chosen
        )
        expected = item.syntax in (
            "htj2k-lossless",
            "jpeg-baseline",
            "explicit-le",
            "implicit-le",
            "deflated",
        )
        assert (planned.job is not None) == expected, item
        by_default = read_and_plan(
            item.path, data=item.path.read_bytes(), size=256, max_pixels=10**8, syntaxes=default
        )
        assert (by_default.job is not None) == (
            item.syntax in CARD and not item.syntax.startswith("j2k")
        ), item
    with pytest.raises(ValueError, match="CXR_CARD_SYNTAXES"):
        Settings(card_syntaxes="htj2k,webp")


def test_card_masks_native_values_to_bits_stored(tmp_path: Path) -> None:
    """Native 12-bit values with the high bits set (an overlay left in them): the card's
    steps mask them as the CPU path does."""
    pixels = real_pixels(1, bits=12, seed=5, shape=(600, 500))[0].astype(np.uint16)
    path = make_dicom(tmp_path / "high-bits.dcm", pixels, bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.PixelData = (pixels | np.uint16(0xF000)).astype("<u2").tobytes()
    ds.save_as(path)
    planned = read_and_plan(path, data=path.read_bytes(), size=256, max_pixels=10**8)
    assert planned.job is not None and planned.job.mask == 0x0FFF
    stored = np.frombuffer(planned.job.codestream, planned.job.raw_dtype).reshape(600, 500)
    assert _max_diff(_card_image(planned.job, stored), load_dicom_image(path)) <= 1


def _spec_and_ds(path: Path) -> tuple[pydicom.Dataset, object]:
    ds = pydicom.dcmread(path)
    return ds, validate_pixel_spec(ds, max_pixels=10**8, path=path)


def test_cpu_keeps_what_the_card_cannot_take(tmp_path: Path) -> None:
    pixels = real_pixels(1, bits=12, seed=3, shape=(600, 500))[0]
    small = make_dicom(
        tmp_path / "small.dcm", pixels[:200, :300], bits_stored=12, transfer_syntax=JPEG2000Lossless
    )
    signed = make_dicom(
        tmp_path / "signed.dcm",
        pixels.astype(np.int16) - 2048,
        bits_stored=12,
        transfer_syntax=JPEG2000Lossless,
    )
    lut = make_dicom(tmp_path / "lut.dcm", pixels, bits_stored=12, transfer_syntax=JPEG2000Lossless)
    ds = pydicom.dcmread(lut)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = np.linspace(0, 65535, 4096).astype("<u2").tobytes()
    ds.VOILUTSequence = [item]
    ds.save_as(lut)
    for path in (small, signed, lut):
        case, spec = _spec_and_ds(path)
        assert plan_card_job(case, spec, size=256, path=path) is None, path  # type: ignore[arg-type]


def _card_image(job: CardJob, stored: np.ndarray, size: int = 256) -> np.ndarray:
    small = reduce_stored(
        np, stored, job, box_matrix(job.rows, size), box_matrix(job.columns, size)
    )
    return normalise_to_uint8(small)


def test_card_steps_match_the_reference(corpus: list[CorpusItem]) -> None:
    """The card's steps (here in NumPy) on fully decoded values equal the full-resolution
    reference to a grey level, and the fast CPU path (reduced decodes) to a few."""
    for item in corpus:
        if item.syntax not in CARD:
            continue
        planned = read_and_plan(item.path, data=item.path.read_bytes(), size=256, max_pixels=10**8)
        assert planned.job is not None
        if planned.job.raw_dtype is not None:  # native: the file's bytes, as the card gets them
            stored = np.frombuffer(planned.job.codestream, planned.job.raw_dtype).reshape(
                planned.job.rows, planned.job.columns
            )
        else:
            stored = pydicom.pixels.pixel_array(planned.ds)
        if planned.job.clip_max is not None:
            stored = np.minimum(stored, planned.job.clip_max)
        image = _card_image(planned.job, stored)
        assert _max_diff(image, load_dicom_image_naive(item.path)) <= 1, item
        assert _max_diff(image, load_dicom_image(item.path)) <= 12, item


def test_box_matrix_is_the_area_resize() -> None:
    values = np.random.default_rng(0).integers(0, 4096, (700, 555)).astype(np.float32)
    product = box_matrix(700, 256) @ values @ box_matrix(555, 256).T
    np.testing.assert_allclose(product, resize_square(values, 256), rtol=1e-5, atol=1e-3)


@dataclass(frozen=True)
class _File:
    instance_id: int
    file_path: str
    file_sha256: str


class NumpyCard:
    """The card's steps in NumPy, codestreams decoded by OpenJPEG and Pillow: a stand-in for
    nvImageCodec where there is no GPU. Files named in ``fail`` fail as a card can."""

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.fail = set(fail)
        self.seen: list[str] = []

    def decode(self, jobs: Sequence[CardJob], *, size: int) -> list[np.ndarray | Exception]:
        out: list[np.ndarray | Exception] = []
        for job in jobs:
            name = job.path.name if job.path else ""
            self.seen.append(name)
            if name in self.fail:
                out.append(RuntimeError("nvjpeg2k: out of memory"))
                continue
            if job.raw_dtype is not None:  # native pixels, as read
                stored = np.frombuffer(job.codestream, job.raw_dtype).reshape(job.rows, job.columns)
            elif job.codestream.startswith(b"\xff\x4f"):  # JPEG 2000 and HTJ2K
                stored = np.asarray(openjpeg.decode(job.codestream))
            elif b"\xff\xc3" in job.codestream[:4096]:  # lossless JPEG (SOF3)
                stored = np.asarray(libjpeg.decode(job.codestream))
            else:
                stored = np.asarray(Image.open(io.BytesIO(job.codestream)))
            out.append(_card_image(job, stored, size))
        return out


def _files(corpus: list[CorpusItem]) -> list[_File]:
    return [
        _File(k, str(i.path), hashlib.sha256(i.path.read_bytes()).hexdigest())
        for k, i in enumerate(corpus)
    ]


def _settings(root: Path, device: str = "auto") -> Settings:
    """Every syntax the card can take, classic JPEG 2000 too."""
    return Settings(
        ingest_root=root,
        decode_device=device,
        decode_threads=2,
        card_syntaxes=",".join(CARD_SYNTAX_NAMES),
    )


def test_batch_on_a_card_agrees_with_the_cpu(corpus: list[CorpusItem]) -> None:
    """Card files go to the card in one call, the rest to the CPU threads; one the card
    fails on is decoded on the CPU; a changed file fails alone."""
    root = corpus[0].path.parent
    files = _files(corpus)
    files[0] = _File(0, files[0].file_path, "0" * 64)  # changed since it was recorded
    failing = next(i.path.name for i in corpus if i.syntax == "j2k-lossy")
    card = NumpyCard(fail=[failing])
    results = decode_batch_with(files, _settings(root), 256, card=card)
    assert len(results) == len(files)
    assert isinstance(results[0][1], FileChangedError)
    card_names = {i.path.name for i in corpus[1:] if i.syntax in CARD}
    assert set(card.seen) == card_names
    for item, (image, error, ms) in zip(corpus[1:], results[1:], strict=True):
        assert error is None and image is not None and ms > 0
        assert image.shape == (256, 256, 3)
        cpu = load_dicom_image(item.path)
        limit = 12 if item.syntax in CARD and item.path.name != failing else 0
        assert _max_diff(image[:, :, 0], cpu) <= limit, item


def test_without_card_libraries_the_batch_is_the_cpu_path(corpus: list[CorpusItem]) -> None:
    if card_libraries_installed():
        pytest.skip("nvImageCodec and CuPy are installed here: this is the no-GPU case")
    settings = _settings(corpus[0].path.parent, device="gpu")
    assert decode_device(settings) == "cpu"
    results = decode_batch(_files(corpus), settings, 256)
    for item, (image, error, _) in zip(corpus, results, strict=True):
        assert error is None and image is not None
        assert _max_diff(image[:, :, 0], load_dicom_image(item.path)) == 0
