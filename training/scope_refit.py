"""The chest-or-not head refitted on a site's own "not a chest radiograph" labels.

``compact_invariant_64_heads3`` says an image is no chest film when the logit of layer
``not_chest_logit`` (one linear unit on the frozen, exactly invariant
``scope_features``) passes its threshold, the second weight of layer ``scope_unusual``
(:class:`cxr_orient.layers.ScopeScore`). The shipped head was fitted on 1,555
development films of other body parts (``recipes/compact_invariant_64_v4.py``); a
hospital's reviewers label what it still answers (hands, knees, ...) ``not_chest``, and
this module moves the head towards those films without forgetting the base's:

- an L2 logistic regression **anchored at the base head**: the penalty is
  ``lambda * ||w - w_base||^2`` on standardised features (each feature's weight scaled
  by its training standard deviation), the bias free, started from the base; the two
  classes weigh the same, each film's stored and augmented copies alike;
- ``lambda`` from :data:`LAMBDAS` (and the base head itself, "inf") by the validation
  patients' not-chest films detected at a false-alarm budget of
  :data:`FALSE_ALARM_BUDGET` of validation chest films; ties go to the larger lambda
  (the nearer the base, the less a few films can teach it by accident);
- the logit threshold the recipe's rule: the :data:`CHEST_QUANTILE` quantile of the
  validation chest films' logits (stored and augmented), raised when needed so that at
  most :data:`MAX_CHEST_FLAGGED` of the stored validation chest films pass it;
- the unusual-image score's threshold (``scope_unusual``'s first weight) is kept.

The evaluation split's patients are never looked at here: the gate
(:func:`training.gate.gate`) judges the candidate on them with
:func:`predicted_scope_figures`, the service's own answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.augment import augmented_copies
from training.data import split_around_held_out
from training.gate import heads_of
from training.projection import predict_in_batches, scope_features

__all__ = [
    "CHEST_QUANTILE",
    "FALSE_ALARM_BUDGET",
    "LAMBDAS",
    "LOGIT_LAYER",
    "MAX_CHEST_FLAGGED",
    "MIN_NOT_CHEST",
    "SCORE_LAYER",
    "ScopeFit",
    "ScopeSet",
    "anchored_logistic",
    "choose_logit_threshold",
    "fit_scope_head",
    "has_scope_head",
    "predicted_scope_figures",
    "refit_scope_layer",
    "scope_set",
    "split_scope",
]

#: The chest-or-not head's logit, and the layer holding its threshold.
LOGIT_LAYER = "not_chest_logit"
SCORE_LAYER = "scope_unusual"
#: Not-chest films (outside the evaluation split) below which the head is not refitted.
MIN_NOT_CHEST = 10
#: Anchoring strengths tried (on standardised features, the loss a mean per class).
LAMBDAS = (0.001, 0.01, 0.1, 1.0, 10.0)
#: Share of validation chest films that may be flagged when lambda is chosen.
FALSE_ALARM_BUDGET = 0.01
#: The recipe's threshold: this quantile of validation chest films' logits.
CHEST_QUANTILE = 0.995
#: At most this share of the stored validation chest films may pass the threshold.
MAX_CHEST_FLAGGED = 0.01
#: Share of the non-evaluation patients that choose lambda and the threshold.
VALIDATION_FRACTION = 0.2


def has_scope_head(architecture: str) -> bool:
    return "chest-or-not" in heads_of(architecture)


@dataclass
class ScopeSet:
    """Films index-aligned with ``y``: 1.0 not a chest film, 0.0 a chest film."""

    images: np.ndarray  # (N, size, size) uint8
    y: np.ndarray  # (N,) float
    patients: list[str]

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: Sequence[int] | np.ndarray) -> ScopeSet:
        idx = np.asarray(index, dtype=int)
        return ScopeSet(self.images[idx], self.y[idx], [self.patients[i] for i in idx])

    @property
    def counts(self) -> dict[str, int]:
        return {"chest": int((self.y == 0).sum()), "not_chest": int((self.y == 1).sum())}

    @property
    def has_both(self) -> bool:
        return min(self.counts.values()) > 0


def scope_set(
    chest: Sequence[np.ndarray],
    chest_patients: Sequence[str],
    not_chest: Sequence[np.ndarray],
    not_chest_patients: Sequence[str],
) -> ScopeSet:
    """Chest films (view-labelled) and not-chest films as one :class:`ScopeSet`."""
    films = [*chest, *not_chest]
    return ScopeSet(
        images=np.stack(films) if films else np.zeros((0, 0, 0), np.uint8),
        y=np.concatenate([np.zeros(len(chest)), np.ones(len(not_chest))]),
        patients=[*chest_patients, *not_chest_patients],
    )


def split_scope(
    films: ScopeSet, *, held_out: Sequence[bool], seed: int
) -> tuple[ScopeSet, ScopeSet, ScopeSet]:
    """``(train, validation, held out)`` by patient: ``held_out`` marks the fixed
    evaluation split's films; the others are split by :data:`VALIDATION_FRACTION`,
    stratified by whether a patient has a not-chest film."""
    return split_around_held_out(
        films, held_out=held_out, validation_fraction=VALIDATION_FRACTION, seed=seed
    )


# --- the fit on features ------------------------------------------------------------------


def anchored_logistic(
    x: np.ndarray,
    y: np.ndarray,
    base_coef: np.ndarray,
    base_bias: float,
    lam: float,
    *,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Weighted logistic regression with the penalty ``lam * ||s * (w - base_coef)||^2``
    (``s`` the features' standard deviations: the anchor on standardised features),
    the bias unpenalised, by L-BFGS from the base. ``weights`` (default: the two classes
    weigh the same) are normalised to a mean of 1; the loss is their weighted mean."""
    from scipy.optimize import minimize

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if weights is None:
        pos = float(y.mean())
        if not 0.0 < pos < 1.0:
            raise ValueError("the anchored fit needs chest and not-chest films")
        weights = np.where(y == 1, 0.5 / pos, 0.5 / (1.0 - pos))
    weights = np.asarray(weights, np.float64)
    weights = weights / weights.mean()
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    xs = (x - mu) / sd
    anchor = np.asarray(base_coef, np.float64) * sd  # the base on standardised features
    n = len(y)

    def unpack(theta: np.ndarray) -> tuple[np.ndarray, float]:
        return theta[:-1], float(theta[-1])

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        v, c = unpack(theta)
        z = xs @ v + c
        loss = float(np.sum(weights * (np.logaddexp(0.0, z) - y * z)) / n)
        r = v - anchor
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        g = weights * (p - y) / n
        grad = np.concatenate([xs.T @ g + 2.0 * lam * r, [g.sum()]])
        return loss + lam * float(r @ r), grad

    start = np.concatenate([anchor, [base_bias + float(np.asarray(base_coef) @ mu)]])
    result = minimize(
        objective,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 2000, "gtol": 1e-9, "ftol": 1e-13},
    )
    v, c = unpack(np.asarray(result.x))
    coef = v / sd
    return coef, float(c - coef @ mu)


