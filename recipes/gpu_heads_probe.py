"""A probe on the lent GPU: do networks of their own, at the worker's full 256 px, tell PA
from AP and chest from not-chest better than v4's linear heads on v3's 64 px features?

    python -m recipes.gpu_heads_probe pack                 # here: decode, v3/v4 answers, pack
    python -m recipes.gpu_heads_probe train --out DIR       # there: Keras 3 on JAX, no pydicom

Nothing of it ships: it measures, on the shipped patient split (``split.json``) and the
development films (``$CXR_DEV_DATA``), what a dedicated network would buy before one is
built into a release. ``pack`` writes ``.devdata/probe/`` (the films as the worker sees
them, re-encoded JPEG q95 to fit a device call: chest films at 256 px, other body parts
at 128 px; v3's and v4's answers on every stored film). ``train`` needs only numpy,
Pillow and Keras (this module imports nothing of the product at the top):

- **PA or AP**: the training patients' frontals (PA against AP and AP Supine, the
  source's ``view``), upright as stored (in service the orientation head's answer
  would turn a film upright first), augmented (crops, small turns, contrast, gamma,
  inversion), class-balanced, several seeds at 256 and 128 px; test-time average over
  the film and its inverse. The abstention threshold is the lowest confidence whose
  validation answers reach balanced accuracy 0.97; measured once on test patients.
- **chest film or not**: chest films of training patients against the other body parts,
  each body part in turn held out (fitted without it, threshold = the 99.5th percentile
  of validation chest films, measured on it), in every pose and inversion; combined
  with v3's unusual-image score as v4 combines its head (flagged by either), and
  "answered confidently" = not flagged and v3's view confidence >= 0.9 (the card's rule).

Figures go to ``DIR/report.json`` and the log; nothing is written to the repository.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("recipes.gpu_heads_probe")

PACK = Path(".devdata") / "probe"
CHEST_PX = 256
OTHER_PX = 128
TARGET_BA = 0.97
CHEST_QUANTILE = 0.995
BODY_PARTS = ("spine", "dental", "wrist", "limbs")


# --------------------------------------------------------------------------- pack (here)
def _jpeg(image: np.ndarray, size: int) -> bytes:
    from PIL import Image

    im = Image.fromarray(image)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _answers(model: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    """A :class:`~cxr_orient.modelstore.Classifier`'s answers on ``images``, by field."""
    from recipes.common.films import rgb

    rows = []
    for i in range(0, len(images), 64):
        rows.extend(model.predict(rgb(images[i : i + 64])))
    return {
        "p_lateral": np.asarray([a.p_lateral for a in rows]),
        "confidence": np.asarray([a.confidence for a in rows]),
        "unusual": np.asarray([a.unusual_score or 0.0 for a in rows]),
        "needs_review": np.asarray([a.needs_review for a in rows]),
        "p_ap": np.asarray([np.nan if a.p_ap is None else a.p_ap for a in rows]),
    }


def pack(args: argparse.Namespace) -> None:
    from cxr_orient.modelstore import Classifier
    from recipes.common.devdata import SHIPPED
    from recipes.compact_invariant_64_v4 import decode

    d = decode(args)
    models = {
        m: Classifier.from_checkpoint(SHIPPED / f"compact-invariant-64-{m}.keras")
        for m in ("v3", "v4")
    }
    out = Path(args.pack)
    out.mkdir(parents=True, exist_ok=True)
    groups = {
        "chest": (d["chest_images"], CHEST_PX),
        "non": (d["non_images"], OTHER_PX),
        "other": (d["other_images"], OTHER_PX),
    }
    arrays: dict[str, np.ndarray] = {}
    for name, (images, size) in groups.items():
        blobs = [_jpeg(im, size) for im in images]
        arrays[f"{name}_jpeg"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{name}_offsets"] = np.cumsum([0, *map(len, blobs)])
        for model, classifier in models.items():
            started = time.perf_counter()
            answers = _answers(classifier, images)
            logger.info(
                "%s on %d %s films: %.1f s", model, len(images), name, time.perf_counter() - started
            )
            arrays.update({f"{name}_{model}_{k}": v for k, v in answers.items()})
    for key in (
        "chest_labels",
        "chest_files",
        "chest_patients",
        "chest_views",
        "chest_hosts",
        "chest_split",
        "non_files",
        "non_parts",
        "non_groups",
        "other_names",
    ):
        arrays[key] = np.asarray(d[key]).astype(str) if d[key].dtype.kind in "OUS" else d[key]
    arrays["v3_unusual_threshold"] = np.asarray(models["v3"].card.unusual_threshold)
    savez: Any = np.savez  # numpy's stub reads **arrays as its allow_pickle flag
    savez(out / "probe.npz", **arrays)
    logger.info("wrote %s (%.1f MB)", out / "probe.npz", (out / "probe.npz").stat().st_size / 1e6)


# -------------------------------------------------------------------------- train (there)
def _decode_all(z: Any, name: str) -> np.ndarray:
    from PIL import Image

    buf, off = z[f"{name}_jpeg"].tobytes(), z[f"{name}_offsets"]
    return np.stack(
        [
            np.asarray(Image.open(io.BytesIO(buf[off[i] : off[i + 1]])).convert("L"))
            for i in range(len(off) - 1)
        ]
    )


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1] == size:
        return images
    f = images.shape[1] // size
    return images.reshape(len(images), size, f, size, f).mean(axis=(2, 4)).astype(np.uint8)


