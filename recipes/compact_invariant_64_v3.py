"""compact-invariant-64-v3: v2 whose unusual-image score also asks the orientation head.

    python -m recipes.compact_invariant_64_v3 --out cxr_orient/shipped --measure

What made the shipped checkpoint (docs/model-card.md tells it under the recipe's former
name, ``python -m training.unusual_design ... --ship DIR --measure``). The design was
chosen first, on the development set, by :mod:`recipes.unusual_score` (whose feature
cache this recipe reads, building it when it is missing): the larger of v2's feature
distance and the entropy of the orientation softmax, each over its scale on the
validation films (``--part-quantile``), thresholded at the ``--quantile`` of the
validation films' scores. Every other weight is v2's (architecture
``compact_invariant_64_heads2``), so the view and orientation answers are v2's; the
recipe checks it on the test patients in all 8 poses. ``--measure`` adds the
measurement set's detection figures (read once, for the design already chosen).

Defaults: ``--npz .devdata/covid-cxr-256.npz``, ``--base
cxr_orient/shipped/compact-invariant-64-v2.keras``, ``--split
cxr_orient/shipped/split.json``, ``--cache .devdata/unusual-features.npz``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr_orient.architectures import build_model
from cxr_orient.layers import STORED_AS
from cxr_orient.modelstore import Classifier, save_checkpoint
from recipes.common.films import augmented_copies, store_as, subset_files
from recipes.common.proportions import wilson_interval
from recipes.unusual_score import add_cache_arguments, cached
from training.data import load_npz
from training.evaluate import bootstrap_mean_ci

logger = logging.getLogger(__name__)

NAME = "compact-invariant-64-v3"


def _rate(flags: list[bool]) -> dict[str, Any]:
    hits = int(sum(flags))
    return {
        "rate": hits / len(flags) if flags else None,
        "hits": hits,
        "n": len(flags),
        "wilson95": wilson_interval(hits, len(flags)),
    }


def ship(args: argparse.Namespace) -> None:
    """Build ``--name`` from ``--base`` (architecture ``compact_invariant_64_heads2``: the
    same weights, the score of :class:`cxr_orient.layers.UnusualScore`), fit its scales and
    threshold on the cached validation films, measure it, save it under ``--out``."""
    from recipes.common.nonchest import non_chest_images
    from recipes.common.nonchest_dev import chest_development_images, development_images

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
    card = dataclasses.replace(
        base.card,
        name=args.name,
        architecture="compact_invariant_64_heads2",
        unusual_threshold=threshold,
        sha256="",
    )
    classifier = Classifier(model, card)

    def answers(c: Classifier, images: np.ndarray) -> list[Any]:
        return [
            a
            for i in range(0, len(images), 64)
            for a in c.predict(np.repeat(images[i : i + 64][..., None], 3, axis=-1))
        ]

    data = load_npz(args.npz)
    split = json.loads(args.split.read_text(encoding="utf-8"))["files"]
    test = subset_files(data, split["test"])
    poses = np.concatenate(
        [np.stack([store_as(img, c) for img in test.images]) for c in range(len(STORED_AS))]
    )
    pose_patients = list(test.patients) * len(STORED_AS)
    new_poses, old_poses = answers(classifier, poses), answers(base, poses)
    same = all(
        (a.label, a.rotation, a.mirrored, a.p_lateral)
        == (b.label, b.rotation, b.mirrored, b.p_lateral)
        for a, b in zip(new_poses, old_poses, strict=True)
    )
    augmented = augmented_copies(test.images, 6, args.seed + 2)[len(test) :]
    measurement = non_chest_images()
    development = development_images(exclude=measurement)
    chest_dev = chest_development_images()
    report: dict[str, Any] = {
        "design": {
            "score": "max(distance / s_d, orientation entropy / s_h)",
            "distance": "the base model's Mahalanobis distance (weights copied)",
            "scales": {"s_d": scales[0], "s_h": scales[1]},
            "part_quantile": args.part_quantile,
            "quantile": args.quantile,
            "threshold": threshold,
            "base": args.base.name,
            "base_sha256": base.card.sha256,
            "layers_copied": copied,
        }
    }
    for name, c in (("new", classifier), ("base", base)):
        stored = [a.unusual for a in (new_poses if name == "new" else old_poses)[: len(test)]]
        turned = [a.unusual for a in (new_poses if name == "new" else old_poses)]
        part: dict[str, Any] = {
            "false_alarms_stored": {
                **_rate(stored),
                "bootstrap95": bootstrap_mean_ci(
                    [float(v) for v in stored], test.patients, resamples=1000, seed=args.seed
                ),
            },
            "false_alarms_8_poses": {
                **_rate(turned),
                "bootstrap95": bootstrap_mean_ci(
                    [float(v) for v in turned], pose_patients, resamples=1000, seed=args.seed
                ),
            },
            "false_alarms_augmented": _rate([a.unusual for a in answers(c, augmented)]),
            "rg1_flagged": _rate(
                [a.unusual for a in answers(c, np.stack(list(chest_dev.values())))]
            ),
        }
        names = sorted(development)
        hits = [a.unusual for a in answers(c, np.stack([development[n] for n in names]))]
        part["development_detection"] = {
            **_rate(hits),
            "missed": [n for n, h in zip(names, hits, strict=True) if not h],
        }
        if args.measure:
            names = sorted(measurement)
            hits = [a.unusual for a in answers(c, np.stack([measurement[n] for n in names]))]
            kinds: dict[str, list[bool]] = {}
            for n, h in zip(names, hits, strict=True):
                kinds.setdefault(n.rsplit(":", 1)[0], []).append(h)
            part["measurement_detection"] = {
                **_rate(hits),
                "missed": [n for n, h in zip(names, hits, strict=True) if not h],
                "by_kind": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(kinds.items())},
            }
        report[name] = part
    report["view_and_orientation_identical_to_base_on_test_8_poses"] = same
    # v2's unusual-image figures are of its own score: kept, under a name that says so.
    metrics = dict(base.card.metrics)
    if "unusual_held_out" in metrics:
        metrics["unusual_held_out_of_v2_score"] = metrics.pop("unusual_held_out")
    card.metrics = {**metrics, "unusual_v3": report}
    card.training = {
        **base.card.training,
        "unusual_v3": {
            "base": args.base.name,
            "scales": scales.tolist(),
            "part_quantile": args.part_quantile,
            "quantile": args.quantile,
            "validation_scores": {
                "max": float(val_scores.max()),
                "median": float(np.median(val_scores)),
            },
        },
    }
    path = save_checkpoint(model, card, args.out)
    (args.out / f"{args.name}-unusual-report.json").write_text(
        json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8"
    )
    logger.info("saved %s; report %s", path, json.dumps(report, default=float))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.compact_invariant_64_v3",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_cache_arguments(parser)
    parser.add_argument(
        "--out", type=Path, required=True, help="where the checkpoint, its card and the report go"
    )
    parser.add_argument("--name", default=NAME)
    parser.add_argument(
        "--part-quantile",
        type=float,
        default=0.9975,
        help="each part's scale: this quantile over validation films",
    )
    parser.add_argument(
        "--quantile",
        type=float,
        default=0.995,
        help="the threshold: this quantile of validation films' scores",
    )
    parser.add_argument(
        "--measure", action="store_true", help="also the measurement set (read once, at the end)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cached(args)
    ship(args)


if __name__ == "__main__":
    main()
