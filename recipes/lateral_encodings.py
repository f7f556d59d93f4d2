"""Lateral recall and margin of the shipped default under every turn and encoding (issue 21).

    python -m recipes.lateral_encodings               # decode (cached), predict, write, print
    python -m recipes.lateral_encodings --workers 2   # two decode processes

The films of the shipped split's test patients (``split.json``; laterals and frontals),
each stored in the 8 dihedral poses (4 turns, each also mirrored), each pose written as a
DICOM DX file in every encoding of :data:`recipes.common.encodings.ENCODINGS` (lossless
ones as a check, lossy ones at archive settings), decoded through the product's
:func:`cxr_orient.imaging.load_dicom_image` and answered by the shipped default through
:meth:`cxr_orient.modelstore.Classifier.predict`. The model gives exact pixel turns the
same answer by construction; a turned film encoded lossily is not the lossy film turned
(the blocks and wavelets fall elsewhere), which is what this measures.

Per encoding: lateral recall with its exact 95 % interval, the margin (lowest p_lateral
of a true lateral) and how far it moved from the uncompressed file's, the laterals under
the review threshold, the highest p_lateral of a true frontal (the other side), and every
label flip against the uncompressed file of the same pose; beside them, as checks, the
spread of a film's p over its 8 uncompressed poses, which encodings decode to the
reference's pixels, and the JPEG files' own p (the path the model card's figures took).
Decoded films are cached in
``.devdata/lateral-encodings/`` (git-ignored); the figures go to
``docs/figures/<model>/lateral-encodings.json`` and a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cxr_orient.acceptance.stats import clopper_pearson
from cxr_orient.calibration import predicted_class
from cxr_orient.layers import STORED_AS
from recipes.common.devdata import COVID_CXR, DEVDATA, FIGURES, SHIPPED, SPLIT
from recipes.common.encodings import ENCODINGS, Encoding, encode_film
from recipes.common.films import store_as

logger = logging.getLogger("recipes.lateral_encodings")

NAME = "compact-invariant-64-v4"
CACHE = DEVDATA / "lateral-encodings"
POSES = len(STORED_AS)


def _cache_file(path: Path, encoding: Encoding) -> Path:
    """Where one film's 8 poses in one encoding are kept: named by the film and by
    everything that makes the encoding (so a changed setting is decoded again)."""
    film = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    key = hashlib.sha256(f"{encoding.name}|{encoding.setting}|{POSES}".encode()).hexdigest()
    return CACHE / f"{film}-{key[:12]}.npz"


def held_out_films(data_dir: Path = COVID_CXR, split: Path = SPLIT) -> list[tuple[str, int]]:
    """``(file, label)`` of the split's test patients' films, labelled as for training."""
    from training.data import list_labelled_files

    test = set(json.loads(split.read_text(encoding="utf-8"))["files"]["test"])
    return [(f, label) for f, label in list_labelled_files(data_dir) if f in test]


def decode_film(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One film in every pose and encoding: ``(POSES, E, 256, 256)`` uint8 as the product
    decodes them, and ``(POSES, E)`` file sizes in bytes. Cached per film and encoding."""
    from PIL import Image, ImageOps

    from cxr_orient.imaging import load_dicom_image

    images = np.zeros((POSES, len(ENCODINGS), 256, 256), np.uint8)
    sizes = np.zeros((POSES, len(ENCODINGS)), np.int64)
    upright: np.ndarray | None = None
    for e, encoding in enumerate(ENCODINGS):
        cached = _cache_file(path, encoding)
        if cached.is_file():
            with np.load(cached) as z:
                images[:, e], sizes[:, e] = z["images"], z["sizes"]
            continue
        if upright is None:
            with Image.open(path) as opened:
                upright = np.asarray(ImageOps.exif_transpose(opened).convert("L"))
        for pose in range(POSES):
            data = encode_film(store_as(upright, pose), encoding)
            named = path.with_suffix(f".{encoding.name}.dcm")
            images[pose, e] = load_dicom_image(named, data=data)
            sizes[pose, e] = len(data)
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial.npz")
        np.savez_compressed(partial, images=images[:, e], sizes=sizes[:, e])
        partial.replace(cached)
    return images, sizes