def _flag_limit(logits: np.ndarray, share: float) -> float:
    """The lowest threshold that at most ``share`` of ``logits`` pass (strictly above)."""
    s = np.sort(np.asarray(logits, np.float64))
    if not len(s):
        return -math.inf
    allowed = math.floor(share * len(s) + 1e-9)
    return float(s[len(s) - 1 - allowed]) if allowed < len(s) else -math.inf


def choose_logit_threshold(val_chest_logits: np.ndarray) -> float:
    """``(copies, N)`` logits of validation chest films: their :data:`CHEST_QUANTILE`
    quantile, but never below what keeps at most :data:`MAX_CHEST_FLAGGED` of the
    stored films (``[0]``) flagged (a film is flagged above the threshold)."""
    z = np.asarray(val_chest_logits, np.float64)
    z = z[None] if z.ndim == 1 else z
    return max(
        float(np.quantile(z.reshape(-1), CHEST_QUANTILE)), _flag_limit(z[0], MAX_CHEST_FLAGGED)
    )


def _rate(flags: np.ndarray) -> dict[str, Any]:
    flags = np.asarray(flags, dtype=bool).reshape(-1)
    return {
        "k": int(flags.sum()),
        "n": int(flags.size),
        "rate": float(flags.mean()) if flags.size else None,
    }


