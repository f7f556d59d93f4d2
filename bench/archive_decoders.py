"""The CPU decoder choices of the lossless archive mix, measured on real films (issue 23).

``python -m bench.archive_decoders [--films 40] [--out DIR]``:

* JPEG lossless SV1: libjpeg-turbo (imagecodecs) against pydicom's plugin (pylibjpeg),
  the decode alone and the whole ``load_dicom_image``, per detector size, best of 5;
* JPEG 2000 lossless at reduced resolution: the band the product decodes (sides >= 2x
  the model input) against one wavelet level deeper (>= 1x), each against the same film
  stored uncompressed: decode time, pixel differences, and the shipped model's answers
  (p_lateral, the label, the orientation head, the unusual-image score).

Writes ``DIR/<machine>-archive-decoders.json`` and prints it. Real films (covid-cxr,
resized to the detector sizes of :mod:`bench.corpus`) where the shared folder exists.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import JPEG2000Lossless

from bench.corpus import build_corpus

SHAPES = ((2500, 2048, 12), (3000, 2500, 14), (2304, 2880, 15), (2048, 2048, 12))


def _best_ms(fn: Callable[[], Any], rounds: int = 5) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(min(times) * 1000, 1)


def jpeg_lossless(root: Path) -> list[dict[str, Any]]:
    """Per corpus file of each detector size: decode and whole-path times, both ways."""
    from cxr_orient.imaging import load_dicom_image
    from cxr_orient.imaging.decoders import turn_off
    from cxr_orient.imaging.decoders.base import decode_with_pydicom
    from cxr_orient.imaging.decoders.jpeg_turbo import decode_jpeg_lossless
    from cxr_orient.imaging.validation import validate_pixel_spec

    rows = []
    for item in build_corpus(root, per_syntax=4, syntaxes=("jpeg-lossless",)):
        ds = pydicom.dcmread(item.path)
        spec = validate_pixel_spec(ds, max_pixels=10**8, path=None)
        turbo = decode_jpeg_lossless(ds, spec, size=256, path=None).stored
        plugin = decode_with_pydicom(ds, spec, path=None).stored
        row: dict[str, Any] = {
            "rows": item.rows,
            "columns": item.columns,
            "bits": item.bits_stored,
            "same_stored_values": bool(np.array_equal(turbo, plugin)),
            "decode_turbo_ms": _best_ms(
                partial(decode_jpeg_lossless, ds, spec, size=256, path=None)
            ),
            "decode_pylibjpeg_ms": _best_ms(partial(decode_with_pydicom, ds, spec, path=None)),
        }
        turn_off([])
        row["load_turbo_ms"] = _best_ms(partial(load_dicom_image, item.path))
        turn_off(["libjpeg-turbo"])
        row["load_pylibjpeg_ms"] = _best_ms(partial(load_dicom_image, item.path))
        turn_off([])
        rows.append(row)
    return rows


def j2k_band(root: Path, films: int, model: Path) -> dict[str, Any]:
    """The reduced JPEG 2000 lossless decode at margin 2 (the product) and 1 (a level
    deeper) against the same film uncompressed."""
    from bench.dicom_factory import make_dicom, real_pixels
    from cxr_orient.imaging import load_dicom_image, to_rgb
    from cxr_orient.imaging.decoders.jpeg2000 import jpeg2000_reduced
    from cxr_orient.imaging.pipeline import stored_to_image
    from cxr_orient.imaging.validation import validate_pixel_spec
    from cxr_orient.modelstore import Classifier, predicted_class

    root.mkdir(parents=True, exist_ok=True)
    images: dict[str, list[np.ndarray]] = {"reference": [], "margin2": [], "margin1": []}
    seconds = {"margin2": 0.0, "margin1": 0.0}
    for k in range(films):
        rows, columns, bits = SHAPES[k % len(SHAPES)]
        view = "frontal" if k % 2 == 0 else "lateral"
        pixels = real_pixels(1, bits=bits, seed=k, view=view, shape=(rows, columns), start=7 * k)[0]
        mono1 = (k // 2) % 2 == 1
        if mono1:
            pixels = (1 << bits) - 1 - pixels
        kw: dict[str, Any] = {
            "photometric": "MONOCHROME1" if mono1 else "MONOCHROME2",
            "bits_stored": bits,
            "window": ((1 << bits) * 0.5, (1 << bits) * 0.8) if k % 3 == 1 else None,
        }
        native = make_dicom(root / f"native-{k}.dcm", pixels, **kw)
        coded = make_dicom(root / f"j2k-{k}.dcm", pixels, transfer_syntax=JPEG2000Lossless, **kw)
        images["reference"].append(load_dicom_image(native))
        ds = pydicom.dcmread(coded)
        spec = validate_pixel_spec(ds, max_pixels=10**8, path=None)
        for margin in (2, 1):
            start = time.perf_counter()
            decoded = jpeg2000_reduced(ds, spec, size=256, path=None, margin=margin)
            assert decoded is not None, "a reduced decode was expected"
            images[f"margin{margin}"].append(
                stored_to_image(decoded, ds, spec, size=256, path=None)
            )
            seconds[f"margin{margin}"] += time.perf_counter() - start
    classifier = Classifier.from_checkpoint(model, verify=False)
    heads = {
        k: classifier.predict_heads(np.stack([to_rgb(g) for g in v])) for k, v in images.items()
    }
    orientation = {k: np.asarray(h.orientation).argmax(1) for k, h in heads.items()}
    unusual = {k: np.asarray(h.unusual, dtype=np.float64) for k, h in heads.items()}
    p = {
        k: classifier.predict_proba(np.stack([to_rgb(g) for g in v]))[:, 1]
        for k, v in images.items()
    }
    out: dict[str, Any] = {"films": films, "model": model.name}
    for key in ("margin2", "margin1"):
        diff = np.abs(p[key] - p["reference"])
        pixel = [
            np.abs(a.astype(int) - b.astype(int))
            for a, b in zip(images[key], images["reference"], strict=True)
        ]
        out[key] = {
            "decode_and_process_ms_mean": round(1000 * seconds[key] / films, 1),
            "max_p_diff": float(diff.max()),
            "mean_p_diff": float(diff.mean()),
            "same_labels": int((predicted_class(p[key]) == predicted_class(p["reference"])).sum()),
            "same_orientation": int((orientation[key] == orientation["reference"]).sum()),
            "max_unusual_diff": float(np.abs(unusual[key] - unusual["reference"]).max()),
            "mean_pixel_diff": float(np.mean([d.mean() for d in pixel])),
            "max_pixel_diff": int(max(d.max() for d in pixel)),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--films", type=int, default=40)
    parser.add_argument("--root", type=Path, default=Path("/tmp/archive-decoders"))
    parser.add_argument(
        "--model", type=Path, default=Path("cxr_orient/shipped/compact-invariant-64-v4.keras")
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--machine", default=f"cpu-{platform.machine()}")
    args = parser.parse_args()
    results = {
        "machine": args.machine,
        "jpeg_lossless": jpeg_lossless(args.root / "jll"),
        "j2k_lossless_band": j2k_band(args.root / "j2k", args.films, args.model),
    }
    text = json.dumps(results, indent=1)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.machine}-archive-decoders.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