def summarise(
    p_lateral: np.ndarray,
    needs_review: np.ndarray,
    labels: np.ndarray,
    *,
    files: list[str],
    encodings: list[str],
    review_threshold: float,
) -> dict[str, dict[str, Any]]:
    """Per encoding, from ``p_lateral`` and ``needs_review`` shaped ``(films, poses,
    encodings)`` and true ``labels`` (1 lateral): the figures of the module docstring.
    The first encoding is the reference (uncompressed); a flip is a film and pose whose
    predicted label differs from the reference's for the same pose."""
    p_lateral = np.asarray(p_lateral, dtype=np.float64)
    lateral = np.asarray(labels) == 1
    predicted = predicted_class(p_lateral)
    reference = p_lateral[..., 0]
    reference_margin = float(reference[lateral].min()) if lateral.any() else float("nan")
    out: dict[str, dict[str, Any]] = {}
    for e, name in enumerate(encodings):
        p = p_lateral[..., e]
        lat, front = p[lateral], p[~lateral]
        hits = int((predicted[..., e][lateral] == 1).sum())
        recall = clopper_pearson(hits, int(lat.size))
        film, pose = np.unravel_index(
            int(np.argmin(np.where(lateral[:, None], p, np.inf))), p.shape
        )
        moved = (p - reference)[lateral]
        flips = np.argwhere(predicted[..., e] != predicted[..., 0])
        out[name] = {
            "lateral_recall": recall.as_dict(),
            "lateral_margin": float(lat.min()) if lat.size else None,
            "lateral_margin_at": {"file": files[int(film)], "pose": int(pose)},
            "lateral_margin_moved": float(lat.min()) - reference_margin if lat.size else None,
            "lateral_largest_drop": float(-moved.min()) if moved.size else None,
            "lateral_largest_rise": float(moved.max()) if moved.size else None,
            "laterals_under_review_threshold": int((lat < review_threshold).sum()),
            "laterals_needs_review": int(np.asarray(needs_review)[..., e][lateral].sum()),
            "frontal_max_p_lateral": float(front.max()) if front.size else None,
            "frontals_needs_review": int(np.asarray(needs_review)[..., e][~lateral].sum()),
            "max_abs_change_from_reference": float(np.abs(p - reference).max()),
            "flips": [
                {
                    "file": files[int(i)],
                    "pose": int(j),
                    "true": "lateral" if lateral[int(i)] else "frontal",
                    "p_lateral_reference": float(reference[i, j]),
                    "p_lateral": float(p[i, j]),
                }
                for i, j in flips
            ],
        }
    return out


