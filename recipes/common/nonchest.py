"""Images that are not chest radiographs, for measuring the unusual-image score.

Nothing here is trained on: the score is fitted on chest films only and its threshold
on validation chest films; these images only measure how often it catches what it
never saw. They are what an archive mistakenly routes to a chest-film classifier:

- ``dicom:*``: every distinct image among pydicom's own test files but the one chest
  film (NEMA's RG1): CT, MR of head, abdomen and shoulder, a CR of the legs (RG3),
  nuclear medicine whole body, ultrasound, secondary captures, a segmentation; first
  frame, colour made grey, as a worker would see them if their headers claimed CR;
- ``document:*``: rendered pages of text, forms and tables, as scanned requisitions;
- ``pattern:*``: noise of several kinds, flat fields, gradients, stripes and grids,
  as broken detectors and test patterns produce.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cxr_orient.imaging import MODEL_INPUT_SIZE, normalise_to_uint8, resize_square

logger = logging.getLogger(__name__)

__all__ = [
    "documents",
    "non_chest_images",
    "patterns",
    "pydicom_test_files",
    "pydicom_test_images",
]


def _grey(pixels: np.ndarray, photometric: str) -> np.ndarray:
    x = np.asarray(pixels)
    if x.ndim == 3 and x.shape[-1] == 3:
        # Y of YBR is the luminance already; RGB is weighted to it (ITU-R BT.601).
        x = x[..., 0] if photometric.startswith("YBR") else x @ np.array([0.299, 0.587, 0.114])
    if photometric == "MONOCHROME1":
        x = x.max() - x
    return np.asarray(x, dtype=np.float32)


def pydicom_test_files(pattern: str) -> list[str]:
    """pydicom's own test files and ``pydicom-data``'s (a dev dependency) matching
    ``pattern``, as found on disk. ``pydicom.data.get_testdata_files`` lists the same
    files and then tries to download each of the online ones again (into
    ``~/.pydicom``), which waits on the network or, offline, on every name lookup."""
    from pydicom.data import DATA_ROOT, external_data_sources
    from pydicom.data.data_manager import DataTypes

    files = [str(p) for p in (Path(DATA_ROOT) / "test_files").glob(pattern)]
    for source in external_data_sources().values():
        files += source.get_paths(pattern, DataTypes.DATASET)
    return [f for f in files if not f.endswith(".py")]


def pydicom_test_images(size: int = MODEL_INPUT_SIZE) -> dict[str, np.ndarray]:
    """Distinct images of pydicom's test files (``pydicom-data`` included when installed)."""
    import pydicom

    out: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    for path in sorted(pydicom_test_files("*.dcm")):
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception:  # not an image, or a codec this machine lacks
            continue
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        if frames > 1:
            pixels = pixels[0]
        if pixels.ndim == 3 and pixels.shape[-1] != 3:
            pixels = pixels[0]  # a multi-frame array pydicom did not label
        if photometric == "PALETTE COLOR":
            photometric = "MONOCHROME2"
        grey = _grey(pixels, photometric)
        if grey.ndim != 2 or min(grey.shape) < 16 or float(grey.max()) == float(grey.min()):
            continue
        name = path.rsplit("/", 1)[-1].removesuffix(".dcm")
        if name.startswith("RG1_"):
            continue  # NEMA's RG1 is a chest PA: the one chest film among them
        image = normalise_to_uint8(resize_square(grey, size))
        # Re-encodings of one image (lossless, lossy, big endian...) count once.
        thumb = np.asarray(Image.fromarray(image).resize((8, 8), Image.Resampling.BOX))
        digest = hashlib.sha256((thumb // 32).astype(np.uint8).tobytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        out[f"dicom:{ds.get('Modality', 'OT')}:{name}"] = image
    return out


def documents(
    count: int = 12, *, size: int = MODEL_INPUT_SIZE, seed: int = 0
) -> dict[str, np.ndarray]:
    """Rendered pages: text lines, a form with boxes, a table; some scanned-looking."""
    rng = np.random.default_rng(seed)
    words = (
        "patient",
        "request",
        "chest",
        "x-ray",
        "clinical",
        "history",
        "cough",
        "referral",
        "date",
        "signature",
        "department",
        "radiology",
        "report",
        "ward",
    )
    out = {}
    for n in range(count):
        page = Image.new("L", (850, 1100), 250)
        draw = ImageDraw.Draw(page)
        y = 60
        kind = n % 3
        while y < 1040:
            if kind == 1 and rng.random() < 0.3:
                draw.rectangle((60, y, 790, y + 40), outline=20, width=2)
            if kind == 2:
                for col in range(60, 790, 146):
                    draw.rectangle((col, y, col + 146, y + 30), outline=40, width=1)
            line = " ".join(rng.choice(words, size=int(rng.integers(4, 12))))
            draw.text((70, y + 8), line, fill=int(rng.integers(0, 60)))
            y += int(rng.integers(28, 56))
        if n % 2:
            page = page.rotate(float(rng.uniform(-3, 3)), fillcolor=200)
            page = page.filter(ImageFilter.GaussianBlur(1.2))
        pixels = np.asarray(page, dtype=np.float32)
        if n % 4 == 3:
            pixels = (pixels + rng.normal(0, 12, pixels.shape)).astype(np.float32)
        out[f"document:{n}"] = normalise_to_uint8(resize_square(pixels, size))
    return out


def patterns(*, size: int = MODEL_INPUT_SIZE, seed: int = 0) -> dict[str, np.ndarray]:
    """Noise, flat fields, gradients, stripes and grids."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    smooth = np.asarray(
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).resize(
            (size, size), Image.Resampling.BICUBIC
        )
    )
    raw: dict[str, np.ndarray] = {
        "uniform_noise": rng.uniform(0, 255, (size, size)),
        "gaussian_noise": rng.normal(128, 40, (size, size)),
        "salt_pepper": (rng.random((size, size)) < 0.5) * 255.0,
        "smooth_noise": smooth.astype(np.float32),
        "flat_with_noise": 100 + rng.normal(0, 2, (size, size)),
        "gradient_h": xx * 255,
        "gradient_radial": np.hypot(xx - 0.5, yy - 0.5) * 255,
        "stripes": (np.sin(xx * 40) > 0) * 255.0,
        "grid": ((xx * 16 % 1 < 0.1) | (yy * 16 % 1 < 0.1)) * 255.0,
        "checkerboard": ((np.floor(xx * 8) + np.floor(yy * 8)) % 2) * 255.0,
        "disc": (np.hypot(xx - 0.5, yy - 0.5) < 0.35) * 200.0 + rng.normal(0, 5, (size, size)),
    }
    return {
        f"pattern:{k}": normalise_to_uint8(np.asarray(v, dtype=np.float32)) for k, v in raw.items()
    }


def non_chest_images(size: int = MODEL_INPUT_SIZE) -> dict[str, np.ndarray]:
    """All of the above, name -> ``(size, size)`` grey uint8."""
    return {**pydicom_test_images(size), **documents(size=size), **patterns(size=size)}
