"""A development set of non-chest images, kept apart from the measurement set.

:mod:`recipes.common.nonchest` is the *measurement* set: what the unusual-image score's
detection figure is reported on, and nothing is chosen on it. Choosing between score
designs (which trunk depths, which pixel statistics, how much shrinkage) needs other
non-chest images; these are they. Every one is either made here by generators the
measurement set does not use, or is an image that ships inside an installed package
and is not among the measurement images (near-duplicates of any of those, in any of the
8 dihedral poses, are dropped: pynetdicom's test files repeat pydicom's CT and MR):

- ``dicom:*``: pynetdicom's test DICOM files (an RT portal image, a secondary capture,
  ...), dicom3tools' example (an MR brain slice), matplotlib's ``s1045.ima`` (an MR
  head slice), whatever of them is not a measurement image;
- ``photo:*`` and ``science:*``: the sample pictures of scikit-image and matplotlib
  (photographs, a Shepp-Logan phantom, a retina, microscopy, the moon, coins, scanned
  text);
- ``synthetic:*``: shapes, large print, bar codes, colour bars, 1/f noise, gratings,
  rings and lines, drawn with seeded generators unlike :func:`recipes.common.nonchest.patterns`.

:func:`chest_development_images` gives chest films outside the covid-cxr collection
that must *not* be flagged: NEMA's RG1 (a real CR chest PA, four encodings) through the
worker's own decoder.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cxr_orient.imaging import MODEL_INPUT_SIZE, normalise_to_uint8, resize_square
from cxr_orient.layers import orbit_copies

logger = logging.getLogger(__name__)

__all__ = [
    "chest_development_images",
    "development_images",
    "package_images",
    "synthetic_images",
]


def _grey(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return np.asarray(image, dtype=np.float32)
        return np.asarray(image.convert("RGB").convert("L"), dtype=np.float32)
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3 and x.shape[-1] in (3, 4):
        x = x[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return x


def _model_input(grey: np.ndarray, size: int) -> np.ndarray:
    return normalise_to_uint8(resize_square(np.asarray(grey, dtype=np.float32), size))


def _dicom_files() -> Iterator[tuple[str, np.ndarray]]:
    import pydicom

    candidates: list[Path] = []
    try:
        import pynetdicom

        candidates += sorted(
            (Path(pynetdicom.__file__).parent / "tests" / "dicom_files").glob("*.dcm")
        )
    except ImportError:
        pass
    candidates += sorted(Path("/usr/share/doc/dicom3tools/examples").glob("*.dcm"))
    for path in candidates:
        try:
            ds = pydicom.dcmread(path)
            pixels = np.asarray(ds.pixel_array)
        except Exception:  # not an image, or a codec this machine lacks
            continue
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            pixels = pixels[0]
        grey = _grey(pixels)
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            grey = grey.max() - grey
        yield f"dicom:{ds.get('Modality', 'OT')}:{path.stem}", grey
    try:
        import matplotlib

        ima = Path(matplotlib.get_data_path()) / "sample_data" / "s1045.ima.gz"
        if ima.is_file():
            raw = np.frombuffer(gzip.decompress(ima.read_bytes()), np.uint16)
            yield "dicom:MR:s1045", raw.reshape(256, 256).astype(np.float32)
    except ImportError:
        pass


def _picture_files() -> Iterator[tuple[str, np.ndarray]]:
    folders: list[tuple[str, Path]] = []
    try:
        import skimage

        folders.append(("skimage", Path(skimage.__file__).parent / "data"))
    except ImportError:
        logger.warning("scikit-image is not installed: its sample pictures are left out")
    try:
        import matplotlib

        folders.append(("mpl", Path(matplotlib.get_data_path()) / "sample_data"))
    except ImportError:
        pass
    science = {
        "phantom",
        "retina",
        "microaneurysms",
        "cell",
        "ihc",
        "moon",
        "coins",
        "hubble_deep_field",
        "page",
        "text",
    }
    for prefix, folder in folders:
        for path in sorted([*folder.glob("*.png"), *folder.glob("*.jpg")]):
            try:
                with Image.open(path) as opened:
                    grey = _grey(opened)
            except OSError:
                continue
            if min(grey.shape) < 16 or float(np.ptp(grey)) == 0.0:
                continue
            kind = "science" if path.stem in science else "photo"
            yield f"{kind}:{prefix}:{path.stem}", grey
        faces = folder / "lfw_subset.npy"
        if faces.is_file():
            stack = np.load(faces)
            for i in (0, 50, 100, 150):
                yield f"photo:{prefix}:lfw{i}", np.asarray(stack[i], dtype=np.float32)


def _thumb(image: np.ndarray) -> np.ndarray:
    t = np.asarray(
        Image.fromarray(image).resize((24, 24), Image.Resampling.BOX), dtype=np.float64
    ).ravel()
    t -= t.mean()
    return t / (np.linalg.norm(t) + 1e-9)


def _near_duplicate(image: np.ndarray, references: list[np.ndarray], limit: float = 0.9) -> bool:
    """Whether any dihedral pose of ``image`` correlates above ``limit`` with a reference
    thumbnail (or its inversion: the correlation's absolute value)."""
    if not references:
        return False
    refs = np.stack(references)
    for pose in orbit_copies(image):
        if float(np.max(np.abs(refs @ _thumb(np.ascontiguousarray(pose))))) > limit:
            return True
    return False


def package_images(
    exclude: dict[str, np.ndarray] | None = None, size: int = MODEL_INPUT_SIZE
) -> dict[str, np.ndarray]:
    """The DICOM files and sample pictures of installed packages, as model input,
    without anything that (nearly) repeats an image of ``exclude`` or one already kept."""
    references = [_thumb(v) for v in (exclude or {}).values()]
    out: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    for name, grey in [*_dicom_files(), *_picture_files()]:
        image = _model_input(grey, size)
        digest = hashlib.sha256(image.tobytes()).hexdigest()
        if digest in seen or not image.any():
            continue
        if _near_duplicate(image, references):
            logger.info("development set: %s left out, it repeats a measurement image", name)
            continue
        seen.add(digest)
        references.append(_thumb(image))
        out[name] = image
    return out


def _one_over_f(rng: np.random.Generator, size: int, exponent: float) -> np.ndarray:
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    radius = np.hypot(fx, fy)
    radius[0, 0] = 1.0
    spectrum = rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))
    return np.real(np.fft.ifft2(spectrum / radius**exponent))


