"""Choose the unusual-image score's design on the development set, then measure it once.

    python -m training.unusual_design --npz .devdata/covid-cxr-256.npz \\
        --base cxr_orient/shipped/compact-invariant-64-v2.keras \\
        --split cxr_orient/shipped/split.json --cache .devdata/unusual-features.npz

Step 1 (``--cache``) runs the view trunk once over every image set and keeps, per
set, the features each design may use: for each trunk depth (stem, stages 1-4) the
spatial mean and standard deviation of every channel, averaged over the 8 dihedral
copies, and the pixel statistics of :class:`cxr_orient.layers.PixelStatistics` on the
256 px input. The sets: the training films (each with 5 augmented copies, the fit),
the validation films (likewise, the threshold), the held-out test films (as stored and
5 augmented copies, false alarms), the development non-chest images
(:mod:`training.unusual_dev`, the choice) and RG1 (a real CR chest film from elsewhere).
The measurement set (:mod:`training.unusual`) is featurised too but only read by
``--measure``.

Step 2 (default) logs the designs compared (:func:`compare`): development-set detection,
validation and test false alarms, RG1, at each design's own 99.5th percentile of
validation scores. ``--measure`` adds the measurement set; it was read once, for the
design already chosen. Step 3 (``--ship DIR``) builds that design as
``compact-invariant-64-v3`` (:func:`ship`) and measures it beside its base.
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
from training.data import load_npz
from training.heads import augmented_copies, predict_batches, subset_files

logger = logging.getLogger(__name__)

#: Trunk depths a design may measure, by the name of the layer whose output is tapped.
DEPTHS = {"stem": "stem_bn", "block1": "block1_pool", "block2": "block2_pool",
          "block3": "block3_pool", "block4": "block4_pool"}


def feature_model(model: keras.Model) -> keras.Model:
    """Per depth, ``(B, C)`` orbit means of the channels' spatial mean and spatial
    standard deviation; and the pixel statistics of the input."""
    outputs: dict[str, Any] = {}
    for short, layer in DEPTHS.items():
        x = model.get_layer(layer).output
        mean = keras.ops.mean(x, axis=(1, 2))
        std = keras.ops.sqrt(keras.ops.maximum(
            keras.ops.mean(keras.ops.square(x), axis=(1, 2)) - keras.ops.square(mean), 0.0)
            + 1e-12)
        outputs[f"{short}_mean"] = OrbitMean(name=f"dev_{short}_mean")(mean)
        outputs[f"{short}_std"] = OrbitMean(name=f"dev_{short}_std")(std)
    outputs["pixels"] = PixelStatistics(name="dev_pixels")(model.input)
    outputs["orientation"] = model.get_layer("orientation").output
    outputs["view"] = model.get_layer("view").output
    return keras.Model(model.input, outputs)


def _features(extractor: keras.Model, images: np.ndarray, batch: int = 64
              ) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), batch):
        x = np.repeat(images[i:i + batch][..., None], 3, axis=-1).astype(np.float32)
        out = extractor.predict_on_batch(x)
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(keras.ops.convert_to_numpy(v),
                                                      dtype=np.float64))
    return {k: np.concatenate(v) for k, v in parts.items()}


def build_cache(args: argparse.Namespace) -> None:
    from training.unusual import non_chest_images
    from training.unusual_dev import chest_development_images, development_images

    data = load_npz(args.npz)
    split = json.loads(args.split.read_text(encoding="utf-8"))["files"]
    train, val, test = (subset_files(data, split[k]) for k in ("train", "val", "test"))
    extractor = feature_model(Classifier.from_checkpoint(args.base).model)
    measurement = non_chest_images()
    development = development_images(exclude=measurement)
    chest_dev = chest_development_images()
    sets: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {
        "train": (augmented_copies(train.images, 6, args.seed), np.tile(train.labels, 6),
                  list(train.patients) * 6),
        "val": (augmented_copies(val.images, 6, args.seed + 1), np.tile(val.labels, 6),
                list(val.patients) * 6),
        "test_stored": (test.images, test.labels, list(test.patients)),
        "test_augmented": (augmented_copies(test.images, 6, args.seed + 2)[len(test):],
                           np.tile(test.labels, 5), list(test.patients) * 5),
        "development": (np.stack(list(development.values())), np.full(len(development), -1),
                        list(development)),
        "chest_development": (np.stack(list(chest_dev.values())), np.zeros(len(chest_dev)),
                              list(chest_dev)),
        "measurement": (np.stack([measurement[k] for k in sorted(measurement)]),
                        np.full(len(measurement), -1), sorted(measurement)),
    }
    arrays: dict[str, np.ndarray] = {}
    for name, (images, labels, ids) in sets.items():
        logger.info("features of %s: %d images", name, len(images))
        for k, v in _features(extractor, images).items():
            arrays[f"{name}/{k}"] = v
        arrays[f"{name}/labels"] = np.asarray(labels)
        arrays[f"{name}/ids"] = np.asarray(ids)
        if name in ("development", "chest_development", "measurement"):
            arrays[f"{name}/images"] = images
    # The shipped score, for the baseline row.
    model = Classifier.from_checkpoint(args.base).model
    scorer = keras.Model(model.input, model.get_layer("unusual").output)
    for name, (images, _, _) in sets.items():
        arrays[f"{name}/shipped"] = predict_batches(scorer, images)[:, 0]
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.cache, **arrays)  # type: ignore[arg-type]
    logger.info("wrote %s", args.cache)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.unusual_design",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, required=True)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=20200601)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--ship", type=Path, default=None, metavar="DIR",
                        help="build, measure and save the chosen design here")
    parser.add_argument("--name", default="compact-invariant-64-v3")
    parser.add_argument("--part-quantile", type=float, default=0.9975,
                        help="each part's scale: this quantile over validation films")
    parser.add_argument("--quantile", type=float, default=0.995,
                        help="the threshold: this quantile of validation films' scores")
    parser.add_argument("--measure", action="store_true",
                        help="also the measurement set (read once, at the end)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.rebuild or not args.cache.is_file():
        build_cache(args)
    if args.ship is not None:
        ship(args)
    else:
        for row in compare(np.load(args.cache), measure=args.measure):
            logger.info("%s", json.dumps(row))



def _mahalanobis(train: np.ndarray, labels: np.ndarray, shrinkage: float
                 ) -> Any:
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


_SETS = ("train", "val", "test_stored", "test_augmented", "development",
         "chest_development", "measurement")


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

    def maximum(parts: list[dict[str, np.ndarray]], q: float = 0.9975
                ) -> dict[str, np.ndarray]:
        scaled_parts = [scaled(p, q) for p in parts]
        return {s: np.max([p[s] for p in scaled_parts], axis=0) for s in _SETS}

    def knn(keys: list[str], k: int = 1) -> dict[str, np.ndarray]:
        def unit(x: np.ndarray) -> np.ndarray:
            return x / np.linalg.norm(x, axis=1, keepdims=True)
        bank = unit(feats("train", keys))
        return {s: np.sqrt(np.sort(np.maximum(2 - 2 * unit(feats(s, keys)) @ bank.T, 0),
                                   axis=1)[:, k - 1]) for s in _SETS}

    means = [f"{d}_mean" for d in DEPTHS]
    stds = [f"{d}_std" for d in DEPTHS]
    late = ["block2_mean", "block3_mean", "block4_mean"]
    entropy = {s: _entropy(cache[f"{s}/orientation"]) for s in _SETS}
    designs: dict[str, dict[str, np.ndarray]] = {
        "v2: distance, stages 2-4 means": {s: cache[f"{s}/shipped"] for s in _SETS},
        "distance per depth (stem..4), maximum": maximum([distance([m]) for m in means]),
        "distance, all depths' means and stds + pixel statistics":
            distance([*means, *stds, "pixels"]),
        "distance, stages 2-4 means + pixel statistics": distance([*late, "pixels"], 0.03),
        "nearest training film, stages 2-4 means": knn(late),
        "orientation entropy alone": entropy,
        "v3: max(v2 distance, orientation entropy)": maximum(
            [{s: cache[f"{s}/shipped"] for s in _SETS}, entropy]),
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


def wilson_interval(hits: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score 95 % interval of a proportion ``hits / n``."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def _rate(flags: list[bool]) -> dict[str, Any]:
    hits = int(sum(flags))
    return {"rate": hits / len(flags) if flags else None, "hits": hits, "n": len(flags),
            "wilson95": wilson_interval(hits, len(flags))}


def ship(args: argparse.Namespace) -> None:
    """Build ``--name`` from ``--base`` (architecture ``compact_invariant_64_heads2``: the
    same weights, the score of :class:`cxr_orient.layers.UnusualScore`), fit its scales and
    threshold on the cached validation films, measure it, save it under ``--ship``."""
    import dataclasses

    from cxr_orient.architectures import build_model
    from cxr_orient.layers import STORED_AS
    from cxr_orient.modelstore import save_checkpoint
    from training.evaluate import bootstrap_mean_ci
    from training.heads import store_as
    from training.unusual import non_chest_images
    from training.unusual_dev import chest_development_images, development_images

    cache = np.load(args.cache)
    base = Classifier.from_checkpoint(args.base)
    model = build_model("compact_invariant_64_heads2", input_size=base.card.input_size)
    copied = 0
    for layer in model.layers:  # every layer of the base by name; its score is renamed
        source = "unusual" if layer.name == "unusual_distance" else layer.name
        if layer.weights and layer.name != "unusual":
            layer.set_weights(base.model.get_layer(source).get_weights())
            copied += 1
    score = model.get_layer("unusual")
    score.fit(cache["val/shipped"], cache["val/orientation"], quantile=args.part_quantile)
    scales = np.asarray(keras.ops.convert_to_numpy(score.scales), dtype=np.float64)
    entropy = -(cache["val/orientation"] * np.log(cache["val/orientation"] + 1e-12)).sum(1)
    val_scores = np.maximum(cache["val/shipped"] / scales[0], entropy / scales[1])
    threshold = float(np.quantile(val_scores, args.quantile))
    card = dataclasses.replace(base.card, name=args.name,
                               architecture="compact_invariant_64_heads2",
                               unusual_threshold=threshold, sha256="")
    classifier = Classifier(model, card)

    def answers(c: Classifier, images: np.ndarray) -> list[Any]:
        return [a for i in range(0, len(images), 64)
                for a in c.predict(np.repeat(images[i:i + 64][..., None], 3, axis=-1))]

    data = load_npz(args.npz)
    split = json.loads(args.split.read_text(encoding="utf-8"))["files"]
    test = subset_files(data, split["test"])
    poses = np.concatenate([np.stack([store_as(img, c) for img in test.images])
                            for c in range(len(STORED_AS))])
    pose_patients = list(test.patients) * len(STORED_AS)
    new_poses, old_poses = answers(classifier, poses), answers(base, poses)
    same = all((a.label, a.rotation, a.mirrored, a.p_lateral) == (b.label, b.rotation,
               b.mirrored, b.p_lateral) for a, b in zip(new_poses, old_poses, strict=True))
    augmented = augmented_copies(test.images, 6, args.seed + 2)[len(test):]
    measurement = non_chest_images()
    development = development_images(exclude=measurement)
    chest_dev = chest_development_images()
    report: dict[str, Any] = {"design": {
        "score": "max(distance / s_d, orientation entropy / s_h)",
        "distance": "the base model's Mahalanobis distance (weights copied)",
        "scales": {"s_d": scales[0], "s_h": scales[1]},
        "part_quantile": args.part_quantile, "quantile": args.quantile,
        "threshold": threshold, "base": args.base.name, "base_sha256": base.card.sha256,
        "layers_copied": copied}}
    for name, c in (("new", classifier), ("base", base)):
        stored = [a.unusual for a in (new_poses if name == "new" else old_poses)[:len(test)]]
        turned = [a.unusual for a in (new_poses if name == "new" else old_poses)]
        part: dict[str, Any] = {
            "false_alarms_stored": {**_rate(stored), "bootstrap95": bootstrap_mean_ci(
                [float(v) for v in stored], test.patients, resamples=1000, seed=args.seed)},
            "false_alarms_8_poses": {**_rate(turned), "bootstrap95": bootstrap_mean_ci(
                [float(v) for v in turned], pose_patients, resamples=1000, seed=args.seed)},
            "false_alarms_augmented": _rate([a.unusual for a in answers(c, augmented)]),
            "rg1_flagged": _rate([a.unusual for a in answers(
                c, np.stack(list(chest_dev.values())))]),
        }
        names = sorted(development)
        hits = [a.unusual for a in answers(c, np.stack([development[n] for n in names]))]
        part["development_detection"] = {**_rate(hits), "missed": [
            n for n, h in zip(names, hits, strict=True) if not h]}
        if args.measure:
            names = sorted(measurement)
            hits = [a.unusual for a in answers(c, np.stack([measurement[n] for n in names]))]
            kinds: dict[str, list[bool]] = {}
            for n, h in zip(names, hits, strict=True):
                kinds.setdefault(n.rsplit(":", 1)[0], []).append(h)
            part["measurement_detection"] = {
                **_rate(hits), "missed": [n for n, h in zip(names, hits, strict=True) if not h],
                "by_kind": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(kinds.items())}}
        report[name] = part
    report["view_and_orientation_identical_to_base_on_test_8_poses"] = same
    # v2's unusual-image figures are of its own score: kept, under a name that says so.
    metrics = dict(base.card.metrics)
    if "unusual_held_out" in metrics:
        metrics["unusual_held_out_of_v2_score"] = metrics.pop("unusual_held_out")
    card.metrics = {**metrics, "unusual_v3": report}
    card.training = {**base.card.training, "unusual_v3": {
        "base": args.base.name, "scales": scales.tolist(), "part_quantile": args.part_quantile,
        "quantile": args.quantile, "validation_scores": {
            "max": float(val_scores.max()), "median": float(np.median(val_scores))}}}
    path = save_checkpoint(model, card, args.ship)
    (args.ship / f"{args.name}-unusual-report.json").write_text(
        json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    logger.info("saved %s; report %s", path, json.dumps(report, default=float))


if __name__ == "__main__":
    main()
