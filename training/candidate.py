"""A candidate checkpoint from labelled images: train, calibrate, evaluate on held-out
patients, save it with its card and report.

What ``cxr-orient train`` (a folder), the nightly retrain (:mod:`training.lifecycle`) and
the release recipes (``recipes/common/release.py``) all call.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cxr_orient import LABELS
from cxr_orient.architectures import DEFAULT_ARCHITECTURE
from cxr_orient.modelstore import (
    Classifier,
    ModelCard,
    save_checkpoint,
)
from training.data import LabelledImages, Split, grouped_stratified_split, load_labelled_folder
from training.evaluate import robustness
from training.report import write_figures, write_json
from training.train import TrainHistory, calibrate, train_model

logger = logging.getLogger(__name__)

__all__ = [
    "TrainedRun",
    "summarise",
    "train_and_evaluate",
    "train_from_folder",
]

#: Headline figures copied from the evaluation into the model card and summaries.
SUMMARY_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "frontal_recall",
    "lateral_recall",
    "frontal_precision",
    "lateral_precision",
    "roc_auc",
    "ece",
)


@dataclass
class TrainedRun:
    checkpoint: Path
    card: ModelCard
    history: TrainHistory
    test_metrics: dict[str, Any]
    robustness: dict[str, dict[str, Any]]


def summarise(metrics: dict[str, Any]) -> dict[str, Any]:
    """Point estimates with their 95 % CIs, without per-image outputs."""
    ci = metrics.get("ci95", {})
    out: dict[str, Any] = {
        k: {"value": metrics[k], "ci95": ci.get(k)} for k in SUMMARY_METRICS if k in metrics
    }
    out["n"] = metrics.get("n")
    out["n_per_class"] = metrics.get("n_per_class")
    out["n_patients"] = metrics.get("n_patients")
    out["confusion_matrix"] = metrics.get("confusion_matrix")
    return out


def train_and_evaluate(
    data: LabelledImages,
    split: Split,
    *,
    name: str,
    out_dir: Path,
    report_dir: Path | None,
    architecture: str = DEFAULT_ARCHITECTURE,
    epochs: int = 60,
    seed: int = 0,
    batch_size: int = 32,
    resamples: int = 1000,
    min_epochs: int = 10,
    test_time_augmentation: str = "none",
    grid_mask: np.ndarray | None = None,
    extra_training: dict[str, Any] | None = None,
    verbose: int | str = "auto",
    workers: int = 1,
    time_budget_s: float | None = None,
    teacher_paths: Sequence[Path] = (),
    distill_weight: float = 0.5,
    imagenet_weights_dir: Path | None = None,
) -> TrainedRun:
    """Train on ``split.train``, calibrate on ``split.val``, evaluate on ``split.test``.

    Writes ``<out_dir>/<name>.keras`` with its card, and (if ``report_dir``) the report.
    ``grid_mask`` limits which test images the prediction grid may show. With
    ``teacher_paths`` the model is distilled from them (:func:`training.train.train_model`).
    """
    train, val, test = (data.subset(split.train), data.subset(split.val), data.subset(split.test))
    model, history = train_model(
        train.images,
        train.labels,
        architecture=architecture,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        val_images=val.images,
        val_labels=val.labels,
        min_epochs=min_epochs,
        verbose=verbose,
        workers=workers,
        time_budget_s=time_budget_s,
        teacher_paths=teacher_paths,
        distill_weight=distill_weight,
        imagenet_weights_dir=imagenet_weights_dir,
    )
    card = ModelCard(
        name=name,
        architecture=architecture,
        input_size=int(data.images.shape[1]),
        labels=LABELS,
        temperature=history.temperature,
        review_threshold=history.review_threshold,
        test_time_augmentation=test_time_augmentation,
    )
    classifier = Classifier(model, card)
    if test_time_augmentation != "none":
        card.temperature, card.review_threshold = calibrate(classifier, val.images, val.labels)
    test_metrics: dict[str, Any] = {}
    variants: dict[str, dict[str, Any]] = {}
    if len(test):
        variants = robustness(
            classifier,
            test.images,
            test.labels,
            groups=test.patients,
            resamples=resamples,
            seed=seed,
        )
        test_metrics = variants["original"]
    card.metrics = {
        # What candidates are compared on: validation patients, 16 views, uncalibrated.
        "validation_16_views": history.params.get("validation_16_views", {}),
        "held_out_test": summarise(test_metrics) if test_metrics else {},
        "robustness": {
            k: {m: v[m] for m in ("balanced_accuracy", "lateral_recall", "frontal_recall")}
            for k, v in variants.items()
        },
    }
    card.training = {
        **history.params,
        "epochs_run": history.epochs_run,
        "best_epoch": history.best_epoch,
        "seconds": round(history.seconds, 1),
        "class_weights": {LABELS[k]: v for k, v in history.class_weights.items()},
        "split_sizes": {
            "train": {
                "images": len(train),
                "patients": len(set(train.patients)),
                "lateral": int(train.labels.sum()),
            },
            "val": {
                "images": len(val),
                "patients": len(set(val.patients)),
                "lateral": int(val.labels.sum()),
            },
            "test": {
                "images": len(test),
                "patients": len(set(test.patients)),
                "lateral": int(test.labels.sum()),
            },
        },
        "keras": keras.__version__,
        "machine": platform.node(),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra_training or {}),
    }
    checkpoint = save_checkpoint(model, card, out_dir)
    if report_dir is not None:
        metrics_doc = {
            "name": name,
            "card": {k: v for k, v in vars(card).items() if k != "metrics"},
            "held_out_test": test_metrics,
            "robustness": {k: v for k, v in variants.items() if k != "original"},
            "history": history.history,
            "test_files": test.files,
        }
        write_json(report_dir / "metrics.json", metrics_doc)
        write_figures(
            report_dir,
            history=history.history,
            images=test.images,
            y_true=test.labels,
            p_lateral=np.asarray(test_metrics.get("p_lateral", []), dtype=np.float64),
            grid_mask=grid_mask,
            seed=seed,
        )
        write_json(
            report_dir / "summary.json",
            {
                "held_out_test": summarise(test_metrics) if test_metrics else {},
                "robustness": {k: summarise(v) for k, v in variants.items()},
                "training": card.training,
                "temperature": card.temperature,
                "review_threshold": card.review_threshold,
            },
        )
    return TrainedRun(checkpoint, card, history, test_metrics, variants)


def train_from_folder(
    data_dir: Path,
    *,
    out_dir: Path,
    architecture: str = DEFAULT_ARCHITECTURE,
    epochs: int,
    seed: int,
    manifest: Path | None,
    imagenet_weights_dir: Path | None = None,
) -> tuple[Path, ModelCard]:
    """Decode ``data_dir`` (``frontal/``, ``lateral/``), split by patient 70/15/15, train,
    evaluate on the held-out patients, and save the checkpoint, card and report in ``out_dir``.
    """
    data = load_labelled_folder(Path(data_dir), manifest=manifest)
    split = grouped_stratified_split(data.labels, data.patients, seed=seed)
    name = f"{architecture}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = Path(out_dir)
    run = train_and_evaluate(
        data,
        split,
        name=name,
        out_dir=out_dir,
        report_dir=out_dir / f"{name}-report",
        architecture=architecture,
        epochs=epochs,
        seed=seed,
        extra_training={"data_dir": str(data_dir)},
        imagenet_weights_dir=imagenet_weights_dir,
    )
    write_json(out_dir / f"{name}-split.json", split.as_patients(data.patients))
    return run.checkpoint, run.card
