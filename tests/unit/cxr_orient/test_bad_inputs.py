"""The bad-input corpus against the checked read the worker decodes with
(:func:`cxr_orient.intake.load_checked_image`) and against ingest.

Each broken file must raise its own CxrError subclass (a specific, stable
error code) with a message naming the file, never anything else. The same
corpus goes through a real worker in tests/integration/test_security.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cxr_orient import ingest
from cxr_orient.errors import CxrError
from cxr_orient.intake import load_checked_image
from cxr_orient.settings import Settings
from tests.utils.faults import BadFile, build_bad_corpus

MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[BadFile]]:
    base = tmp_path_factory.mktemp("bad-inputs")
    return base / "root", build_bad_corpus(base / "root", base / "outside")


def _sha(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def test_corpus_covers_every_kind(corpus: tuple[Path, list[BadFile]]) -> None:
    codes = {b.code for b in corpus[1]} | {b.decode_code for b in corpus[1] if b.decode_code}
    assert codes >= {
        "not_dicom",
        "truncated",
        "no_pixel_data",
        "invalid_attribute",
        "image_too_large",
        "unsupported_transfer_syntax",
        "decode_failed",
        "unsupported_image",
        "path_not_allowed",
        "file_missing",
        "file_changed",
        "missing_attribute",
    }
    assert len(corpus[1]) >= 24


def test_checked_read_refuses_each_bad_file(
    corpus: tuple[Path, list[BadFile]], tmp_path: Path
) -> None:
    root, bad = corpus
    settings = Settings(ingest_root=root, max_pixels=MAX_PIXELS, data_dir=tmp_path)
    seen: dict[str, str] = {}
    for item in bad:
        sha = _sha(item.path)  # what enqueue recorded
        if item.after_enqueue is not None:
            item.after_enqueue()
        with pytest.raises(CxrError) as caught:
            load_checked_image(
                str(item.path), expected_sha256=sha, intake=settings.intake, size=256
            )
        seen[item.kind] = caught.value.code
        assert caught.value.code == (item.decode_code or item.code), (item.kind, caught.value)
        # Readable: the message names the file (or the attribute) at fault.
        assert item.path.name in str(caught.value) or "PixelData" in str(caught.value), (
            item.kind,
            str(caught.value),
        )
    assert len(seen) == len(bad)


@pytest.mark.parametrize("kind", ["symlink", "dotdot", "not_dicom", "empty", "header_cut"])
def test_ingest_refuses_before_queueing(kind: str, tmp_path: Path) -> None:
    bad = build_bad_corpus(tmp_path / "root", tmp_path / "outside")
    wanted = {
        "symlink": "symlink outside CXR_INGEST_ROOT",
        "dotdot": "path with '..'",
        "not_dicom": "not_dicom",
        "empty": "empty",
        "header_cut": "truncated in the header (byte 300)",
    }[kind]
    item = next(b for b in bad if b.kind == wanted)
    settings = Settings(ingest_root=tmp_path / "root", max_pixels=MAX_PIXELS, data_dir=tmp_path)
    scanned = ingest.scan_file(item.path, settings)
    assert scanned.error is not None and scanned.error.code == item.code


def test_pixel_count_refused_before_any_read_of_pixels(tmp_path: Path) -> None:
    """A header claiming 65535 x 65535 never allocates 8 GiB: refused from the header."""
    bad = build_bad_corpus(tmp_path / "root", tmp_path / "outside")
    item = next(b for b in bad if b.kind == "rows_columns_absurd")
    settings = Settings(ingest_root=tmp_path / "root", max_pixels=60_000_000, data_dir=tmp_path)
    with pytest.raises(CxrError) as caught:
        load_checked_image(
            str(item.path), expected_sha256=_sha(item.path), intake=settings.intake, size=256
        )
    assert caught.value.code == "image_too_large"


def test_oversized_file_is_refused_before_it_is_read(tmp_path: Path, configure) -> None:
    from cxr_orient.errors import ImageTooLargeError
    from cxr_orient.settings import get_settings

    configure(ingest_root=tmp_path, max_pixels=1000)
    big = tmp_path / "big.dcm"
    with big.open("wb") as handle:  # sparse: 65 MiB of nothing, never written
        handle.truncate((64 << 20) + 2 * 1000 + 1)
    with pytest.raises(ImageTooLargeError, match="CXR_MAX_PIXELS=1000"):
        load_checked_image(
            str(big), expected_sha256="0" * 64, intake=get_settings().intake, size=256
        )


def test_jpeg2000_codestream_larger_than_its_header_is_refused(tmp_path: Path) -> None:
    """Decoders allocate what the codestream declares; CXR_MAX_PIXELS checked Rows x
    Columns. A disagreement is refused before decoding (found by the fuzzer)."""
    import numpy as np
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    from cxr_orient.errors import DecodeError
    from cxr_orient.imaging import load_dicom_image
    from tests.utils.dicom_factory import make_dicom

    path = make_dicom(
        tmp_path / "j2k.dcm",
        np.full((128, 96), 700, dtype=np.uint16),
        transfer_syntax=JPEG2000Lossless,
    )
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 64, 48  # the header now claims a quarter of the codestream
    ds.save_as(path)
    with pytest.raises(DecodeError, match="codestream is 96x128, but Columns x Rows is 48x64"):
        load_dicom_image(path, max_pixels=64 * 48)


def test_a_fifo_swapped_in_for_a_recorded_file_is_refused_unread(tmp_path: Path, configure) -> None:
    """Ingest checked a regular file; a FIFO put at its path since would block the
    worker's open() or read() for ever. It is refused without either blocking (the read
    runs in a thread so that a regression fails here instead of hanging the suite)."""
    import os
    import threading

    from cxr_orient.errors import NotRegularFileError
    from cxr_orient.settings import get_settings

    configure(ingest_root=tmp_path)
    path = tmp_path / "swapped.dcm"
    os.mkfifo(path)
    caught: list[BaseException] = []

    def read() -> None:
        try:
            load_checked_image(
                str(path), expected_sha256="0" * 64, intake=get_settings().intake, size=256
            )
        except BaseException as exc:
            caught.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the stuck open() before failing
        with open(path, "wb"):
            pass
        pytest.fail("the read of a FIFO blocked")
    assert len(caught) == 1 and isinstance(caught[0], NotRegularFileError), caught
    assert caught[0].code == "not_regular_file"
    assert "swapped.dcm" in str(caught[0]) and "not a regular file" in str(caught[0])
