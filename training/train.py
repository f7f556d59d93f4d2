"""Train a view classifier from decoded images (numpy in, Keras model out).

Backend agnostic: batches are numpy arrays from a :class:`keras.utils.PyDataset`,
so the same code trains on TensorFlow (CPU hosts) and JAX (the GPU machine).

Recipe: balanced class weights for the ~10:1 frontal:lateral imbalance, strong
augmentation (:mod:`training.augment`), Adam, ``ModelCheckpoint`` on ``val_loss``
(best only), cosine learning-rate decay, and ``EarlyStopping(patience=5, min_delta=0.001,
restore_best_weights=True)`` as in the 2019 tutorial, then temperature scaling
and a review threshold fitted on the validation images.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr_orient.architectures import DEFAULT_ARCHITECTURE, build_model
from cxr_orient.modelstore import apply_temperature, fit_temperature
from training.augment import AugmentConfig, augment_batch
from training.data import grouped_stratified_split

logger = logging.getLogger(__name__)

__all__ = [
    "AugmentedBatches",
    "TrainHistory",
    "balanced_class_weights",
    "calibrate",
    "choose_review_threshold",
    "predict_in_batches",
    "to_model_input",
    "train_model",
]

DEFAULT_REVIEW_THRESHOLD = 0.9


def to_model_input(images: np.ndarray) -> np.ndarray:
    """(N, H, W) grey uint8 -> (N, H, W, 3) float32 holding 0..255."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = np.repeat(x[..., np.newaxis], 3, axis=-1)
    return x.astype(np.float32, copy=False)


def balanced_class_weights(labels: np.ndarray, num_classes: int = 2) -> dict[int, float]:
    """``n / (k * n_c)`` per class, so each class carries the same total weight."""
    y = np.asarray(labels).astype(int)
    counts = np.bincount(y, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"every class needs training images, counts {counts.tolist()}")
    return {c: float(len(y) / (num_classes * counts[c])) for c in range(num_classes)}


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled, augmented ``(x, y, sample_weight)`` batches; reproducible per (seed, epoch)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        class_weights: dict[int, float] | None = None,
        augment: AugmentConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
        return to_model_input(batch), y, weights

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


def predict_in_batches(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Uncalibrated (N, 2) softmax output for grey or 3-channel uint8 images."""
    out = [
        np.asarray(
            keras.ops.convert_to_numpy(
                model.predict_on_batch(to_model_input(images[i : i + batch_size]))
            ),
            dtype=np.float64,
        )
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 2))


def choose_review_threshold(
    calibrated: np.ndarray, labels: np.ndarray, *, floor: float = DEFAULT_REVIEW_THRESHOLD,
    ceiling: float = 0.99,
) -> float:
    """Confidence under which predictions go to a human.

    At least ``floor``; raised just above the most confident validation error, so
    that no validation mistake would have passed unreviewed (capped at ``ceiling``).
    """
    y = np.asarray(labels).astype(int)
    predicted = (calibrated[:, 1] >= 0.5).astype(int)
    confidence = calibrated.max(axis=1)
    wrong = confidence[predicted != y]
    threshold = floor if wrong.size == 0 else max(floor, float(wrong.max()) + 0.005)
    return float(min(threshold, ceiling))


def calibrate(
    model: keras.Model, images: np.ndarray, labels: np.ndarray
) -> tuple[float, float]:
    """Fit the temperature and the review threshold on validation images."""
    raw = predict_in_batches(model, images)
    temperature = fit_temperature(raw, labels)
    threshold = choose_review_threshold(apply_temperature(raw, temperature), labels)
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
    checkpoint_dir: Path | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> tuple[keras.Model, TrainHistory]:
    """Train ``architecture`` on grey uint8 ``(N, S, S)`` images; return the model and history.

    Validation images come from ``val_images``/``val_labels`` when given, otherwise
    ``val_fraction`` of the patients (``groups``; each image its own patient when
    ``None``) is held out, stratified by class. The input size is the images' size.
    ``min_epochs`` delays early stopping while the augmented loss is still settling.
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
        architecture, len(train_y), int(train_y.sum()), len(val_y), int(val_y.sum()),
        class_weights,
    )

    input_size = int(images.shape[1])
    model = build_model(architecture, input_size=input_size, weights_path=weights_path)
    batches = AugmentedBatches(
        train_x, train_y, batch_size=batch_size, seed=seed, class_weights=class_weights,
        augment=augment or AugmentConfig(),
    )
    # Short linear warm-up, then cosine decay over the whole run: with ~15 steps an
    # epoch, plateau-based decay reacts to validation noise and starves training.
    total_steps = max(1, len(batches) * epochs)
    warmup_steps = min(len(batches) * 2, total_steps // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate / 10, decay_steps=total_steps - warmup_steps, alpha=0.02,
        warmup_target=learning_rate, warmup_steps=warmup_steps,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else Path(tmp)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        fit_callbacks: list[keras.callbacks.Callback] = [
            keras.callbacks.ModelCheckpoint(
                str(ckpt_dir / "best.weights.h5"), monitor="val_loss", save_best_only=True,
                save_weights_only=True,
            ),
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=patience, min_delta=0.001,
                restore_best_weights=True, start_from_epoch=min_epochs,
            ),
            *callbacks,
        ]
        fit = model.fit(
            batches,
            validation_data=(to_model_input(val_x), val_y),
            epochs=epochs,
            callbacks=fit_callbacks,
            verbose=verbose,
        )
    history = {k: [float(v) for v in vs] for k, vs in fit.history.items()}
    early = next(cb for cb in fit_callbacks if isinstance(cb, keras.callbacks.EarlyStopping))
    temperature, threshold = calibrate(model, val_x, val_y)
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
            "architecture": architecture, "epochs": epochs, "batch_size": batch_size,
            "seed": seed, "learning_rate": learning_rate, "patience": patience,
            "min_epochs": min_epochs, "input_size": input_size,
            "train_images": len(train_y), "val_images": len(val_y),
            "backend": keras.backend.backend(),
        },
    )
    logger.info(
        "trained %d epochs in %.0f s; best epoch %d; temperature %.3f; review threshold %.3f",
        result.epochs_run, result.seconds, result.best_epoch, temperature, threshold,
    )
    return model, result
