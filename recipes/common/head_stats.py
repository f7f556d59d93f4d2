"""The statistics of the v4 heads' fitting and measurement (recipes.compact_invariant_64_v4):
logistic fits on frozen features, rates with intervals, leave-one-body-part-out, PA/AP
figures, a one-parameter temperature."""

from __future__ import annotations

from typing import Any

import numpy as np

from recipes.common.proportions import wilson_interval
from training.projection import balanced_accuracy, logistic, sigmoid

#: The chest-or-not threshold: this quantile of validation-patient chest films' logits
#: (stored and augmented copies).
CHEST_QUANTILE = 0.995


BODY_PARTS = ("spine", "dental", "wrist", "limb")


V3_TEMPERATURE_REVIEW = 0.9


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
