"""The view probability: the one decision rule (lateral when p_lateral >= 0.5),
temperature scaling fitted on validation films (with optional soft targets), and the
expected calibration error that reports it.

Pure functions of numpy arrays; :mod:`cxr_orient.modelstore` applies the temperature a
model card records and re-exports these names.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DECISION_THRESHOLD",
    "apply_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "platt_targets",
    "predicted_class",
]

logger = logging.getLogger(__name__)

_EPS = 1e-7

#: The decision rule: lateral when p_lateral is at least this, else frontal. Every
#: answer (the worker's, ``evaluate``'s, training reports') is made by it.
DECISION_THRESHOLD = 0.5


def predicted_class(p_lateral: np.ndarray) -> np.ndarray:
    """Class indices (0 frontal, 1 lateral) for calibrated lateral probabilities."""
    return (np.asarray(p_lateral, dtype=np.float64) >= DECISION_THRESHOLD).astype(int)


def _lateral_logits(probs: np.ndarray) -> np.ndarray:
    """(N, 2) softmax probabilities -> log-odds of lateral, (N,)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)
    return np.log(p[:, 1]) - np.log(p[:, 0])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scale (N, 2) probabilities: p_lat = sigmoid((log p_lat - log p_front) / T)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    p_lateral = _sigmoid(_lateral_logits(probs) / temperature)
    return np.stack([1.0 - p_lateral, p_lateral], axis=1)


def _soft_nll(
    logits: np.ndarray, y: np.ndarray, temperature: float, targets: tuple[float, float] = (0.0, 1.0)
) -> float:
    """Cross-entropy of sigmoid(logits / T) against soft targets (negative, positive)."""
    z = logits / temperature
    t = np.where(y == 1, targets[1], targets[0])
    # -t log sigmoid(z) - (1 - t) log sigmoid(-z), computed stably.
    return float(np.mean(t * np.logaddexp(0.0, -z) + (1.0 - t) * np.logaddexp(0.0, z)))


def platt_targets(y: np.ndarray) -> tuple[float, float]:
    """Platt's (1999) smoothed targets: 1/(N- + 2) for negatives, (N+ + 1)/(N+ + 2) for
    positives. With them a validation set the model separates perfectly still has a
    finite best temperature (plain NLL would drive T to 0 and every probability to 0/1)."""
    n_pos = int((y == 1).sum())
    n_neg = int((y == 0).sum())
    return 1.0 / (n_neg + 2), (n_pos + 1.0) / (n_pos + 2)


def fit_temperature(
    probs: np.ndarray,
    y: Sequence[int] | np.ndarray,
    *,
    bounds: tuple[float, float] = (0.01, 100.0),
    smoothed: bool = True,
    counts_per_image: int = 1,
) -> float:
    """Temperature minimising the validation NLL (1-D search in log T).

    ``probs`` is (N, 2) uncalibrated softmax output, ``y`` the true class indices.
    With ``smoothed`` the NLL is against Platt's smoothed targets (:func:`platt_targets`),
    counted over ``N / counts_per_image`` images when each image appears in several views.
    A coarse grid finds the basin, golden-section search refines it. A result at
    either end of ``bounds`` is logged as a warning: the NLL was still falling there,
    so the temperature is a clamp, not a fit (e.g. a separable validation set, or
    probabilities averaged into softness by test-time augmentation).
    """
    labels = np.asarray(y).astype(int)
    logits = _lateral_logits(np.asarray(probs))
    if logits.size == 0:
        raise ValueError("fit_temperature needs at least one example")
    targets = (0.0, 1.0)
    if smoothed:
        per = max(1, int(counts_per_image))
        targets = (
            platt_targets(labels[: max(1, len(labels) // per)])
            if per > 1
            else platt_targets(labels)
        )

    def _nll(lg: np.ndarray, yy: np.ndarray, temp: float) -> float:
        return _soft_nll(lg, yy, temp, targets)

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    grid = np.linspace(lo, hi, 81)
    losses = [_nll(logits, labels, math.exp(t)) for t in grid]
    best = int(np.argmin(losses))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll(logits, labels, math.exp(c)), _nll(logits, labels, math.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll(logits, labels, math.exp(d))
    temperature = float(math.exp((a + b) / 2))
    if min(abs(math.log(temperature) - lo), abs(hi - math.log(temperature))) < 0.05:
        logger.warning(
            "fitted temperature %.4g is at the edge of its range %s", temperature, bounds
        )
    return temperature


def expected_calibration_error(
    p_lateral: np.ndarray | Sequence[float], y: np.ndarray | Sequence[int], bins: int = 10
) -> float:
    """Top-label ECE: confidence max(p, 1-p) against accuracy, in equal-width bins on [0.5, 1]."""
    p = np.asarray(p_lateral, dtype=np.float64)
    labels = np.asarray(y).astype(int)
    if p.size == 0:
        return float("nan")
    predicted = predicted_class(p)
    confidence = np.where(predicted == 1, p, 1.0 - p)
    correct = (predicted == labels).astype(np.float64)
    edges = np.linspace(0.5, 1.0, bins + 1)
    # Bin index by right-closed intervals so confidence 1.0 lands in the last bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


# --- inference -------------------------------------------------------------------
