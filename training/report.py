"""Write a training report folder: metrics.json and PNG figures (matplotlib, Agg).

Figures: training curves, confusion matrix, ROC curve, and the 2019 tutorial's
picture, a grid of test images titled "predicted (true)", green when right and
red when wrong.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_orient import LABELS
from cxr_orient.modelstore import finite_or_none, json_default, predicted_class
from training.evaluate import roc_curve

logger = logging.getLogger(__name__)

__all__ = [
    "finite_or_none",
    "plot_confusion_matrix",
    "plot_prediction_grid",
    "plot_roc",
    "plot_training_curves",
    "write_figures",
    "write_json",
    "write_report",
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(finite_or_none(data), indent=2, default=json_default, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def plot_training_curves(history: Mapping[str, Sequence[float]], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                ax.plot(
                    range(1, len(values) + 1),
                    values,
                    style,
                    label=f"{'validation' if prefix else 'training'} {key}",
                )
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]] | np.ndarray, path: Path, title: str = ""
) -> Path:
    plt = _pyplot()
    matrix = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(matrix, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
            )
    ax.set_xticks([0, 1], LABELS)
    ax.set_yticks([0, 1], LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_roc(y_true: np.ndarray, p_lateral: np.ndarray, path: Path, auc: float) -> Path:
    plt = _pyplot()
    fpr, tpr = roc_curve(y_true, p_lateral)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate (frontal called lateral)")
    ax.set_ylabel("true positive rate (lateral recall)")
    ax.set_title("ROC, held-out patients")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_prediction_grid(
    images: np.ndarray,
    y_true: np.ndarray,
    p_lateral: np.ndarray,
    path: Path,
    *,
    max_images: int = 24,
    seed: int = 0,
) -> Path:
    """The tutorial's picture; every error is shown first, then a seeded sample of the rest."""
    plt = _pyplot()
    y = np.asarray(y_true, dtype=int)
    pred = predicted_class(p_lateral)
    wrong = np.nonzero(pred != y)[0]
    right = np.nonzero(pred == y)[0]
    rng = np.random.default_rng(seed)
    # Show laterals alongside frontals, not only the majority class.
    right_lat = rng.permutation(right[y[right] == 1])
    right_front = rng.permutation(right[y[right] == 0])
    n_lat = min(len(right_lat), max(0, (max_images - len(wrong)) // 3))
    chosen = np.r_[wrong, right_lat[:n_lat], right_front][:max_images].astype(int)
    cols = 6
    rows = max(1, math.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.4))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, i in zip(np.ravel(axes), chosen, strict=False):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ok = pred[i] == y[i]
        ax.set_title(
            f"{LABELS[pred[i]]} ({LABELS[y[i]]})", color="green" if ok else "red", fontsize=9
        )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_figures(
    report_dir: Path,
    *,
    history: Mapping[str, Sequence[float]] | None,
    images: np.ndarray,
    y_true: np.ndarray,
    p_lateral: np.ndarray,
    grid_mask: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Curves, confusion matrix, ROC and prediction grid; skipped if matplotlib is missing.

    ``grid_mask`` limits which images the prediction grid may show (licences).
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.warning("matplotlib not installed: figures skipped (metrics.json has the data)")
        return {}
    report_dir.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(p_lateral, dtype=np.float64)
    from training.evaluate import confusion_matrix, roc_auc

    written: dict[str, Path] = {}
    if history:
        written["curves"] = plot_training_curves(history, report_dir / "training_curves.png")
    if len(y):
        written["confusion"] = plot_confusion_matrix(
            confusion_matrix(y, predicted_class(p)),
            report_dir / "confusion_matrix.png",
            title="held-out patients",
        )
        written["roc"] = plot_roc(y, p, report_dir / "roc.png", roc_auc(y, p))
        keep = np.ones(len(y), bool) if grid_mask is None else np.asarray(grid_mask, bool)
        if keep.any():
            written["grid"] = plot_prediction_grid(
                images[keep], y[keep], p[keep], report_dir / "predictions.png", seed=seed
            )
    return written


def write_report(
    out_dir: Path,
    *,
    metrics: Mapping[str, Any],
    history: Mapping[str, Sequence[float]] | None = None,
    images: np.ndarray | None = None,
    y_true: np.ndarray | None = None,
    p_lateral: np.ndarray | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json`` and whichever figures the inputs allow; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"metrics": write_json(out_dir / "metrics.json", metrics)}
    if history:
        written["curves"] = plot_training_curves(history, out_dir / "training_curves.png")
    if y_true is not None and p_lateral is not None:
        y = np.asarray(y_true, dtype=int)
        p = np.asarray(p_lateral, dtype=np.float64)
        from training.evaluate import confusion_matrix, roc_auc

        written["confusion"] = plot_confusion_matrix(
            confusion_matrix(y, predicted_class(p)),
            out_dir / "confusion_matrix.png",
            title="held-out patients",
        )
        written["roc"] = plot_roc(y, p, out_dir / "roc.png", roc_auc(y, p))
        if images is not None:
            written["grid"] = plot_prediction_grid(images, y, p, out_dir / "predictions.png")
    logger.info("report written to %s", out_dir)
    return written