def markdown(summary: dict[str, dict[str, Any]], encodings: dict[str, dict[str, Any]]) -> str:
    """The summary as a Markdown table, one row per encoding; ``encodings`` gives each
    one's ``setting``, median ``ratio`` and whether it is a ``stress`` setting."""
    rows = [
        "| encoding (setting) | ratio | lateral recall [95 %] | margin (moved) "
        "| largest drop of a lateral's p | laterals < review | frontal max p_lateral "
        "| max abs change of p | flips |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in summary.items():
        r, info = s["lateral_recall"], encodings[name]
        label = f"{name} ({info['setting']})" if info["setting"] else name
        rows.append(
            f"| {label}{' (stress)' if info['stress'] else ''} | {info['ratio']:.1f}:1 "
            f"| {r['x']}/{r['n']} [{r['low']:.3f}, {r['high']:.3f}] "
            f"| {s['lateral_margin']:.4f} ({s['lateral_margin_moved']:+.4f}) "
            f"| {max(0.0, s['lateral_largest_drop']):.4f} "
            f"| {s['laterals_under_review_threshold']} "
            f"| {s['frontal_max_p_lateral']:.4f} | {s['max_abs_change_from_reference']:.4f} "
            f"| {len(s['flips'])} |"
        )
    return "\n".join(rows)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from cxr_orient.imaging import load_image_file
    from cxr_orient.modelstore import Classifier

    films = held_out_films(args.data, args.split)
    paths = [args.data / f for f, _ in films]
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        decoded = list(pool.map(decode_film, paths))
    decode_s = time.perf_counter() - started
    images = np.stack([d[0] for d in decoded])  # (films, poses, encodings, 256, 256)
    sizes = np.stack([d[1] for d in decoded])
    logger.info("decoded %d films x %d poses x %d encodings in %.0f s", *images.shape[:3], decode_s)

    classifier = Classifier.from_checkpoint(args.model)
    flat = images.reshape(-1, *images.shape[-2:])
    answers = [a for i in range(0, len(flat), 256) for a in classifier.predict(flat[i : i + 256])]
    shape = images.shape[:3]
    p_lateral = np.array([a.p_lateral for a in answers]).reshape(shape)
    needs_review = np.array([a.needs_review for a in answers]).reshape(shape)
    labels = np.array([label for _, label in films])
    # The films as the card's figures read them (the JPEG files, through Pillow).
    as_files = classifier.predict(np.stack([load_image_file(p, size=256) for p in paths]))
    p_files = np.array([a.p_lateral for a in as_files])
    names = [e.name for e in ENCODINGS]
    summary = summarise(
        p_lateral,
        needs_review,
        labels,
        files=[f for f, _ in films],
        encodings=names,
        review_threshold=classifier.card.review_threshold,
    )
    raw = np.array([np.prod(_film_shape(p)) for p in paths], dtype=np.float64)  # a byte a pixel
    reference = images[:, :, 0].astype(np.int16)
    encodings = {
        e.name: {
            "syntax": str(e.syntax),
            "setting": e.setting,
            "lossy": e.lossy,
            "stress": e.stress,
            "ratio": float(np.median(raw[:, None] / sizes[:, :, i])),
            "max_pixel_difference_256": int(np.abs(images[:, :, i] - reference).max()),
            "films_with_other_pixels": int(
                (images[:, :, i] != images[:, :, 0]).any(axis=(1, 2, 3)).sum()
            ),
        }
        for i, e in enumerate(ENCODINGS)
    }
    return {
        "model": classifier.card.name,
        "sha256": classifier.card.sha256,
        "review_threshold": classifier.card.review_threshold,
        "films": {"lateral": int(labels.sum()), "frontal": int((labels == 0).sum())},
        "poses": POSES,
        "decode_seconds": round(decode_s, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "encodings": encodings,
        # Exact turns through the product's decoder: the spread of one film's p_lateral
        # over its 8 uncompressed poses (0 up to float rounding, by construction).
        "reference_pose_spread": float(np.ptp(p_lateral[:, :, 0], axis=1).max()),
        "jpeg_files": {
            "lateral_margin": float(p_files[labels == 1].min()),
            "frontal_max_p_lateral": float(p_files[labels == 0].max()),
            "max_abs_difference_from_dicom": float(np.abs(p_files - p_lateral[:, 0, 0]).max()),
        },
        "per_encoding": summary,
    }


def _film_shape(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as opened:
        return opened.size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.lateral_encodings",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=COVID_CXR, help="the covid-cxr folder")
    parser.add_argument("--split", type=Path, default=SPLIT, help="the patient split")
    parser.add_argument(
        "--model", type=Path, default=SHIPPED / f"{NAME}.keras", help="the checkpoint to measure"
    )
    parser.add_argument("--workers", type=int, default=1, help="decode processes (default 1)")
    parser.add_argument(
        "--report",
        type=Path,
        default=FIGURES / NAME / "lateral-encodings.json",
        help="where the figures go",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = measure(args)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s (%.0f s)", args.report, result["seconds"])
    sys.stdout.write(markdown(result["per_encoding"], result["encodings"]) + "\n")


if __name__ == "__main__":
    main()
