"""compact-invariant-64-v2: the view model v1 with the heads that say more: which way
up, and unusual images.

    python -m recipes.compact_invariant_64_v2 --out OUT/seed-7 --seed 7 \\
        --epochs 80 --workers 5 --skip-non-chest       # seeds 20200601, 7 and 11
    python -m recipes.compact_invariant_64_v2 --out OUT/seed-20200601 \\
        --evaluate-only OUT/seed-20200601/compact-invariant-64-v2.keras --refit-unusual

What made the checkpoint in cxr_orient/shipped/ (docs/model-card.md tells it under the
recipe's former name, ``python -m training.heads``): three seeds trained on a GPU
(``scripts/gpu_heads.sh``), seed 20200601 chosen by the lowest validation loss (all
three perfect on validation), then its unusual-image score fitted again and the
non-chest figures measured where pydicom's test files are. Defaults: ``--npz
.devdata/covid-cxr-256.npz`` (``python -m recipes.compact_invariant_64_v1
--make-npz``), ``--base cxr_orient/shipped/compact-invariant-64-v1.keras`` and its
``--split cxr_orient/shipped/split.json``.

The view model's layers are copied and frozen, so its answers stay exactly what they
were (same weights, same graph up to the view output). On top of it:

- the **orientation head** (:func:`cxr_orient.architectures.build_compact_invariant_64_heads`)
  learns which of a film's 8 dihedral copies is upright. Its labels are free: every
  training film is stored turned and mirrored at random (the films as collected are
  taken to be upright and not mirrored), and the target is the copy that undoes it. For
  laterals either upright copy counts (mirrored or not: archives display laterals facing
  either way), so the head learns their rotation only. Other augmentations (crops,
  shrinking onto a dark canvas, intensity, noise, inversion, small rotations) keep the
  label. Early stopping on the validation patients in all 8 orientations.
- the **unusual-image score** is fitted on the training films (augmented) and its
  threshold set on the validation films (augmented the same way): the
  ``--unusual-quantile`` quantile of their scores. Non-chest images are never used to
  fit or choose anything.

The held-out test patients, in all 8 orientations, give the figures in the card (with
bootstrap intervals over patients); the non-chest images of
:mod:`recipes.common.nonchest` give the detection rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr_orient.architectures import build_model
from cxr_orient.layers import ORBIT_SIZE, STORED_AS
from cxr_orient.modelstore import Classifier, ModelCard, read_card, save_checkpoint
from recipes.common.devdata import NPZ, SHIPPED, SPLIT
from recipes.common.films import augmented_copies, predict_batches, rgb, store_as, subset_files
from training.augment import AugmentConfig, augment_image
from training.data import LabelledImages, load_npz
from training.evaluate import bootstrap_mean_ci
from training.report import write_json

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURE",
    "HEAD_AUGMENT",
    "OrientationBatches",
    "copy_view_weights",
    "fit_unusual",
    "main",
    "orientation_metrics",
    "orientation_targets",
    "train_heads",
    "unusual_metrics",
]

ARCHITECTURE = "compact_invariant_64_heads"
#: Label-keeping augmentation: everything the view model trains with but the turns.
HEAD_AUGMENT = AugmentConfig(p_rot90=0.0, p_hflip=0.0, p_vflip=0.0)
#: Copy indices by how a film is stored: STORED_AS is copy -> (k, mirrored).
_COPY_FOR = {pose: copy for copy, pose in enumerate(STORED_AS)}


def orientation_targets(labels: np.ndarray, copies: np.ndarray) -> np.ndarray:
    """``(N, 8)`` 0/1 masks of the copies that count as upright: the one copy for a
    frontal, the copy and its mirror for a lateral."""
    masks = np.zeros((len(labels), ORBIT_SIZE), dtype=np.float32)
    for i, (label, copy) in enumerate(zip(labels, copies, strict=True)):
        masks[i, copy] = 1.0
        if int(label) == 1:
            k, mirrored = STORED_AS[int(copy)]
            masks[i, _COPY_FOR[(k, not mirrored)]] = 1.0
    return masks


def orientation_loss(y_true: Any, y_pred: Any) -> Any:
    """-log of the probability given to the copies that count as upright."""
    return -keras.ops.log(keras.ops.sum(y_true * y_pred, axis=-1) + 1e-7)


class OrientationBatches(keras.utils.PyDataset):
    """Each epoch, every training film ``repeats`` times, augmented, stored at random."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        repeats: int = 4,
        members: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.members = members
        self.images, self.labels = images, np.asarray(labels).astype(int)
        self.batch_size, self.seed, self.repeats = batch_size, seed, repeats
        self.epoch = 0
        self._order = self._draw()

    def _draw(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.permutation(np.tile(np.arange(len(self.images)), self.repeats))

    def __len__(self) -> int:
        return math.ceil(len(self._order) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        idx = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        copies = rng.integers(0, ORBIT_SIZE, size=len(idx))
        batch = np.stack(
            [
                store_as(augment_image(self.images[i], rng, HEAD_AUGMENT), c)
                for i, c in zip(idx, copies, strict=True)
            ]
        )
        x = np.repeat(batch[..., np.newaxis], 3, axis=-1).astype(np.float32)
        targets = orientation_targets(self.labels[idx], copies)
        return x, (targets if self.members == 1 else tuple([targets] * self.members))

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._draw()


def _validation_poses(
    val: LabelledImages, *, seed: int, augmented: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """The validation films in all 8 poses, as stored and ``augmented`` times augmented
    (label-keeping): as stored they are too easy to tell candidates apart."""
    rng = np.random.default_rng([seed, 1])
    images = [val.images] + [
        np.stack([augment_image(img, rng, HEAD_AUGMENT) for img in val.images])
        for _ in range(augmented)
    ]
    return _all_poses(np.concatenate(images), np.tile(val.labels, augmented + 1))


def _all_poses(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every image stored in all 8 ways (pose-major), and the targets."""
    x = np.concatenate([np.stack([store_as(img, c) for img in images]) for c in range(ORBIT_SIZE)])
    copies = np.repeat(np.arange(ORBIT_SIZE), len(images))
    return x, orientation_targets(np.tile(labels, ORBIT_SIZE), copies)


def copy_view_weights(model: keras.Model, base: keras.Model) -> int:
    """Copy every layer ``base`` has by name into ``model`` and freeze it; return how many."""
    names = {layer.name for layer in base.layers if layer.weights}
    copied = 0
    for layer in model.layers:
        if layer.name in names:
            layer.set_weights(base.get_layer(layer.name).get_weights())
            layer.trainable = False
            copied += 1
    return copied


def train_heads(
    model: keras.Model,
    train: LabelledImages,
    val: LabelledImages,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 32,
    patience: int = 8,
    workers: int = 1,
    verbose: int | str = 2,
) -> dict[str, Any]:
    """Fit the orientation head (everything not frozen) on ``train``, stopping on ``val``
    in all 8 poses; returns the history."""
    keras.utils.set_random_seed(seed)
    members = [
        layer.output
        for layer in model.layers
        if layer.name.startswith("orient") and layer.name.endswith("_softmax")
    ]
    # Each member learns on its own loss (an ensemble, not one wider scorer).
    orient = keras.Model(model.input, members)
    orient.compile(optimizer=keras.optimizers.Adam(1e-3), loss=[orientation_loss] * len(members))
    val_x, val_y = _validation_poses(val, seed=seed)
    batches = OrientationBatches(
        train.images,
        train.labels,
        batch_size=batch_size,
        seed=seed,
        workers=workers,
        use_multiprocessing=False,
        members=len(members),
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, min_delta=1e-4, restore_best_weights=True
    )
    fit = orient.fit(
        batches,
        validation_data=(rgb(val_x).astype(np.float32), tuple([val_y] * len(members))),
        epochs=epochs,
        callbacks=[stop],
        verbose=verbose,
    )
    return {k: [float(v) for v in vs] for k, vs in fit.history.items()}


def _unusual_features(model: keras.Model) -> keras.Model:
    return keras.Model(model.input, model.get_layer("unusual_features").output)


def fit_unusual(
    model: keras.Model,
    train: LabelledImages,
    val: LabelledImages,
    *,
    copies: int,
    quantile: float,
    seed: int,
    shrinkage: float = 0.01,
) -> tuple[float, np.ndarray]:
    """Fit the score on augmented training films; return the threshold (the
    ``quantile`` of augmented validation films' scores) and those scores."""
    features = _unusual_features(model)
    train_x = augmented_copies(train.images, copies, seed)
    train_y = np.tile(train.labels, copies)
    model.get_layer("unusual").fit(predict_batches(features, train_x), train_y, shrinkage=shrinkage)
    scorer = keras.Model(model.input, model.get_layer("unusual").output)
    val_scores = predict_batches(scorer, augmented_copies(val.images, copies, seed + 1))[:, 0]
    return float(np.quantile(val_scores, quantile)), val_scores


def orientation_metrics(
    classifier: Classifier, data: LabelledImages, *, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Every film stored in all 8 ways through the classifier's own rule: rotation
    accuracy (all films), mirroring accuracy (frontals; a frontal answered lateral has
    no mirrored answer and counts as wrong), with bootstrap 95 % CIs over patients."""
    rotation_ok: list[float] = []
    mirror_ok: list[float] = []
    groups_rot: list[str] = []
    groups_mir: list[str] = []
    for copy in range(ORBIT_SIZE):
        k, mirrored = STORED_AS[copy]
        stored = np.stack([store_as(img, copy) for img in data.images])
        answers = [
            a
            for i in range(0, len(stored), 64)
            for a in classifier.predict(rgb(stored[i : i + 64]))
        ]
        for answer, label, patient in zip(answers, data.labels, data.patients, strict=True):
            rotation_ok.append(float(answer.rotation == 90 * k))
            groups_rot.append(patient)
            if int(label) == 0:
                mirror_ok.append(float(answer.mirrored is not None and answer.mirrored == mirrored))
                groups_mir.append(patient)
    return {
        "rotation_accuracy": float(np.mean(rotation_ok)),
        "rotation_accuracy_ci95": bootstrap_mean_ci(
            rotation_ok, groups_rot, resamples=resamples, seed=seed
        ),
        "frontal_mirroring_accuracy": float(np.mean(mirror_ok)),
        "frontal_mirroring_accuracy_ci95": bootstrap_mean_ci(
            mirror_ok, groups_mir, resamples=resamples, seed=seed
        ),
        "n_images": len(data),
        "n_answers": len(rotation_ok),
        "n_frontal_answers": len(mirror_ok),
        "n_patients": len(set(data.patients)),
    }


def unusual_metrics(
    classifier: Classifier,
    chest: LabelledImages,
    non_chest: dict[str, np.ndarray],
    *,
    copies: int,
    seed: int,
    resamples: int = 1000,
) -> dict[str, Any]:
    """False alarms on chest films (as stored and augmented) and detections of
    non-chest images, at the card's threshold, through the classifier's own rule."""

    def flagged(images: np.ndarray) -> list[bool]:
        return [
            a.unusual
            for i in range(0, len(images), 64)
            for a in classifier.predict(rgb(images[i : i + 64]))
        ]

    stored = flagged(chest.images)
    augmented = flagged(augmented_copies(chest.images, copies, seed)[len(chest) :])
    names = sorted(non_chest)
    detected = flagged(np.stack([non_chest[n] for n in names])) if names else []
    kinds: dict[str, list[bool]] = {}
    for name, hit in zip(names, detected, strict=True):
        kinds.setdefault(name.rsplit(":", 1)[0], []).append(hit)
    return {
        "threshold": classifier.card.unusual_threshold,
        "false_alarm_rate_stored": float(np.mean(stored)),
        "false_alarm_rate_stored_ci95": bootstrap_mean_ci(
            [float(v) for v in stored], chest.patients, resamples=resamples, seed=seed
        ),
        "false_alarm_rate_augmented": float(np.mean(augmented)),
        "n_chest": len(stored),
        "n_chest_augmented": len(augmented),
        "detection_rate": float(np.mean(detected)) if names else None,
        "n_non_chest": len(names),
        "detection_by_kind": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(kinds.items())},
        "missed": [n for n, hit in zip(names, detected, strict=True) if not hit],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.compact_invariant_64_v2",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--npz",
        type=Path,
        default=NPZ,
        help="covid-cxr decoded (default: .devdata/covid-cxr-256.npz)",
    )
    parser.add_argument(
        "--base",
        type=Path,
        default=SHIPPED / "compact-invariant-64-v1.keras",
        help="the view model (.keras; default: the shipped v1)",
    )
    parser.add_argument(
        "--split",
        type=Path,
        default=SPLIT,
        help="its split.json (default: cxr_orient/shipped/split.json)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="where the checkpoint, its card and the report go"
    )
    parser.add_argument("--name", default="compact-invariant-64-v2")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=20200601)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--unusual-copies",
        type=int,
        default=6,
        help="each film and this many minus one augmented versions",
    )
    parser.add_argument("--unusual-quantile", type=float, default=0.995)
    parser.add_argument(
        "--unusual-shrinkage",
        type=float,
        default=0.01,
        help="covariance shrinkage towards its mean variance",
    )
    parser.add_argument(
        "--refit-unusual",
        action="store_true",
        help="with --evaluate-only: fit the unusual-image score and its "
        "threshold again (the orientation head is kept)",
    )
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument(
        "--skip-non-chest",
        action="store_true",
        help="leave out the non-chest detection figures (they need pydicom's "
        "test files; measure them later with --evaluate-only)",
    )
    parser.add_argument(
        "--evaluate-only",
        type=Path,
        default=None,
        metavar="KERAS",
        help="recompute the figures of a checkpoint made by this script",
    )
    parser.add_argument("--verbose", default="2")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    started = time.monotonic()

    data = load_npz(args.npz)
    split = json.loads(args.split.read_text(encoding="utf-8"))["files"]
    train, val, test = (subset_files(data, split[k]) for k in ("train", "val", "test"))
    base_card = read_card(args.base)
    base = Classifier.from_checkpoint(args.base)
    if args.evaluate_only is not None:
        classifier = Classifier.from_checkpoint(args.evaluate_only)
        model, card = classifier.model, classifier.card
        history = card.training.get("heads", {}).get("history", {})
        val_scores = np.asarray(
            [
                card.training.get("heads", {})
                .get("unusual_validation_scores", {})
                .get("max", float("nan"))
            ]
        )
        if args.refit_unusual:
            card.unusual_threshold, val_scores = fit_unusual(
                model,
                train,
                val,
                copies=args.unusual_copies,
                quantile=args.unusual_quantile,
                seed=args.seed,
                shrinkage=args.unusual_shrinkage,
            )
            card.training.setdefault("heads", {}).update(
                {
                    "unusual_copies": args.unusual_copies,
                    "unusual_quantile": args.unusual_quantile,
                    "unusual_shrinkage": args.unusual_shrinkage,
                    "unusual_validation_scores": {
                        "max": float(val_scores.max()),
                        "median": float(np.median(val_scores)),
                    },
                }
            )
    else:
        model = build_model(ARCHITECTURE, input_size=base_card.input_size)
        copied = copy_view_weights(model, base.model)
        logger.info("copied and froze %d layers of %s", copied, args.base.name)
        verbose: int | str = int(args.verbose) if args.verbose.isdigit() else args.verbose
        history = train_heads(
            model,
            train,
            val,
            epochs=args.epochs,
            seed=args.seed,
            workers=args.workers,
            verbose=verbose,
        )
        for layer in model.layers:
            layer.trainable = True
        threshold, val_scores = fit_unusual(
            model,
            train,
            val,
            copies=args.unusual_copies,
            quantile=args.unusual_quantile,
            seed=args.seed,
            shrinkage=args.unusual_shrinkage,
        )
        card = ModelCard(
            name=args.name,
            architecture=ARCHITECTURE,
            input_size=base_card.input_size,
            labels=base_card.labels,
            temperature=base_card.temperature,
            review_threshold=base_card.review_threshold,
            unusual_threshold=threshold,
        )
        classifier = Classifier(model, card)

    validation = orientation_metrics(classifier, val, resamples=args.resamples, seed=args.seed)
    held_out = orientation_metrics(classifier, test, resamples=args.resamples, seed=args.seed)
    non_chest: dict[str, np.ndarray] = {}
    if not args.skip_non_chest:
        from recipes.common.nonchest import non_chest_images

        non_chest = non_chest_images()
    unusual = unusual_metrics(
        classifier,
        test,
        non_chest,
        copies=args.unusual_copies,
        seed=args.seed + 2,
        resamples=args.resamples,
    )
    view_same = float(
        np.abs(
            classifier.predict_raw_in_batches(rgb(test.images))
            - base.predict_raw_in_batches(rgb(test.images))
        ).max()
    )
    card.metrics = {
        **base_card.metrics,
        "orientation_validation": validation,
        "orientation_held_out": held_out,
        "unusual_held_out": unusual,
        "view_max_abs_difference_from_base": view_same,
    }
    if args.evaluate_only is None:
        card.training = {
            **base_card.training,
            "heads": {
                "base": args.base.name,
                "base_sha256": base_card.sha256,
                "epochs_run": len(history.get("loss", [])),
                "seed": args.seed,
                "history": history,
                "unusual_copies": args.unusual_copies,
                "unusual_quantile": args.unusual_quantile,
                "unusual_shrinkage": args.unusual_shrinkage,
                "unusual_validation_scores": {
                    "max": float(val_scores.max()),
                    "median": float(np.median(val_scores)),
                },
                "seconds": round(time.monotonic() - started, 1),
                "keras": keras.__version__,
                "backend": keras.backend.backend(),
            },
        }
    path = save_checkpoint(model, card, args.out)
    write_json(
        args.out / f"{args.name}-heads-report.json",
        {
            "orientation_validation": validation,
            "orientation_held_out": held_out,
            "unusual_held_out": unusual,
            "view_max_abs_difference_from_base": view_same,
            "history": history,
        },
    )
    logger.info(
        "saved %s: rotation %.4f, frontal mirroring %.4f, unusual false alarms %.4f, detection %s",
        path,
        held_out["rotation_accuracy"],
        held_out["frontal_mirroring_accuracy"],
        unusual["false_alarm_rate_stored"],
        unusual["detection_rate"],
    )


if __name__ == "__main__":
    main()
