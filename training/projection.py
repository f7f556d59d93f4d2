"""The PA/AP head on frozen features: the fit, its abstention threshold, its figures.

The head of ``compact_invariant_64_heads3`` (layer ``projection``) is one logistic unit
on the exactly invariant features of layer ``scope_features``; nothing under it moves
when it is refitted. The rule is the one ``recipes/compact_invariant_64_v4.py`` used for
the shipped head (it imports these functions): a class-balanced L2 logistic fit on the
training patients' frontals, the penalty chosen by the validation patients' NLL, a
temperature fitted on them, and the abstention threshold the lowest confidence whose
answered validation frontals reach :data:`PROJECTION_TARGET` balanced accuracy. The
held-out (evaluation) patients are never looked at here.

:func:`projection_figures` are the figures the gate compares (:func:`training.gate.gate`):
coverage (share of labelled frontals given a projection), balanced accuracy of those
stated, and balanced accuracy of every frontal at p_ap 0.5.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FEATURE_LAYER",
    "HEAD_LAYER",
    "PENALTIES",
    "PROJECTION_TARGET",
    "ProjectionFit",
    "ProjectionSet",
    "balanced_accuracy",
    "fit_projection_head",
    "fit_temperature_1d",
    "logistic",
    "predict_in_batches",
    "predicted_projection_figures",
    "projection_figures",
    "projection_of_view",
    "read_projection_manifest",
    "scope_features",
    "sigmoid",
]

#: The features the head reads, and the head: layer names of ``compact_invariant_64_heads3``.
FEATURE_LAYER = "scope_features"
HEAD_LAYER = "projection"
#: L2 penalties tried, chosen by the validation patients' NLL.
PENALTIES = (1.0, 10.0, 100.0)
#: What the stated projections must reach on validation patients' frontals.
PROJECTION_TARGET = 0.97
#: The threshold when no confidence reaches the target on validation (almost nothing stated).
FALLBACK_THRESHOLD = 0.99


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


def balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    """Mean recall of PA (y 0) and AP (y 1) at p_ap 0.5, over the classes present
    (NaN for no film)."""
    pred = np.asarray(p) >= 0.5
    y = np.asarray(y)
    recalls = [float((pred[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def fit_temperature_1d(z: np.ndarray, y: np.ndarray) -> float:
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 400))
    nll = [
        float(np.mean(np.logaddexp(0, -zz) * y + np.logaddexp(0, zz) * (1 - y)))
        for zz in (z[None] / grid[:, None])
    ]
    return float(grid[int(np.argmin(nll))])


def projection_of_view(view: str | None) -> str | None:
    """``PA`` or ``AP`` from a source's view name (``AP Supine`` is AP); None otherwise."""
    said = (view or "").strip().upper()
    if said == "PA":
        return "PA"
    if said == "AP" or said.startswith("AP "):
        return "AP"
    return None


def read_projection_manifest(manifest: Path) -> dict[str, str]:
    """``file -> PA | AP`` from a training folder's manifest with a ``view`` column (the
    development data's ``covid-cxr/manifest.csv``); empty without the column."""
    with open(manifest, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "view" not in (reader.fieldnames or ()):
            return {}
        out = {}
        for row in reader:
            projection = projection_of_view(row.get("view"))
            if projection is not None:
                out[row["file"].strip()] = projection
        return out


@dataclass
class ProjectionSet:
    """Frontals with a known projection, index-aligned: ``y`` 1.0 for AP, 0.0 for PA."""

    images: np.ndarray  # (N, size, size) uint8
    y: np.ndarray  # (N,) float
    patients: list[str]

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: Sequence[int] | np.ndarray) -> ProjectionSet:
        idx = np.asarray(index, dtype=int)
        return ProjectionSet(self.images[idx], self.y[idx], [self.patients[i] for i in idx])

    @property
    def counts(self) -> dict[str, int]:
        return {"PA": int((self.y == 0).sum()), "AP": int((self.y == 1).sum())}

    @property
    def has_both(self) -> bool:
        return min(self.counts.values()) > 0


def scope_features(model: Any, images: np.ndarray, *, batch: int = 32) -> np.ndarray:
    """``(N, D)`` features of layer :data:`FEATURE_LAYER` (what the head reads) for grey
    uint8 ``images``, as float64."""
    import keras

    from cxr_orient.modelstore import to_model_input

    extractor = keras.Model(model.input, model.get_layer(FEATURE_LAYER).output)
    parts = [
        np.asarray(
            keras.ops.convert_to_numpy(
                extractor.predict_on_batch(to_model_input(images[i : i + batch]))
            ),
            dtype=np.float64,
        )
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


@dataclass(frozen=True)
class ProjectionFit:
    """The head's weights (temperature folded in) and how they were chosen."""

    coef: np.ndarray
    bias: float
    penalty: float
    temperature: float
    threshold: float
    validation: dict[str, Any]


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y)))


