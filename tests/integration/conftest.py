"""Integration tier: real Redis, real PostgreSQL/SQLite, real worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from tests.utils.dicom_factory import COVID_CXR, make_dicom
from tests.utils.env import flush_redis_db, redis_available

pytestmark = pytest.mark.integration

#: Redis database numbers reserved for the integration tests (0 is left to humans).
REDIS_DB = 11

SYNTAXES = [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless,
            DeflatedExplicitVRLittleEndian, JPEG2000]


@pytest.fixture
def redis_url() -> Iterator[str]:
    if not redis_available():
        pytest.fail("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    flush_redis_db(REDIS_DB)
    yield f"redis://127.0.0.1:6379/{REDIS_DB}"
    flush_redis_db(REDIS_DB)


def _real_image(path: Path, longest: int = 768) -> np.ndarray:
    with Image.open(path) as image:
        grey = image.convert("L")
        grey.thumbnail((longest, longest))
        return np.rint(np.asarray(grey, dtype=np.float64) / 255 * 4095).astype(np.uint16)


def build_corpus(root: Path, *, frontal: int, lateral: int) -> dict[str, str]:
    """Real radiographs wrapped into DICOM, in mixed transfer syntaxes and photometric
    interpretations, some with a wrong or missing ViewPosition. Returns file -> truth."""
    truth: dict[str, str] = {}
    picks = {
        "frontal": sorted((COVID_CXR / "frontal").glob("*.jpg"))[::7][:frontal],
        "lateral": sorted((COVID_CXR / "lateral").glob("*.jpg"))[::3][:lateral],
    }
    n = 0
    for label, files in picks.items():
        for file in files:
            pixels = _real_image(file)
            mono1 = n % 3 == 0
            if mono1:
                pixels = 4095 - pixels
            header_view = {0: "PA" if label == "frontal" else "LL", 1: None,
                           2: "LL" if label == "frontal" else "PA"}[n % 3]
            path = root / f"study{n % 4}" / f"{label}-{n:03d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            make_dicom(path, pixels, photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
                       transfer_syntax=SYNTAXES[n % len(SYNTAXES)], view_position=header_view,
                       patient_id=f"P{n % 4}", study_uid=f"1.2.826.0.1.3680043.10.1.{n % 4}",
                       modality="CR" if n % 2 else "DX")
            truth[str(path)] = label
            n += 1
    return truth


def add_bad_files(root: Path) -> dict[str, str]:
    """Files a hospital archive really sends; each must fail with this error code."""
    bad = root / "bad"
    bad.mkdir()
    (bad / "notes.txt").write_text("not an image")
    good = make_dicom(bad / "source.dcm", np.full((64, 64), 100, dtype=np.uint16))
    data = good.read_bytes()
    good.unlink()
    (bad / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (bad / "empty.dcm").write_bytes(b"")
    return {str(bad / "notes.txt"): "not_dicom", str(bad / "empty.dcm"): "truncated",
            str(bad / "truncated.dcm"): "truncated"}