def _detection_at_budget(chest: np.ndarray, not_chest: np.ndarray) -> float:
    """Share of not-chest logits above the threshold that at most
    :data:`FALSE_ALARM_BUDGET` of the chest logits pass."""
    limit = _flag_limit(chest.reshape(-1), FALSE_ALARM_BUDGET)
    return float((not_chest.reshape(-1) > limit).mean())


@dataclass(frozen=True)
class ScopeFit:
    coef: np.ndarray
    bias: float
    lam: float  # math.inf: the base head kept
    logit_threshold: float
    validation: dict[str, Any]


def fit_scope_head(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    base_coef: np.ndarray,
    base_bias: float,
    *,
    lambdas: Sequence[float] = LAMBDAS,
) -> ScopeFit:
    """Fit on ``(copies, N, D)`` training features, choose lambda (or the base head) and
    the logit threshold on ``(copies, M, D)`` validation features; each set needs chest
    and not-chest films."""
    for name, y in (("training", train_y), ("validation", val_y)):
        if not ((y == 0).any() and (y == 1).any()):
            raise ValueError(f"the {name} patients need chest and not-chest films")
    copies = len(train_x)
    x = train_x.reshape(-1, train_x.shape[-1])
    y = np.tile(train_y, copies)
    chest, non = val_x[:, val_y == 0], val_x[:, val_y == 1]
    candidates: dict[float, tuple[np.ndarray, float]] = {
        math.inf: (np.asarray(base_coef, np.float64), float(base_bias))
    }
    for lam in lambdas:
        candidates[float(lam)] = anchored_logistic(x, y, base_coef, base_bias, float(lam))
    table: dict[str, Any] = {}
    scores: dict[float, float] = {}
    for lam, (coef, bias) in candidates.items():
        scores[lam] = _detection_at_budget(chest @ coef + bias, non @ coef + bias)
        table[str(lam)] = {
            "detected_at_budget": scores[lam],
            "moved": float(np.linalg.norm((coef - base_coef) * x.std(axis=0))),
        }
    # The most detected; on a tie the larger lambda (the base, inf, the largest).
    lam = max(scores, key=lambda k: (scores[k], k))
    coef, bias = candidates[lam]
    z_chest, z_non = chest @ coef + bias, non @ coef + bias
    threshold = choose_logit_threshold(z_chest)
    base_chest = chest @ base_coef + base_bias
    base_non = non @ base_coef + base_bias
    return ScopeFit(
        coef=coef,
        bias=bias,
        lam=lam,
        logit_threshold=threshold,
        validation={
            "lambdas": table,
            "false_alarm_budget": FALSE_ALARM_BUDGET,
            "chest_flagged_stored": _rate(z_chest[0] > threshold),
            "chest_flagged_all_copies": _rate(z_chest > threshold),
            "not_chest_detected_stored": _rate(z_non[0] > threshold),
            "not_chest_detected_all_copies": _rate(z_non > threshold),
            "base_head_at_its_threshold": None,  # filled by refit_scope_layer
            "base_detected_at_budget": _detection_at_budget(base_chest, base_non),
        },
    )


# --- on the model -------------------------------------------------------------------------


