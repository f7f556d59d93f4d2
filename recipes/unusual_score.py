"""The unusual-image score's design, chosen on a development set of non-chest images
(the study behind compact-invariant-64-v3, :mod:`recipes.compact_invariant_64_v3`).

    python -m recipes.unusual_score             # cache the features, compare the designs
    python -m recipes.unusual_score --measure   # and the measurement set (read once)

Defaults: ``--npz .devdata/covid-cxr-256.npz`` (``python -m
recipes.compact_invariant_64_v1 --make-npz``), ``--base
cxr_orient/shipped/compact-invariant-64-v2.keras``, ``--split
cxr_orient/shipped/split.json``, ``--cache .devdata/unusual-features.npz``. It ran as
``python -m training.unusual_design`` (the recipe's former name; docs/model-card.md).

Step 1 (``--cache``) runs the view trunk once over every image set and keeps, per
set, the features each design may use: for each trunk depth (stem, stages 1-4) the
spatial mean and standard deviation of every channel, averaged over the 8 dihedral
copies, and the pixel statistics of :class:`cxr_orient.layers.PixelStatistics` on the
256 px input. The sets: the training films (each with 5 augmented copies, the fit),
the validation films (likewise, the threshold), the held-out test films (as stored and
5 augmented copies, false alarms), the development non-chest images
(:mod:`recipes.common.nonchest_dev`, the choice) and RG1 (a real CR chest film from
elsewhere). The measurement set (:mod:`recipes.common.nonchest`) is featurised too but
only read by ``--measure``.

Step 2 (default) logs the designs compared (:func:`compare`): development-set detection,
validation and test false alarms, RG1, at each design's own 99.5th percentile of
validation scores. ``--measure`` adds the measurement set; it was read once, for the
design already chosen. :mod:`recipes.compact_invariant_64_v3` builds that design from
the same cache and measures it beside its base.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr_orient.layers import OrbitMean, PixelStatistics
from cxr_orient.modelstore import Classifier
from recipes.common.devdata import DEVDATA, NPZ, SHIPPED, SPLIT
from recipes.common.films import augmented_copies, features, predict_batches, subset_files
from training.data import load_npz

logger = logging.getLogger(__name__)

#: Trunk depths a design may measure, by the name of the layer whose output is tapped.
DEPTHS = {
    "stem": "stem_bn",
    "block1": "block1_pool",
    "block2": "block2_pool",
    "block3": "block3_pool",
    "block4": "block4_pool",
}


def feature_model(model: keras.Model) -> keras.Model:
    """Per depth, ``(B, C)`` orbit means of the channels' spatial mean and spatial
    standard deviation; and the pixel statistics of the input."""
    outputs: dict[str, Any] = {}
    for short, layer in DEPTHS.items():
        x = model.get_layer(layer).output
        mean = keras.ops.mean(x, axis=(1, 2))
        std = keras.ops.sqrt(
            keras.ops.maximum(
                keras.ops.mean(keras.ops.square(x), axis=(1, 2)) - keras.ops.square(mean), 0.0
            )
            + 1e-12
        )
        outputs[f"{short}_mean"] = OrbitMean(name=f"dev_{short}_mean")(mean)
        outputs[f"{short}_std"] = OrbitMean(name=f"dev_{short}_std")(std)
    outputs["pixels"] = PixelStatistics(name="dev_pixels")(model.input)
    outputs["orientation"] = model.get_layer("orientation").output
    outputs["view"] = model.get_layer("view").output
    return keras.Model(model.input, outputs)


#: Where the features are cached by default.
CACHE = DEVDATA / "unusual-features.npz"


def build_cache(*, npz: Path, base: Path, split: Path, cache: Path, seed: int) -> None:
    """Every image set's features through ``base`` (:func:`feature_model`) and its
    shipped score, written to ``cache``."""
    from recipes.common.nonchest import non_chest_images
    from recipes.common.nonchest_dev import chest_development_images, development_images

    data = load_npz(npz)
    parts = json.loads(split.read_text(encoding="utf-8"))["files"]
    train, val, test = (subset_files(data, parts[k]) for k in ("train", "val", "test"))
    extractor = feature_model(Classifier.from_checkpoint(base).model)
    measurement = non_chest_images()
    development = development_images(exclude=measurement)
    chest_dev = chest_development_images()
    sets: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {
        "train": (
            augmented_copies(train.images, 6, seed),
            np.tile(train.labels, 6),
            list(train.patients) * 6,
        ),
        "val": (
            augmented_copies(val.images, 6, seed + 1),
            np.tile(val.labels, 6),
            list(val.patients) * 6,
        ),
        "test_stored": (test.images, test.labels, list(test.patients)),
        "test_augmented": (
            augmented_copies(test.images, 6, seed + 2)[len(test) :],
            np.tile(test.labels, 5),
            list(test.patients) * 5,
        ),
        "development": (
            np.stack(list(development.values())),
            np.full(len(development), -1),
            list(development),
        ),
        "chest_development": (
            np.stack(list(chest_dev.values())),
            np.zeros(len(chest_dev)),
            list(chest_dev),
        ),
        "measurement": (
            np.stack([measurement[k] for k in sorted(measurement)]),
            np.full(len(measurement), -1),
            sorted(measurement),
        ),
    }
    arrays: dict[str, np.ndarray] = {}
    for name, (images, labels, ids) in sets.items():
        logger.info("features of %s: %d images", name, len(images))
        for k, v in features(extractor, images).items():
            arrays[f"{name}/{k}"] = v
        arrays[f"{name}/labels"] = np.asarray(labels)
        arrays[f"{name}/ids"] = np.asarray(ids)
        if name in ("development", "chest_development", "measurement"):
            arrays[f"{name}/images"] = images
    # The shipped score, for the baseline row.
    model = Classifier.from_checkpoint(base).model
    scorer = keras.Model(model.input, model.get_layer("unusual").output)
    for name, (images, _, _) in sets.items():
        arrays[f"{name}/shipped"] = predict_batches(scorer, images)[:, 0]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **arrays)  # type: ignore[arg-type]
    logger.info("wrote %s", cache)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.unusual_score",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_cache_arguments(parser)
    parser.add_argument(
        "--measure", action="store_true", help="also the measurement set (read once, at the end)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cached(args)
    for row in compare(np.load(args.cache), measure=args.measure):
        logger.info("%s", json.dumps(row))


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say which films, which base model and which cache."""
    parser.add_argument(
        "--npz",
        type=Path,
        default=NPZ,
        help="covid-cxr decoded (default: .devdata/covid-cxr-256.npz)",
    )
    parser.add_argument(
        "--base",
        type=Path,
        default=SHIPPED / "compact-invariant-64-v2.keras",
        help="the model whose trunk is measured (default: the shipped v2)",
    )
    parser.add_argument(
        "--split",
        type=Path,
        default=SPLIT,
        help="its split.json (default: cxr_orient/shipped/split.json)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=CACHE,
        help="the features (default: .devdata/unusual-features.npz)",
    )
    parser.add_argument("--seed", type=int, default=20200601)
    parser.add_argument("--rebuild", action="store_true", help="compute the cache again")