def _augment_one(image: np.ndarray, rng: np.random.Generator, poses: bool) -> np.ndarray:
    from PIL import Image

    size = image.shape[0]
    im = Image.fromarray(image)
    side = int(size * rng.uniform(0.75, 1.0))
    x0, y0 = rng.integers(0, size - side + 1, 2)
    im = im.crop((x0, y0, x0 + side, y0 + side)).rotate(rng.uniform(-10, 10))
    a = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255
    a = np.clip(a ** rng.uniform(0.7, 1.4) * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1), 0, 1)
    if rng.random() < 0.5:
        a = 1 - a
    if poses:
        a = np.rot90(a[:, ::-1] if rng.random() < 0.5 else a, int(rng.integers(4)))
    return (a * 255 + 0.5).astype(np.uint8)


def _augment(images: np.ndarray, rng: np.random.Generator, *, poses: bool) -> np.ndarray:
    """Crop-zoom (0.75-1 of the side), small turn, contrast/gamma, inversion half the
    time; with ``poses`` also one of the 8 turns and mirrorings. Threads: Pillow and
    numpy let go of the GIL for the pixel work."""
    from concurrent.futures import ThreadPoolExecutor

    seeds = rng.integers(0, 2**63, len(images))
    with ThreadPoolExecutor(16) as pool:
        out = pool.map(
            lambda i: _augment_one(images[i], np.random.default_rng(seeds[i]), poses),
            range(len(images)),
        )
        return np.stack(list(out))


def _network(size: int, width: int, seed: int) -> Any:
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((size, size, 1), dtype="uint8")
    x = layers.Rescaling(1 / 255)(x)
    x = layers.Conv2D(width // 2, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for k in (1, 2, 4, 8):
        for _ in range(2):
            x = layers.Conv2D(width * k, 3, padding="same", use_bias=False)(x)
            x = layers.ReLU()(layers.BatchNormalization()(x))
        x = layers.MaxPooling2D()(x)
    x = layers.Concatenate()([layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)])
    x = layers.Dropout(0.4)(x)
    out = layers.Dense(1, activation="sigmoid", kernel_regularizer=keras.regularizers.l2(1e-4))(x)
    model = keras.Model(inputs, out)
    return model


def _fit(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    *,
    size: int,
    width: int,
    seed: int,
    epochs: int,
    poses: bool,
) -> Any:
    import keras

    model = _network(size, width, seed)
    steps = epochs * int(np.ceil(len(x) / 32))
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps, warmup_target=None)
    model.compile(keras.optimizers.AdamW(schedule, weight_decay=1e-4), "binary_crossentropy")
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        xa = _augment(x, rng, poses=poses)[..., None]
        model.fit(xa, y, sample_weight=w, batch_size=32, epochs=1, verbose=0, shuffle=True)
    return model


def _predict(model: Any, x: np.ndarray, *, poses: bool) -> np.ndarray:
    """Mean over the film and its inverse (and, with ``poses``, the 8 turns/mirrorings)."""
    copies = [x, 255 - x]
    if poses:
        copies = [
            np.rot90(c[:, :, ::-1] if m else c, k, axes=(1, 2))
            for c in copies
            for m in (False, True)
            for k in range(4)
        ]
    p = [
        model.predict(np.ascontiguousarray(c)[..., None], batch_size=256, verbose=0)[:, 0]
        for c in copies
    ]
    return np.mean(p, axis=0)


