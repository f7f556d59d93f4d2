"""The statistics of the v4 heads' fitting and measurement (recipes.compact_invariant_64_v4):
logistic fits on frozen features, rates with intervals, leave-one-body-part-out, PA/AP
figures, a one-parameter temperature."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recipes.common.proportions import wilson_interval

#: The chest-or-not threshold: this quantile of validation-patient chest films' logits
#: (stored and augmented copies).
CHEST_QUANTILE = 0.995


BODY_PARTS = ("spine", "dental", "wrist", "limb")


V3_TEMPERATURE_REVIEW = 0.9


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def logistic(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, penalty: float
) -> tuple[np.ndarray, float]:
    """Weighted L2 logistic regression by Newton's method on standardised features;
    returns weights and bias on the raw features (the standardisation folded in)."""
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    xs = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    w = w * len(w) / w.sum()
    reg = np.full(xs.shape[1], penalty)
    reg[-1] = 0.0
    beta = np.zeros(xs.shape[1])
    for _ in range(100):
        p = sigmoid(xs @ beta)
        grad = xs.T @ (w * (p - y)) + reg * beta
        hess = (xs * (w * p * (1 - p))[:, None]).T @ xs + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-7:
            break
    coef = beta[:-1] / sd
    return coef, float(beta[-1] - coef @ mu)


def rate(flags: np.ndarray) -> dict[str, Any]:
    flags = np.asarray(flags, dtype=bool)
    return {
        "k": int(flags.sum()),
        "n": int(flags.size),
        "rate": float(flags.mean()) if flags.size else float("nan"),
        "ci95": wilson_interval(int(flags.sum()), int(flags.size)),
    }


def part_of(parts: np.ndarray) -> np.ndarray:
    return np.where(np.isin(parts, BODY_PARTS[:3]), parts, "limb")


def chest_training(
    f: dict[str, np.ndarray], d: dict[str, np.ndarray], keep_parts: set[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels (1 not chest) and weights: training patients' chest films
    against the body parts in ``keep_parts``, each part as heavy as the others together
    are divided (equal shares), all parts together as heavy as the chest films."""
    chest = f["chest/scope"][:, d["chest_split"] == "train"].reshape(-1, f["chest/scope"].shape[-1])
    parts = part_of(d["non_parts"])
    keep = np.isin(parts, sorted(keep_parts))
    non = f["non/scope"][:, keep].reshape(-1, f["non/scope"].shape[-1])
    non_parts = np.tile(parts[keep], f["non/scope"].shape[0])
    w_non = np.zeros(len(non))
    for part in keep_parts:
        mask = non_parts == part
        w_non[mask] = len(chest) / len(keep_parts) / mask.sum()
    x = np.concatenate([chest, non])
    y = np.concatenate([np.zeros(len(chest)), np.ones(len(non))])
    return x, y, np.concatenate([np.ones(len(chest)), w_non])


def chest_threshold(
    f: dict[str, np.ndarray], d: dict[str, np.ndarray], coef: np.ndarray, bias: float
) -> float:
    val = f["chest/scope"][:, d["chest_split"] == "val"]
    return float(np.quantile(val.reshape(-1, val.shape[-1]) @ coef + bias, CHEST_QUANTILE))


def v3_flags(f: dict[str, np.ndarray], name: str, threshold: float) -> np.ndarray:
    return f[f"{name}/unusual_v3"][..., 0] > threshold


def confident(view: np.ndarray, temperature: float) -> np.ndarray:
    """v3's (and v4's) confidence rule on raw view softmaxes."""
    p = np.clip(view, 1e-7, 1.0)
    p_lat = sigmoid((np.log(p[..., 1]) - np.log(p[..., 0])) / temperature)
    return np.maximum(p_lat, 1 - p_lat) >= V3_TEMPERATURE_REVIEW


def leave_one_part_out(
    f: dict[str, np.ndarray],
    d: dict[str, np.ndarray],
    penalty: float,
    v3_threshold: float,
    temperature: float,
) -> dict[str, Any]:
    """Per body part: fit without it, threshold on validation chest films, measure on it
    (stored films; and all copies)."""
    parts = part_of(d["non_parts"])
    out: dict[str, Any] = {}
    for held in BODY_PARTS:
        coef, bias = logistic(*chest_training(f, d, set(BODY_PARTS) - {held}), penalty)
        threshold = chest_threshold(f, d, coef, bias)
        mask = parts == held
        logits = f["non/scope"][:, mask] @ coef + bias
        flagged = (logits > threshold) | v3_flags(f, "non", v3_threshold)[:, mask]
        answered = ~flagged & confident(f["non/view"][:, mask], temperature)
        out[held] = {
            "detected_stored": rate(flagged[0]),
            "answered_confidently_stored": rate(answered[0]),
            "detected_all_copies": rate(flagged.reshape(-1)),
            "answered_confidently_all_copies": rate(answered.reshape(-1)),
        }
    return out


def projection_data(
    f: dict[str, np.ndarray], d: dict[str, np.ndarray], part: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(copies, N, D) features, (N,) labels (1 AP), patient ids of ``part``'s frontals
    with a PA/AP label."""
    views = d["chest_views"]
    mask = (d["chest_split"] == part) & np.isin(views, ["PA", "AP", "AP Supine"])
    return f["chest/scope"][:, mask], (views[mask] != "PA").astype(float), d["chest_patients"][mask]


def balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    pred = p >= 0.5
    recalls = [float((pred[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def projection_figures(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    answered = np.maximum(p, 1 - p) >= threshold
    pred = p >= 0.5
    return {
        "n": int(y.size),
        "answered": rate(answered),
        "balanced_accuracy_answered": balanced_accuracy(y[answered], p[answered]),
        "balanced_accuracy_all": balanced_accuracy(y, p),
        "pa_recall_answered": rate(~pred[answered & (y == 0)]),
        "ap_recall_answered": rate(pred[answered & (y == 1)]),
    }


def fit_temperature_1d(z: np.ndarray, y: np.ndarray) -> float:
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 400))
    nll = [
        float(np.mean(np.logaddexp(0, -zz) * y + np.logaddexp(0, zz) * (1 - y)))
        for zz in (z[None] / grid[:, None])
    ]
    return float(grid[int(np.argmin(nll))])