def cached(args: argparse.Namespace) -> None:
    """Build the cache unless it is there (or ``--rebuild``)."""
    if args.rebuild or not args.cache.is_file():
        build_cache(
            npz=args.npz, base=args.base, split=args.split, cache=args.cache, seed=args.seed
        )


def _mahalanobis(train: np.ndarray, labels: np.ndarray, shrinkage: float) -> Any:
    """A scorer fitted as :class:`cxr_orient.layers.MahalanobisScore` fits (numpy)."""
    classes = sorted(set(labels.tolist()))
    means = np.stack([train[labels == c].mean(0) for c in classes])
    centred = train - means[np.searchsorted(classes, labels)]
    cov = centred.T @ centred / max(1, len(train) - len(classes))
    dims = train.shape[1]
    cov = (1 - shrinkage) * cov + shrinkage * np.eye(dims) * np.trace(cov) / dims
    precision = np.linalg.inv(cov)

    def score(x: np.ndarray) -> np.ndarray:
        diff = x[:, None, :] - means[None]
        d2 = np.einsum("bcd,de,bce->bc", diff, precision, diff)
        return np.sqrt(np.maximum(d2.min(1), 0.0) / dims)

    return score


_SETS = (
    "train",
    "val",
    "test_stored",
    "test_augmented",
    "development",
    "chest_development",
    "measurement",
)


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p + 1e-12)).sum(1)


def compare(cache: Any, *, measure: bool) -> list[dict[str, Any]]:
    """Each design's scores over the cached sets, thresholded at the 99.5th percentile
    of validation: rows of false-alarm and detection rates."""

    def feats(s: str, keys: list[str]) -> np.ndarray:
        return np.concatenate([cache[f"{s}/{k}"] for k in keys], axis=1)

    def distance(keys: list[str], shrinkage: float = 0.01) -> dict[str, np.ndarray]:
        fit = _mahalanobis(feats("train", keys), cache["train/labels"], shrinkage)
        return {s: fit(feats(s, keys)) for s in _SETS}

    def scaled(scores: dict[str, np.ndarray], q: float) -> dict[str, np.ndarray]:
        scale = float(np.quantile(scores["val"], q))
        return {s: v / scale for s, v in scores.items()}

    def maximum(parts: list[dict[str, np.ndarray]], q: float = 0.9975) -> dict[str, np.ndarray]:
        scaled_parts = [scaled(p, q) for p in parts]
        return {s: np.max([p[s] for p in scaled_parts], axis=0) for s in _SETS}

    def knn(keys: list[str], k: int = 1) -> dict[str, np.ndarray]:
        def unit(x: np.ndarray) -> np.ndarray:
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        bank = unit(feats("train", keys))
        return {
            s: np.sqrt(
                np.sort(np.maximum(2 - 2 * unit(feats(s, keys)) @ bank.T, 0), axis=1)[:, k - 1]
            )
            for s in _SETS
        }

    means = [f"{d}_mean" for d in DEPTHS]
    stds = [f"{d}_std" for d in DEPTHS]
    late = ["block2_mean", "block3_mean", "block4_mean"]
    entropy = {s: _entropy(cache[f"{s}/orientation"]) for s in _SETS}
    designs: dict[str, dict[str, np.ndarray]] = {
        "v2: distance, stages 2-4 means": {s: cache[f"{s}/shipped"] for s in _SETS},
        "distance per depth (stem..4), maximum": maximum([distance([m]) for m in means]),
        "distance, all depths' means and stds + pixel statistics": distance(
            [*means, *stds, "pixels"]
        ),
        "distance, stages 2-4 means + pixel statistics": distance([*late, "pixels"], 0.03),
        "nearest training film, stages 2-4 means": knn(late),
        "orientation entropy alone": entropy,
        "v3: max(v2 distance, orientation entropy)": maximum(
            [{s: cache[f"{s}/shipped"] for s in _SETS}, entropy]
        ),
    }
    rows = []
    for name, scores in designs.items():
        threshold = float(np.quantile(scores["val"], 0.995))
        row: dict[str, Any] = {"design": name}
        for s in _SETS[1:]:
            if s == "measurement" and not measure:
                continue
            row[s] = f"{int((scores[s] > threshold).sum())}/{len(scores[s])}"
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