def _ba(p_ap: np.ndarray, is_ap: np.ndarray) -> float:
    pred = p_ap >= 0.5
    recalls = [
        np.mean(pred[is_ap] == 1) if is_ap.any() else np.nan,
        np.mean(pred[~is_ap] == 0) if (~is_ap).any() else np.nan,
    ]
    return float(np.nanmean(recalls))


def _threshold(p_ap: np.ndarray, is_ap: np.ndarray) -> float:
    conf = np.maximum(p_ap, 1 - p_ap)
    for t in np.arange(0.5, 1.0, 0.01):
        keep = conf >= t
        if keep.sum() >= 10 and _ba(p_ap[keep], is_ap[keep]) >= TARGET_BA:
            return float(t)
    return 1.0


def _projection_figures(p_ap: np.ndarray, is_ap: np.ndarray, t: float) -> dict[str, Any]:
    keep = np.maximum(p_ap, 1 - p_ap) >= t
    return {
        "n": len(p_ap),
        "ba_all": _ba(p_ap, is_ap),
        "stated": int(keep.sum()),
        "coverage": float(keep.mean()),
        "ba_stated": _ba(p_ap[keep], is_ap[keep]) if keep.any() else None,
        "threshold": t,
    }


def projection(z: Any, chest: np.ndarray, report: dict[str, Any], args: argparse.Namespace) -> None:
    views, split = z["chest_views"], z["chest_split"]
    frontal = np.isin(views, ["PA", "AP", "AP Supine"])
    is_ap = views != "PA"
    part = {s: frontal & (split == s) for s in ("train", "val", "test")}
    y = is_ap[part["train"]].astype(np.float32)
    w = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean())).astype(np.float32)
    v4 = z["chest_v4_p_ap"]
    report["projection"] = {
        "counts": {s: [int((~is_ap[m]).sum()), int(is_ap[m].sum())] for s, m in part.items()},
        "v4_val": _projection_figures(v4[part["val"]], is_ap[part["val"]], 0.81),
        "v4_test": _projection_figures(v4[part["test"]], is_ap[part["test"]], 0.81),
    }
    for size in args.sizes:
        x = _resize(chest, size)
        preds: dict[str, list[np.ndarray]] = {"val": [], "test": []}
        runs = []
        for seed in range(args.seeds):
            started = time.perf_counter()
            model = _fit(
                x[part["train"]],
                y,
                w,
                size=size,
                width=args.width,
                seed=seed,
                epochs=args.epochs,
                poses=args.poses,
            )
            for s in preds:
                preds[s].append(_predict(model, x[part[s]], poses=args.poses))
            t = _threshold(preds["val"][-1], is_ap[part["val"]])
            run: dict[str, Any] = {
                s: _projection_figures(preds[s][-1], is_ap[part[s]], t) for s in preds
            }
            run["seconds"] = time.perf_counter() - started
            runs.append(run)
            logger.info("PA/AP %d px seed %d: %s", size, seed, json.dumps(run))
        mean = {s: np.mean(v, axis=0) for s, v in preds.items()}
        t = _threshold(mean["val"], is_ap[part["val"]])
        ensemble = {s: _projection_figures(mean[s], is_ap[part[s]], t) for s in mean}
        logger.info("PA/AP %d px ensemble of %d: %s", size, args.seeds, json.dumps(ensemble))
        report["projection"][f"{size}px"] = {
            "runs": runs,
            "ensemble": ensemble,
            "params": int(model.count_params()),
        }
        Path(args.out, "report.json").write_text(json.dumps(report, indent=1, default=str))


def _parts(names: np.ndarray) -> np.ndarray:
    return np.where(np.isin(names, ["spine", "dental", "wrist"]), names, "limbs")


