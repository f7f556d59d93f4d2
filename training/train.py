"""Train a view classifier from decoded images (numpy in, Keras model out).

Backend agnostic: batches are numpy arrays from a :class:`keras.utils.PyDataset`,
so the same code trains on TensorFlow (CPU hosts) and JAX (the GPU machine).

Recipe: balanced class weights for the ~10:1 frontal:lateral imbalance, strong
augmentation (:mod:`training.augment`; every image in a random one of the 8
orientations, inverted half the time), Adam, ``ModelCheckpoint`` on ``val_loss``
(best only), cosine learning-rate decay, and ``EarlyStopping(patience=5, min_delta=0.001,
restore_best_weights=True)`` as in the 2019 tutorial, then temperature scaling
and a review threshold fitted on the validation images.

Distillation (optional, ``teacher_paths``): the targets become a mix of the true label
and the mean prediction of already trained models (a :class:`TeacherEnsemble`) on the
very same augmented image. One model then carries much of what an ensemble knows about
hard views (an inverted lateral, a rotated crop) at a single model's inference cost.

Validation (early stopping, checkpointing, temperature, review threshold) sees the
validation images in every orientation archives produce, not only as stored: the
loss that picks the epoch is the loss on the rotated, flipped and inverted copies too,
and the temperature is fitted over all 16 dihedral x inversion views, so that one
temperature holds whatever way up a film arrives.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr_orient.architectures import (
    DEFAULT_ARCHITECTURE,
    INVARIANT_ARCHITECTURES,
    build_model,
    imagenet_weights_for,
)
from cxr_orient.modelstore import (
    Classifier,
    ModelCard,
    apply_temperature,
    fit_temperature,
    load_checkpoint,
    predicted_class,
    read_card,
    to_model_input,
    tta_views,
)
from training.augment import AugmentConfig, augment_batch
from training.data import grouped_stratified_split
from training.evaluate import ROBUSTNESS_VARIANTS, binary_metrics

logger = logging.getLogger(__name__)

__all__ = [
    "AugmentedBatches",
    "TeacherEnsemble",
    "TimeBudget",
    "TrainHistory",
    "balanced_class_weights",
    "calibrate",
    "choose_review_threshold",
    "train_model",
    "validation_views",
    "view_metrics",
]

DEFAULT_REVIEW_THRESHOLD = 0.9


def validation_views(images: np.ndarray) -> list[np.ndarray]:
    """The 16 dihedral x inversion views of grey uint8 ``(N, H, W)`` images, as uint8."""
    return [
        np.ascontiguousarray(v).astype(np.uint8)
        for v in tta_views(np.asarray(images), "dihedral+invert")
    ]


def view_metrics(
    classifier: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 64,
    temperature: float | None = None,
) -> dict[str, Any]:
    """Uncalibrated predictions on every one of the 16 views of the images, and per-view
    balanced accuracy, lateral recall and NLL with their mean and minimum (NLL: maximum).
    With ``temperature``, also the mean NLL after temperature scaling
    (``nll_calibrated_mean``): how candidates compare once each is calibrated, which is
    how they would serve (a distilled model is trained to be less confident, so its
    uncalibrated NLL says little).

    What candidate models are compared on: the validation patients in every
    orientation an archive may store them in.
    """
    y = np.asarray(labels).astype(int)
    raw = [classifier.predict_raw_in_batches(v, batch_size) for v in validation_views(images)]
    per_view = []
    for probs in raw:
        m = binary_metrics(y, probs[:, 1])
        p_true = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
        per_view.append(
            {
                "balanced_accuracy": m["balanced_accuracy"],
                "lateral_recall": m["lateral_recall"],
                "nll": float(-np.log(p_true).mean()),
            }
        )
    summary: dict[str, Any] = {}
    for key in ("balanced_accuracy", "lateral_recall"):
        vals = [v[key] for v in per_view]
        summary[f"{key}_mean"] = float(np.mean(vals))
        summary[f"{key}_min"] = float(np.min(vals))
    summary["nll_mean"] = float(np.mean([v["nll"] for v in per_view]))
    if temperature is not None:
        calibrated = [apply_temperature(probs, temperature) for probs in raw]
        summary["nll_calibrated_mean"] = float(
            np.mean(
                [-np.log(np.clip(c[np.arange(len(y)), y], 1e-7, 1.0)).mean() for c in calibrated]
            )
        )
    summary["nll_max"] = float(np.max([v["nll"] for v in per_view]))
    summary["views"] = len(per_view)
    summary["n"] = len(y)
    summary["raw"] = raw
    return summary


class TimeBudget(keras.callbacks.Callback):
    """Stop training at the end of the first epoch that ends after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.started = time.monotonic()
        self.stopped_at: int | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if time.monotonic() - self.started > self.seconds:
            self.stopped_at = epoch + 1
            logger.warning(
                "time budget of %.0f s spent: stopping after epoch %d", self.seconds, epoch + 1
            )
            self.model.stop_training = True


