"""Real radiographs wrapped into DICOM for the tests: the covid-cxr films (when the shared
folder exists), RG1 (a real frontal CR from pydicom-data, always there), and the bad files
a hospital archive really sends."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
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

__all__ = [
    "SYNTAXES",
    "CorpusFile",
    "add_bad_files",
    "build_corpus",
    "film_dicom",
    "real_image",
    "rg1_dicom",
    "rg1_pixels",
]

SYNTAXES = [
    ExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    JPEGLSLossless,
    DeflatedExplicitVRLittleEndian,
    JPEG2000,
]


@dataclass(frozen=True)
class CorpusFile:
    """What a corpus file truly shows, and what its header claims (None: no ViewPosition)."""

    label: str
    header_view: str | None

    @property
    def header_lies(self) -> bool:
        return self.header_view is not None and self.header_view != (
            "PA" if self.label == "frontal" else "LL"
        )


def real_image(path: Path, longest: int = 768) -> np.ndarray:
    """A covid-cxr JPEG as 12-bit greyscale pixels, its longest side at most ``longest``."""
    with Image.open(path) as image:
        grey = image.convert("L")
        grey.thumbnail((longest, longest))
        return np.rint(np.asarray(grey, dtype=np.float64) / 255 * 4095).astype(np.uint16)


def build_corpus(root: Path, *, frontal: int, lateral: int) -> dict[str, CorpusFile]:
    """Real radiographs wrapped into DICOM, in mixed transfer syntaxes and photometric
    interpretations, some with a wrong or missing ViewPosition (a frontal claiming LL, a
    lateral claiming PA). Returns file -> what it shows and what its header says."""
    corpus: dict[str, CorpusFile] = {}
    picks = {
        "frontal": sorted((COVID_CXR / "frontal").glob("*.jpg"))[::7][:frontal],
        "lateral": sorted((COVID_CXR / "lateral").glob("*.jpg"))[::3][:lateral],
    }
    n = 0
    for label, files in picks.items():
        for file in files:
            pixels = real_image(file)
            mono1 = n % 3 == 0
            if mono1:
                pixels = 4095 - pixels
            header_view = {
                0: "PA" if label == "frontal" else "LL",
                1: None,
                2: "LL" if label == "frontal" else "PA",
            }[n % 3]
            path = root / f"study{n % 4}" / f"{label}-{n:03d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            make_dicom(
                path,
                pixels,
                photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
                transfer_syntax=SYNTAXES[n % len(SYNTAXES)],
                view_position=header_view,
                patient_id=f"P{n % 4}",
                study_uid=f"1.2.826.0.1.3680043.10.1.{n % 4}",
                modality="CR" if n % 2 else "DX",
            )
            corpus[str(path)] = CorpusFile(label, header_view)
            n += 1
    return corpus


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
    return {
        str(bad / "notes.txt"): "not_dicom",
        str(bad / "empty.dcm"): "truncated",
        str(bad / "truncated.dcm"): "truncated",
    }


@lru_cache(maxsize=1)
def rg1_pixels() -> np.ndarray:
    """RG1_UNCR's stored pixels (a real chest PA, CR, MONOCHROME1, 15 bits), read-only."""
    import pydicom
    from pydicom.data import get_testdata_file

    found = get_testdata_file("RG1_UNCR.dcm")
    assert isinstance(found, str), "pydicom-data's RG1_UNCR.dcm is not installed"
    pixels = np.asarray(pydicom.dcmread(found).pixel_array)
    pixels.setflags(write=False)
    return pixels


def rg1_dicom(
    path: Path,
    *,
    view_position: str | None = "PA",
    study_uid: str | None = None,
    patient_id: str = "P1",
) -> Path:
    """RG1 (a frontal CR) as a new instance at ``path``, claiming ``view_position``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_dicom(
        path,
        rg1_pixels(),
        photometric="MONOCHROME1",
        bits_stored=15,
        view_position=view_position,
        study_uid=study_uid,
        patient_id=patient_id,
        modality="CR",
    )


def film_dicom(
    path: Path,
    *,
    view: str,
    index: int = 0,
    view_position: str | None = None,
    study_uid: str | None = None,
) -> Path:
    """The ``index``-th covid-cxr film of ``view`` ("frontal"/"lateral") as DICOM at
    ``path``; callers skip when :data:`COVID_CXR` is absent."""
    film = sorted((COVID_CXR / view).glob("*.jpg"))[index]
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_dicom(
        path, real_image(film), view_position=view_position, study_uid=study_uid, modality="DX"
    )