def scope(z: Any, chest: np.ndarray, report: dict[str, Any], args: argparse.Namespace) -> None:
    non, other = _decode_all(z, "non"), _decode_all(z, "other")
    chest = _resize(chest, OTHER_PX)
    split, parts = z["chest_split"], _parts(z["non_parts"])
    train_chest = chest[split == "train"]
    v3_review = {k: z[f"{k}_v3_needs_review"] for k in ("chest", "non", "other")}
    v3_t = float(z["v3_unusual_threshold"])
    out: dict[str, Any] = {}
    for held in args.held:
        started = time.perf_counter()
        keep = parts != held
        kept_parts = parts[keep]
        x = np.concatenate([train_chest, non[keep]])
        y = np.concatenate([np.zeros(len(train_chest)), np.ones(keep.sum())]).astype(np.float32)
        # Chest films weigh as much as all other parts together, each part an equal share.
        share = {p: 0.5 / len(set(kept_parts)) / np.sum(kept_parts == p) for p in set(kept_parts)}
        w = np.concatenate(
            [np.full(len(train_chest), 0.5 / len(train_chest)), [share[p] for p in kept_parts]]
        ).astype(np.float32) * len(x)
        model = _fit(
            x,
            y,
            w,
            size=OTHER_PX,
            width=args.scope_width,
            seed=0,
            epochs=args.scope_epochs,
            poses=True,
        )
        p_chest = _predict(model, chest, poses=True)
        t = float(np.quantile(p_chest[split == "val"], CHEST_QUANTILE))
        test = split == "test"
        flagged_chest = (p_chest > t) | (z["chest_v3_unusual"] > v3_t)
        copies = _augment(np.repeat(chest[test], 4, axis=0), np.random.default_rng(1), poses=True)
        by_view = {
            v: int((p_chest[test & (z["chest_views"] == v)] > t).sum())
            for v in ("PA", "AP", "AP Supine", "L", "")
        }
        entry: dict[str, Any] = {
            "threshold": t,
            "chest_test_copies_flagged_by_net": [
                int((_predict(model, copies, poses=True) > t).sum()),
                len(copies),
            ],
            "chest_test_flagged_by_net_by_view": by_view,
            "chest_test_flagged": [int(flagged_chest[test].sum()), int(test.sum())],
            "chest_test_flagged_by_net": [int((p_chest[test] > t).sum()), int(test.sum())],
            "seconds": None,
        }
        targets = {
            "held": (non[~keep], v3_review["non"][~keep], z["non_v3_unusual"][~keep]),
            "other": (other, v3_review["other"], z["other_v3_unusual"]),
        }
        if held == "none":
            targets.pop("held")
        for name, (images, review, v3_score) in targets.items():
            p = _predict(model, images, poses=True)
            flagged = (p > t) | (v3_score > v3_t)
            confident = ~flagged & ~review
            entry[name] = {
                "n": len(images),
                "detected_by_net": int((p > t).sum()),
                "flagged": int(flagged.sum()),
                "answered_confidently": int(confident.sum()),
            }
        entry["seconds"] = time.perf_counter() - started
        logger.info("chest-or-not, held out %s: %s", held, json.dumps(entry))
        out[held] = entry
    # v4 as shipped (trained on every part: not held out) and v3 alone, on the same films.
    out["v3_alone"] = {
        k: {
            "flagged": int((z[f"{k}_v3_unusual"] > v3_t).sum()),
            "answered_confidently": int((~z[f"{k}_v3_needs_review"]).sum()),
        }
        for k in ("non", "other")
    }
    report["scope"] = out


def train(args: argparse.Namespace) -> None:
    import keras

    devices: list[str] = [keras.backend.backend()]
    if keras.backend.backend() == "jax":
        import jax

        # Identical graphs (every seed, every held-out part) compile once.
        jax.config.update("jax_compilation_cache_dir", "/tmp/jax-cache")
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        devices += [str(d) for d in jax.devices()]
    z = np.load(Path(args.pack) / "probe.npz")
    chest = _decode_all(z, "chest")
    report: dict[str, Any] = {"devices": devices, "args": vars(args)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        started = time.perf_counter()
        {"projection": projection, "scope": scope}[task](z, chest, report, args)
        report[f"{task}_seconds"] = time.perf_counter() - started
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.gpu_heads_probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="decode the development films, v3/v4 answers, pack (here)")
    p.add_argument("--pack", default=str(PACK))
    t = sub.add_parser("train", help="train and measure (on the lent GPU: Keras on JAX)")
    t.add_argument("--pack", default=str(PACK))
    t.add_argument("--out", required=True)
    t.add_argument("--tasks", nargs="+", default=["projection", "scope"])
    t.add_argument("--sizes", nargs="+", type=int, default=[256, 128])
    t.add_argument("--seeds", type=int, default=5)
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--width", type=int, default=32)
    t.add_argument(
        "--poses",
        action="store_true",
        help="PA/AP: train in every pose and average over the 8 (else upright)",
    )
    t.add_argument("--scope-width", type=int, default=16)
    t.add_argument("--scope-epochs", type=int, default=30)
    t.add_argument(
        "--held",
        nargs="+",
        default=[*BODY_PARTS, "none"],
        help="chest-or-not: the body parts held out in turn ('none': fit on all)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    {"pack": pack, "train": train}[args.command](args)


if __name__ == "__main__":
    main()