def synthetic_images(
    count: int = 4, *, size: int = MODEL_INPUT_SIZE, seed: int = 12345
) -> dict[str, np.ndarray]:
    """``count`` images of each of ten generators (none of them
    :func:`recipes.common.nonchest.patterns` or :func:`recipes.common.nonchest.documents`)."""
    rng = np.random.default_rng(seed)
    canvas = 512
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32) / canvas
    out: dict[str, np.ndarray] = {}
    for n in range(count):
        page = Image.new("L", (canvas, canvas), int(rng.integers(0, 256)))
        draw = ImageDraw.Draw(page)
        for _ in range(int(rng.integers(5, 25))):
            x0, y0 = rng.integers(0, canvas, 2)
            w, h = rng.integers(20, canvas // 2, 2)
            box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
            shade = int(rng.integers(0, 256))
            if rng.random() < 0.5:
                draw.ellipse(box, fill=shade)
            else:
                draw.rectangle(box, fill=shade)
        out[f"synthetic:shapes:{n}"] = np.asarray(page, np.float32)

        page = Image.new("L", (canvas, canvas), 255)
        draw = ImageDraw.Draw(page)
        for row in range(int(rng.integers(2, 6))):
            text = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "), 12))
            draw.text((20, 30 + row * 90), text, fill=0, font_size=int(rng.integers(40, 70)))
        out[f"synthetic:large_print:{n}"] = np.asarray(
            page.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2)))), np.float32
        )

        bars = rng.integers(0, 2, int(rng.integers(30, 80))).astype(np.float32)
        code = np.repeat(bars, canvas // len(bars) + 1)[:canvas]
        out[f"synthetic:barcode:{n}"] = np.tile(code, (canvas, 1)) * 255.0

        levels = rng.permutation(np.linspace(0, 255, int(rng.integers(5, 9))))
        band = np.repeat(levels, canvas // len(levels) + 1)[:canvas]
        out[f"synthetic:colour_bars:{n}"] = np.tile(band, (canvas, 1)).astype(np.float32)

        out[f"synthetic:one_over_f:{n}"] = _one_over_f(rng, canvas, 1.0 + 0.5 * n).astype(
            np.float32
        )

        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(4, 60)
        out[f"synthetic:grating:{n}"] = np.sin(
            2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle))
        ).astype(np.float32)

        cx, cy = rng.uniform(0.2, 0.8, 2)
        out[f"synthetic:rings:{n}"] = np.cos(
            np.hypot(xx - cx, yy - cy) * rng.uniform(20, 120)
        ).astype(np.float32)

        page = Image.new("L", (canvas, canvas), 0)
        draw = ImageDraw.Draw(page)
        points = rng.integers(0, canvas, (int(rng.integers(20, 200)), 2))
        draw.line([tuple(map(int, p)) for p in points], fill=255, width=int(rng.integers(1, 6)))
        out[f"synthetic:lines:{n}"] = np.asarray(page, np.float32)

        blob = np.zeros((canvas, canvas), np.float32)
        for _ in range(int(rng.integers(3, 12))):
            bx, by, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.02, 0.2)
            blob += np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * r * r))
        out[f"synthetic:blobs:{n}"] = blob + rng.normal(0, 0.05, blob.shape).astype(np.float32)

        base = rng.uniform(0, 255)
        vignette = base - rng.uniform(50, 200) * np.hypot(xx - 0.5, yy - 0.5)
        out[f"synthetic:vignette_noise:{n}"] = (
            vignette + rng.normal(0, rng.uniform(1, 30), vignette.shape)
        ).astype(np.float32)
    return {k: _model_input(v, size) for k, v in out.items()}


def development_images(
    exclude: dict[str, np.ndarray] | None = None, size: int = MODEL_INPUT_SIZE
) -> dict[str, np.ndarray]:
    """:func:`package_images` (without ``exclude``'s images) and :func:`synthetic_images`."""
    return {**package_images(exclude, size), **synthetic_images(size=size)}


def chest_development_images(size: int = MODEL_INPUT_SIZE) -> dict[str, np.ndarray]:
    """Chest films from outside the covid-cxr collection, decoded as the worker does:
    RG1 (NEMA, a CR chest PA) in each of pydicom-data's encodings this machine reads."""
    from cxr_orient.imaging import load_dicom_image
    from recipes.common.nonchest import pydicom_test_files

    out: dict[str, np.ndarray] = {}
    for path in sorted(pydicom_test_files("RG1_*.dcm")):
        try:
            out[f"chest:{Path(path).stem}"] = load_dicom_image(Path(path), size=size)
        except Exception as e:  # a codec this machine lacks
            logger.warning("%s: not decoded (%s)", path, e)
    return out
