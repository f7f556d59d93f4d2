"""Side-by-side measurements: decode (naive vs ours), the model, the tutorial script.

Plain functions returning dicts of numbers; :mod:`bench.run` puts them together.
Timings are best-of or totals over the corpus, on whatever else the machine runs:
compare ratios measured in the same run, never absolute figures across runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.corpus import CorpusItem, max_pixel_difference
from cxr_orient.imaging import MODEL_INPUT_SIZE, load_dicom_image, load_dicom_image_naive

if TYPE_CHECKING:
    from cxr_orient.modelstore import Classifier

logger = logging.getLogger(__name__)


def _best_ms(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def decode_comparison(
    items: Sequence[CorpusItem], *, repeats: int = 2, classifier: Classifier | None = None
) -> dict[str, Any]:
    """Per transfer syntax: naive and fast decode ms (best of ``repeats``, interleaved
    per file), speed-up, max pixel difference and, with a classifier, prediction
    agreement (same label, |p_lateral difference|)."""
    rows: list[dict[str, Any]] = []
    naive_images, fast_images = [], []
    for item in items:
        path = item.path
        naive_ms = _best_ms(partial(load_dicom_image_naive, path), repeats)
        fast_ms = _best_ms(partial(load_dicom_image, path), repeats)
        naive, fast = load_dicom_image_naive(item.path), load_dicom_image(item.path)
        naive_images.append(naive)
        fast_images.append(fast)
        rows.append(
            {
                **item.to_dict(),
                "naive_ms": naive_ms,
                "fast_ms": fast_ms,
                "max_pixel_diff": max_pixel_difference(naive, fast),
                "mean_pixel_diff": float(np.abs(naive.astype(np.int16) - fast).mean()),
            }
        )
    if classifier is not None and rows:
        from cxr_orient.modelstore import predicted_class

        p_naive = classifier.predict_proba(np.stack(naive_images))[:, 1]
        p_fast = classifier.predict_proba(np.stack(fast_images))[:, 1]
        for row, a, b in zip(rows, p_naive, p_fast, strict=True):
            row["p_lateral_naive"] = float(a)
            row["p_lateral_fast"] = float(b)
            row["same_label"] = bool(predicted_class(a) == predicted_class(b))
            row["p_diff"] = float(abs(a - b))
    by_syntax: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = by_syntax.setdefault(
            row["syntax"],
            {
                "files": 0,
                "naive_ms": 0.0,
                "fast_ms": 0.0,
                "max_pixel_diff": 0,
                "max_p_diff": 0.0,
                "labels_agree": True,
            },
        )
        entry["files"] += 1
        entry["naive_ms"] += row["naive_ms"]
        entry["fast_ms"] += row["fast_ms"]
        entry["max_pixel_diff"] = max(entry["max_pixel_diff"], row["max_pixel_diff"])
        if "p_diff" in row:
            entry["max_p_diff"] = max(entry["max_p_diff"], row["p_diff"])
            entry["labels_agree"] = entry["labels_agree"] and row["same_label"]
    for entry in by_syntax.values():
        entry["naive_ms"] /= entry["files"]
        entry["fast_ms"] /= entry["files"]
        entry["speedup"] = entry["naive_ms"] / entry["fast_ms"] if entry["fast_ms"] else None
    return {"files": rows, "by_syntax": by_syntax}


def decode_rate(
    pool: Executor, paths: Sequence[Path], *, warm_up: int = 0, chunksize: int = 1
) -> float:
    """Images/s of the fast decode of ``paths`` on ``pool`` (threads or processes), after
    decoding the first ``warm_up`` of them once, untimed."""
    if warm_up:
        list(pool.map(load_dicom_image, paths[:warm_up]))
    start = time.perf_counter()
    list(pool.map(load_dicom_image, paths, chunksize=chunksize))
    return len(paths) / (time.perf_counter() - start)


def decode_capacity(items: Sequence[CorpusItem], *, threads: int, rounds: int = 1) -> float:
    """Images/s of the fast decode over the corpus with ``threads`` threads (the worker's way)."""
    paths = [item.path for item in items] * max(1, rounds)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return decode_rate(pool, paths, warm_up=threads)


def model_throughput(
    classifier: Classifier,
    batch_sizes: Sequence[int],
    *,
    min_seconds: float = 1.5,
    max_batches: int = 20,
) -> dict[int, float]:
    """Images/s of ``classifier.predict``, the worker's call (every head and the answer
    rule), on the worker's input: uint8 RGB, the three channels made in its decode
    threads (their cost is in the decode figures)."""
    rng = np.random.default_rng(0)
    size = classifier.input_size
    out: dict[int, float] = {}
    for batch_size in batch_sizes:
        grey = rng.integers(0, 256, (batch_size, size, size, 1), dtype=np.uint8)
        batch = np.repeat(grey, 3, axis=-1)
        classifier.predict(batch)  # trace / warm up
        done, start = 0, time.perf_counter()
        while done < max_batches and (time.perf_counter() - start < min_seconds or done < 2):
            classifier.predict(batch)
            done += 1
        out[batch_size] = done * batch_size / (time.perf_counter() - start)
    return out


def tutorial_script(
    items: Sequence[CorpusItem], model_path: str, *, batch: int | None
) -> dict[str, Any]:
    """The script a hospital engineer writes after the tutorial, timed end to end.

    Per file: ``dcmread`` + ``pixel_array``, ``apply_voi_lut``, min-max to 8 bits,
    MONOCHROME1 inverted, Pillow resize to 256, three channels; then
    ``model.predict`` one image at a time (``batch=None``) or in lists of ``batch``.
    """
    import keras
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_voi_lut

    model = keras.saving.load_model(model_path, compile=False)

    def prepare(path: str) -> np.ndarray:
        ds = pydicom.dcmread(path)
        pixels = apply_voi_lut(ds.pixel_array, ds).astype(np.float64)
        pixels = (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1e-9) * 255.0
        if ds.PhotometricInterpretation == "MONOCHROME1":
            pixels = 255.0 - pixels
        image = Image.fromarray(pixels.astype(np.uint8)).resize(
            (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)
        )
        return np.repeat(np.asarray(image, dtype=np.float32)[..., None], 3, axis=-1)

    model.predict(np.zeros((1, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, 3), np.float32), verbose=0)
    start = time.perf_counter()
    pending: list[np.ndarray] = []
    for item in items:
        pending.append(prepare(str(item.path)))
        if batch is None or len(pending) >= batch:
            model.predict(np.stack(pending), verbose=0)
            pending.clear()
    if pending:
        model.predict(np.stack(pending), verbose=0)
    elapsed = time.perf_counter() - start
    return {
        "images": len(items),
        "seconds": elapsed,
        "images_per_s": len(items) / elapsed,
        "batch": batch or 1,
    }
