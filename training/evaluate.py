"""Held-out metrics with bootstrap confidence intervals, and robustness to orientation.

Everything is plain numpy (no scikit-learn). Class 1 (lateral) is the positive
class for ROC AUC. Confidence intervals are percentile bootstrap over images, or
over patients when ``groups`` is given (images of one patient are not independent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from cxr_orient import LABELS
from cxr_orient.modelstore import expected_calibration_error, predicted_class

logger = logging.getLogger(__name__)

__all__ = [
    "ROBUSTNESS_VARIANTS",
    "binary_metrics",
    "bootstrap_ci",
    "bootstrap_mean_ci",
    "confusion_matrix",
    "evaluate",
    "evaluate_probabilities",
    "robustness",
    "roc_auc",
    "roc_curve",
]


class ProbabilityModel(Protocol):
    def predict_proba(self, batch: np.ndarray) -> np.ndarray: ...


#: Transformations of grey (N, H, W) images an archive may hold.
ROBUSTNESS_VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "original": lambda x: x,
    "rot90": lambda x: np.rot90(x, k=1, axes=(1, 2)),
    "rot180": lambda x: np.rot90(x, k=2, axes=(1, 2)),
    "rot270": lambda x: np.rot90(x, k=3, axes=(1, 2)),
    "hflip": lambda x: x[:, :, ::-1],
    "vflip": lambda x: x[:, ::-1, :],
    "inverted": lambda x: 255 - x,
}

_POINT_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "frontal_precision",
    "frontal_recall",
    "lateral_precision",
    "lateral_recall",
    "roc_auc",
    "ece",
)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """2x2 counts; rows true class, columns predicted class."""
    cm = np.zeros((2, 2), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return cm


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Probability a random positive scores above a random negative (ties count half)."""
    y = np.asarray(y_true, dtype=int)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U from average ranks.
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) over all thresholds, from (0, 0) to (1, 1)."""
    y = np.asarray(y_true, dtype=int)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(int(y.sum()), 1)]
    fpr = np.r_[0.0, fps / max(int((1 - y).sum()), 1)]
    return fpr, tpr


def binary_metrics(y_true: np.ndarray, p_lateral: np.ndarray) -> dict[str, float]:
    """Point metrics at the 0.5 decision threshold."""
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(p_lateral, dtype=np.float64)
    pred = predicted_class(p)
    cm = confusion_matrix(y, pred)
    recall = [_ratio(cm[c, c], cm[c].sum()) for c in (0, 1)]
    precision = [_ratio(cm[c, c], cm[:, c].sum()) for c in (0, 1)]
    return {
        "accuracy": _ratio(np.trace(cm), cm.sum()),
        "balanced_accuracy": float(np.nanmean(recall))
        if not np.all(np.isnan(recall))
        else float("nan"),
        "frontal_precision": precision[0],
        "frontal_recall": recall[0],
        "lateral_precision": precision[1],
        "lateral_recall": recall[1],
        "roc_auc": roc_auc(y, p),
        "ece": expected_calibration_error(p, y),
    }


def bootstrap_ci(
    y_true: np.ndarray,
    p_lateral: np.ndarray,
    *,
    groups: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of :func:`binary_metrics`; resamples patients if ``groups``."""
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(p_lateral, dtype=np.float64)
    if groups is None:
        clusters = [np.array([i]) for i in range(len(y))]
    else:
        by_group: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            by_group.setdefault(g, []).append(i)
        clusters = [np.asarray(v) for _, v in sorted(by_group.items())]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in _POINT_METRICS}
    for _ in range(resamples):
        pick = rng.integers(0, len(clusters), size=len(clusters))
        idx = np.concatenate([clusters[i] for i in pick])
        for k, v in binary_metrics(y[idx], p[idx]).items():
            samples[k].append(v)
    alpha = (1.0 - level) / 2.0
    out: dict[str, tuple[float, float]] = {}
    for k, vals in samples.items():
        arr = np.asarray(vals)
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            out[k] = (float("nan"), float("nan"))
        else:
            out[k] = (float(np.quantile(arr, alpha)), float(np.quantile(arr, 1.0 - alpha)))
    return out


def bootstrap_mean_ci(
    values: Sequence[float],
    groups: Sequence[str],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-answer 0/1 (or real) ``values``,
    resampling ``groups`` (patients: one patient's answers are not independent)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (float("nan"), float("nan"))
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    clusters = [np.asarray(ix) for _, ix in sorted(by_group.items())]
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(resamples):
        pick = rng.integers(0, len(clusters), size=len(clusters))
        means.append(float(v[np.concatenate([clusters[i] for i in pick])].mean()))
    alpha = (1.0 - level) / 2.0
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha)))


def evaluate_probabilities(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    groups: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics, 95 % CIs and the confusion matrix from calibrated (N, 2) probabilities."""
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=np.float64)[:, 1]
    metrics: dict[str, Any] = dict(binary_metrics(y, p))
    metrics["ci95"] = {
        k: list(v)
        for k, v in bootstrap_ci(y, p, groups=groups, resamples=resamples, seed=seed).items()
    }
    metrics["confusion_matrix"] = confusion_matrix(y, predicted_class(p)).tolist()
    metrics["n"] = len(y)
    metrics["n_per_class"] = {name: int((y == i).sum()) for i, name in enumerate(LABELS)}
    if groups is not None:
        metrics["n_patients"] = len(set(groups))
    return metrics


def _predict(classifier: ProbabilityModel, images: np.ndarray, batch_size: int) -> np.ndarray:
    parts = [
        np.asarray(classifier.predict_proba(np.ascontiguousarray(images[i : i + batch_size])))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 2))


def evaluate(
    classifier: ProbabilityModel,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    groups: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class precision/recall, ROC AUC, ECE, with 95 % CIs.

    The calibrated probabilities are returned too, under ``"p_lateral"``.
    """
    probs = _predict(classifier, images, batch_size)
    metrics = evaluate_probabilities(labels, probs, groups=groups, resamples=resamples, seed=seed)
    metrics["p_lateral"] = probs[:, 1].tolist()
    return metrics


def robustness(
    classifier: ProbabilityModel,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    groups: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` on rotated (90/180/270), flipped and inverted copies of grey images."""
    names = list(variants) if variants is not None else list(ROBUSTNESS_VARIANTS)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        transformed = np.ascontiguousarray(ROBUSTNESS_VARIANTS[name](np.asarray(images)))
        out[name] = evaluate(
            classifier,
            transformed,
            labels,
            groups=groups,
            resamples=resamples,
            seed=seed,
            batch_size=batch_size,
        )
        logger.info(
            "%s: balanced accuracy %.4f, lateral recall %.4f",
            name,
            out[name]["balanced_accuracy"],
            out[name]["lateral_recall"],
        )
    return out