def fit_projection_head(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray
) -> ProjectionFit:
    """Fit on ``(copies, N, D)`` training features (each copy of a film weighs the same)
    and choose the penalty, temperature and abstention threshold on ``(copies, M, D)``
    validation features; both sets must hold PA and AP films."""
    for name, y in (("training", train_y), ("validation", val_y)):
        if not ((y == 0).any() and (y == 1).any()):
            raise ValueError(f"the {name} patients need PA and AP frontals")
    w = np.where(train_y == 1, 0.5 / train_y.mean(), 0.5 / (1 - train_y.mean()))
    copies = len(train_x)
    y_val = np.tile(val_y, len(val_x))
    fits = {}
    for penalty in PENALTIES:
        coef, bias = logistic(
            train_x.reshape(-1, train_x.shape[-1]),
            np.tile(train_y, copies),
            np.tile(w, copies),
            penalty,
        )
        fits[penalty] = (coef, bias, _nll((val_x @ coef + bias).reshape(-1), y_val))
    penalty = min(fits, key=lambda k: fits[k][2])
    coef, bias, _ = fits[penalty]
    temperature = fit_temperature_1d((val_x @ coef + bias).reshape(-1), y_val)
    coef, bias = coef / temperature, bias / temperature
    p_val = sigmoid((val_x @ coef + bias).reshape(-1))
    threshold = FALLBACK_THRESHOLD
    for c in np.arange(0.5, FALLBACK_THRESHOLD, 0.01):
        answered = np.maximum(p_val, 1 - p_val) >= c
        if answered.any() and balanced_accuracy(y_val[answered], p_val[answered]) >= (
            PROJECTION_TARGET
        ):
            threshold = float(round(c, 2))
            break
    return ProjectionFit(
        coef=coef,
        bias=float(bias),
        penalty=penalty,
        temperature=temperature,
        threshold=threshold,
        validation=projection_figures(y_val, p_val, threshold),
    )


def projection_figures(
    y: np.ndarray, p_ap: np.ndarray, threshold: float, *, stated: np.ndarray | None = None
) -> dict[str, Any]:
    """The figures of one model's PA/AP answers on labelled frontals: ``coverage`` (the
    share given a projection: confidence at least ``threshold``, or ``stated`` when the
    caller has the answers), ``balanced_accuracy`` of those stated (None when none is),
    ``balanced_accuracy_all`` (every frontal at p_ap 0.5), and the counts."""
    y, p_ap = np.asarray(y, dtype=np.float64), np.asarray(p_ap, dtype=np.float64)
    answered = (
        np.maximum(p_ap, 1 - p_ap) >= threshold if stated is None else np.asarray(stated, bool)
    )
    return {
        "n": int(y.size),
        "n_pa": int((y == 0).sum()),
        "n_ap": int((y == 1).sum()),
        "stated": int(answered.sum()),
        "coverage": _defined(float(answered.mean()) if y.size else math.nan),
        "balanced_accuracy": _defined(balanced_accuracy(y[answered], p_ap[answered])),
        "balanced_accuracy_all": _defined(balanced_accuracy(y, p_ap)),
        "threshold": float(threshold),
    }


def _defined(value: float) -> float | None:
    """None for NaN: the figures are stored as JSON (model events, cards)."""
    return None if math.isnan(value) else value


def predict_in_batches(classifier: Any, images: np.ndarray, *, batch: int = 32) -> list[Any]:
    """``classifier``'s answers (:meth:`cxr_orient.modelstore.Classifier.predict`) to
    ``images``, ``batch`` at a time."""
    return [
        a for i in range(0, len(images), batch) for a in classifier.predict(images[i : i + batch])
    ]


def predicted_projection_figures(
    classifier: Any, frontals: ProjectionSet, *, batch: int = 32
) -> dict[str, Any] | None:
    """:func:`projection_figures` of ``classifier``'s answers (the one prediction rule,
    :meth:`cxr_orient.modelstore.Classifier.predict`: a film it calls lateral, or is not
    sure of, is given no projection); None for a model without a PA/AP head."""
    answers = predict_in_batches(classifier, frontals.images, batch=batch)
    if not answers or any(a.p_ap is None for a in answers):
        return None
    return projection_figures(
        frontals.y,
        np.array([a.p_ap for a in answers]),
        float(classifier.card.projection_threshold or 0.5),
        stated=np.array([a.projection is not None for a in answers]),
    )