def _copies_features(model: Any, films: ScopeSet, copies: int, seed: int) -> np.ndarray:
    stacked = augmented_copies(films.images, copies, seed)
    return scope_features(model, stacked).reshape(copies, len(films), -1)


def refit_scope_layer(
    model: Any, train: ScopeSet, validation: ScopeSet, *, copies: int, seed: int
) -> dict[str, Any]:
    """Refit ``model``'s chest-or-not head in place (:func:`fit_scope_head` on its
    features, the films stored plus ``copies - 1`` augmented copies) and set the new
    logit threshold, keeping the unusual-image score's; returns what was done."""
    layer = model.get_layer(LOGIT_LAYER)
    kernel, bias = layer.get_weights()
    base_coef, base_bias = np.asarray(kernel, np.float64)[:, 0], float(bias[0])
    score_threshold, base_logit_threshold = (
        float(t) for t in model.get_layer(SCORE_LAYER).get_weights()[0]
    )
    val_x = _copies_features(model, validation, copies, seed + 1)
    fit = fit_scope_head(
        _copies_features(model, train, copies, seed),
        train.y,
        val_x,
        validation.y,
        base_coef,
        base_bias,
    )
    base_chest = val_x[:, validation.y == 0] @ base_coef + base_bias
    base_non = val_x[:, validation.y == 1] @ base_coef + base_bias
    fit.validation["base_head_at_its_threshold"] = {
        "chest_flagged_stored": _rate(base_chest[0] > base_logit_threshold),
        "not_chest_detected_stored": _rate(base_non[0] > base_logit_threshold),
        "not_chest_detected_all_copies": _rate(base_non > base_logit_threshold),
    }
    layer.set_weights(
        [fit.coef[:, None].astype(np.float32), np.array([fit.bias], dtype=np.float32)]
    )
    model.get_layer(SCORE_LAYER).fit(score_threshold, fit.logit_threshold)
    return {
        "rule": "L2 logistic anchored at the base head (lambda * ||s * (w - w_base)||^2, "
        "s the features' sd), classes equally weighted; lambda by validation not-chest "
        f"films detected at {FALSE_ALARM_BUDGET:.0%} of validation chest films flagged, "
        "ties to the larger; logit threshold the "
        f"{CHEST_QUANTILE} quantile of validation chest films' logits, at least what "
        f"flags <= {MAX_CHEST_FLAGGED:.0%} of the stored ones",
        "lambda": None if math.isinf(fit.lam) else fit.lam,
        "kept_base_head": math.isinf(fit.lam),
        "logit_threshold": fit.logit_threshold,
        "base_logit_threshold": base_logit_threshold,
        "score_threshold": score_threshold,
        "augmented_copies": copies,
        "films": {
            "train": {**train.counts, "patients": len(set(train.patients))},
            "validation": {**validation.counts, "patients": len(set(validation.patients))},
        },
        "validation": fit.validation,
    }


def predicted_scope_figures(
    classifier: Any, films: ScopeSet, *, batch: int = 32
) -> dict[str, Any] | None:
    """How ``classifier`` (the service's answers, :meth:`Classifier.predict`) flags
    ``films`` as unusual: chest films flagged (false alarms) and not-chest films
    detected. None for a model without the chest-or-not head or no film."""
    if not len(films) or not has_scope_head(classifier.card.architecture):
        return None
    answers = predict_in_batches(classifier, films.images, batch=batch)
    flagged = np.array([a.unusual for a in answers], dtype=bool)
    chest, non = flagged[films.y == 0], flagged[films.y == 1]
    return {
        "n_chest": int(chest.size),
        "n_not_chest": int(non.size),
        "chest_flagged": int(chest.sum()),
        "chest_flagged_rate": float(chest.mean()) if chest.size else None,
        "not_chest_detected": int(non.sum()),
        "not_chest_detected_rate": float(non.mean()) if non.size else None,
    }