def balanced_class_weights(labels: np.ndarray, num_classes: int = 2) -> dict[int, float]:
    """``n / (k * n_c)`` per class, so each class carries the same total weight."""
    y = np.asarray(labels).astype(int)
    counts = np.bincount(y, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"every class needs training images, counts {counts.tolist()}")
    return {c: float(len(y) / (num_classes * counts[c])) for c in range(num_classes)}


class TeacherEnsemble:
    """Mean uncalibrated softmax of trained checkpoints (each checked against its card's
    SHA-256): the soft targets a distilled model learns from."""

    def __init__(self, paths: Sequence[Path | str]) -> None:
        if not paths:
            raise ValueError("a teacher ensemble needs at least one checkpoint")
        self.paths = [Path(p) for p in paths]
        self.sha256 = [read_card(p).sha256 for p in self.paths]
        self.models = [
            load_checkpoint(p, expected_sha256=sha)
            for p, sha in zip(self.paths, self.sha256, strict=True)
        ]
        # PyDataset workers are threads; one model call at a time keeps backends happy.
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) model input -> (N, 2) mean softmax."""
        with self._lock:
            outs = [
                np.asarray(keras.ops.convert_to_numpy(m.predict_on_batch(x)), np.float64)
                for m in self.models
            ]
        return np.mean(outs, axis=0)

    def describe(self) -> list[dict[str, str]]:
        return [{"file": p.name, "sha256": s} for p, s in zip(self.paths, self.sha256, strict=True)]


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled, augmented ``(x, y, sample_weight)`` batches; reproducible per (seed, epoch).

    With a ``teacher``, ``y`` is a soft target per image, ``(1 - distill_weight) * one-hot
    label + distill_weight * teacher(x)``, for a categorical cross-entropy loss.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        class_weights: dict[int, float] | None = None,
        augment: AugmentConfig | None = None,
        teacher: TeacherEnsemble | None = None,
        distill_weight: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight}")
        self.teacher = teacher
        self.distill_weight = distill_weight
        self.images = images
        self.labels = np.asarray(labels).astype(np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.class_weights = class_weights or {0: 1.0, 1: 1.0}
        self.augment = augment
        self.epoch = 0
        self._order = self._shuffled_order()

    def _shuffled_order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = self.images[idx]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            batch = augment_batch(batch, rng, self.augment)
        y = self.labels[idx]
        weights = np.asarray([self.class_weights[int(c)] for c in y], dtype=np.float32)
        # Training has always fed float32; the values are those the model sees in service.
        x = to_model_input(batch).astype(np.float32, copy=False)
        if self.teacher is None:
            return x, y, weights
        onehot = np.eye(2, dtype=np.float64)[y]
        target = (1.0 - self.distill_weight) * onehot + self.distill_weight * self.teacher(x)
        return x, target.astype(np.float32), weights

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._order = self._shuffled_order()


@dataclass
class TrainHistory:
    """What a training run did, for the model card and the report."""

    history: dict[str, list[float]]
    best_epoch: int
    epochs_run: int
    seconds: float
    temperature: float
    review_threshold: float
    class_weights: dict[int, float]
    val_index: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


def choose_review_threshold(
    calibrated: np.ndarray,
    labels: np.ndarray,
    *,
    floor: float = DEFAULT_REVIEW_THRESHOLD,
    ceiling: float = 0.99,
) -> float:
    """Confidence under which predictions go to a human.

    At least ``floor``; raised just above the most confident validation error, so
    that no validation mistake would have passed unreviewed (capped at ``ceiling``).
    """
    y = np.asarray(labels).astype(int)
    predicted = predicted_class(calibrated[:, 1])
    confidence = calibrated.max(axis=1)
    wrong = confidence[predicted != y]
    threshold = floor if wrong.size == 0 else max(floor, float(wrong.max()) + 0.005)
    return float(min(threshold, ceiling))


def calibrate(
    classifier: Classifier, images: np.ndarray, labels: np.ndarray
) -> tuple[float, float]:
    """Fit the temperature and the review threshold on validation images, through the
    classifier's own inference path (its card's test-time augmentation included), over
    all 16 dihedral x inversion views of them: one temperature for whatever way up a
    film arrives. Returns ``(temperature, review_threshold)``; the caller puts them on
    the card."""
    y = np.asarray(labels).astype(int)
    raw = np.concatenate(
        [classifier.predict_raw_in_batches(view, 32) for view in validation_views(images)]
    )
    views = len(raw) // max(len(y), 1)
    y_all = np.tile(y, views)
    temperature = fit_temperature(raw, y_all, counts_per_image=views)
    threshold = choose_review_threshold(apply_temperature(raw, temperature), y_all)
    return temperature, threshold


def train_model(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    architecture: str = DEFAULT_ARCHITECTURE,
    epochs: int = 60,
    batch_size: int = 32,
    seed: int = 0,
    val_fraction: float = 0.15,
    groups: Sequence[str] | None = None,
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    learning_rate: float = 1e-3,
    patience: int = 5,
    min_epochs: int = 10,
    augment: AugmentConfig | None = None,
    weights_path: Path | None = None,
    imagenet_weights_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    workers: int = 1,
    validate_variants: bool = True,
    time_budget_s: float | None = None,
    teacher_paths: Sequence[Path | str] = (),
    distill_weight: float = 0.5,
) -> tuple[keras.Model, TrainHistory]:
    """Train ``architecture`` on grey uint8 ``(N, S, S)`` images; return the model and history.

    Validation images come from ``val_images``/``val_labels`` when given, otherwise
    ``val_fraction`` of the patients (``groups``; each image its own patient when
    ``None``) is held out, stratified by class. The input size is the images' size.
    ``min_epochs`` delays early stopping while the augmented loss is still settling.
    ``workers`` threads build the augmented batches (the CPU side is the bottleneck on
    a GPU). With ``validate_variants`` the validation loss is over the validation images
    as stored and rotated 90/180/270, flipped and inverted. ``time_budget_s`` stops
    training after the first epoch that ends past it (best weights are still restored).
    With ``teacher_paths`` the model is distilled from the mean of those checkpoints
    (:class:`AugmentedBatches`); the validation loss that stops training and picks the
    epoch stays the loss against the true labels.
    """
    started = time.monotonic()
    keras.utils.set_random_seed(seed)
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels).astype(np.int64)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected square grey images (N, S, S), got {images.shape}")
    if val_images is None or val_labels is None:
        group_ids = list(groups) if groups is not None else [str(i) for i in range(len(images))]
        split = grouped_stratified_split(
            labels, group_ids, fractions=(1.0 - val_fraction, val_fraction, 0.0), seed=seed
        )
        val_index = split.val
        train_x, train_y = images[split.train], labels[split.train]
        val_x, val_y = images[split.val], labels[split.val]
    else:
        val_index = np.zeros(0, dtype=int)
        train_x, train_y = images, labels
        val_x, val_y = np.asarray(val_images, dtype=np.uint8), np.asarray(val_labels)
    class_weights = balanced_class_weights(train_y)
    logger.info(
        "training %s on %d images (%d lateral), validating on %d (%d lateral); class weights %s",
        architecture,
        len(train_y),
        int(train_y.sum()),
        len(val_y),
        int(val_y.sum()),
        class_weights,
    )

    input_size = int(images.shape[1])
    if weights_path is None:
        weights_path = imagenet_weights_for(architecture, imagenet_weights_dir)
    model = build_model(architecture, input_size=input_size, weights_path=weights_path)
    teacher = TeacherEnsemble(teacher_paths) if teacher_paths else None
    if teacher is not None:
        logger.info("distilling from %d teachers (weight %.2f)", len(teacher.paths), distill_weight)
    batches = AugmentedBatches(
        train_x,
        train_y,
        batch_size=batch_size,
        seed=seed,
        class_weights=class_weights,
        augment=augment or AugmentConfig(),
        teacher=teacher,
        distill_weight=distill_weight,
        workers=max(1, int(workers)),
        use_multiprocessing=False,
        max_queue_size=max(10, 2 * int(workers)),
    )
    if validate_variants and architecture in INVARIANT_ARCHITECTURES:
        validate_variants = False  # every variant would give the very same loss
    if validate_variants:
        val_fit_x = np.concatenate([ROBUSTNESS_VARIANTS[k](val_x) for k in ROBUSTNESS_VARIANTS])
        val_fit_y = np.tile(val_y, len(ROBUSTNESS_VARIANTS))
    else:
        val_fit_x, val_fit_y = val_x, val_y
    if teacher is not None:  # soft training targets: the loss takes (N, 2) targets
        val_fit_y = np.eye(2, dtype=np.float32)[np.asarray(val_fit_y).astype(int)]
    budget = TimeBudget(time_budget_s) if time_budget_s else None
    # Short linear warm-up, then cosine decay over the whole run: with ~15 steps an
    # epoch, plateau-based decay reacts to validation noise and starves training.
    total_steps = max(1, len(batches) * epochs)
    warmup_steps = min(len(batches) * 2, total_steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate / 10,
        decay_steps=total_steps - warmup_steps,
        alpha=0.02,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=(
            "categorical_crossentropy" if teacher is not None else "sparse_categorical_crossentropy"
        ),
        metrics=["accuracy"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else Path(tmp)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        fit_callbacks: list[keras.callbacks.Callback] = [
            keras.callbacks.ModelCheckpoint(
                str(ckpt_dir / "best.weights.h5"),
                monitor="val_loss",
                save_best_only=True,
                save_weights_only=True,
            ),
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=patience,
                min_delta=0.001,
                restore_best_weights=True,
                start_from_epoch=min_epochs,
            ),
            *callbacks,
            *([budget] if budget is not None else []),
        ]
        fit = model.fit(
            batches,
            validation_data=(to_model_input(val_fit_x).astype(np.float32), val_fit_y),
            epochs=epochs,
            callbacks=fit_callbacks,
            verbose=verbose,
        )
    history = {k: [float(v) for v in vs] for k, vs in fit.history.items()}
    early = next(cb for cb in fit_callbacks if isinstance(cb, keras.callbacks.EarlyStopping))
    trained = Classifier(
        model, ModelCard(name="training", architecture=architecture, input_size=input_size)
    )
    temperature, threshold = calibrate(trained, val_x, val_y)
    validation = view_metrics(trained, val_x, val_y, temperature=temperature)
    validation.pop("raw")
    result = TrainHistory(
        history=history,
        best_epoch=int(early.best_epoch) + 1,
        epochs_run=len(history.get("loss", [])),
        seconds=time.monotonic() - started,
        temperature=temperature,
        review_threshold=threshold,
        class_weights=class_weights,
        val_index=val_index,
        params={
            "architecture": architecture,
            "epochs": epochs,
            "batch_size": batch_size,
            "seed": seed,
            "learning_rate": learning_rate,
            "patience": patience,
            "min_epochs": min_epochs,
            "input_size": input_size,
            "train_images": len(train_y),
            "val_images": len(val_y),
            "backend": keras.backend.backend(),
            "workers": workers,
            "validation_loss_on": "stored + rot90/180/270 + hflip + vflip + inverted"
            if validate_variants
            else "stored"
            + (
                " (the architecture is invariant to the variants)"
                if architecture in INVARIANT_ARCHITECTURES
                else ""
            ),
            "time_budget_s": time_budget_s,
            "stopped_by_time_budget": budget is not None and budget.stopped_at is not None,
            "augment": dataclasses.asdict(augment or AugmentConfig()),
            "validation_16_views": validation,
            **(
                {"distilled_from": teacher.describe(), "distill_weight": distill_weight}
                if teacher is not None
                else {}
            ),
        },
    )
    logger.info(
        "trained %d epochs in %.0f s; best epoch %d; temperature %.3f; review threshold %.3f",
        result.epochs_run,
        result.seconds,
        result.best_epoch,
        temperature,
        threshold,
    )
    return model, result
