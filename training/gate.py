"""The two rules that choose a model, side by side.

- :func:`gate`: whether a retrained candidate replaces the model in service. Judged on
  the fixed evaluation split (held-out patients) with the same figures for both models;
  used by :func:`training.lifecycle.challenge` for the nightly retrain and
  ``cxr-orient register --challenge``.
- :func:`selection_key`: which of several candidates trained in one go (seeds,
  architectures) becomes the release's shipped model. Judged on the validation patients
  only, over all 16 dihedral x inversion views; used by the release recipes
  (``recipes/common/release.py``, e.g. ``python -m recipes.compact_invariant_64_v1``).

They differ on purpose: the gate compares against a model that is already serving and
must beat it by more than noise on patients no candidate was chosen on; the selection
ranks siblings before any of them serves. A change to one is a change to how models are
chosen and should be weighed against the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ARCHITECTURE_HEADS",
    "ECE_TOLERANCE",
    "PROJECTION_FIGURES",
    "SCOPE_FALSE_ALARM_CAP",
    "SCOPE_FALSE_ALARM_MARGIN",
    "GateDecision",
    "gate",
    "heads_of",
    "selection_key",
]

#: ECE differences smaller than this are noise on evaluation sets of this size: the gate
#: tolerates that much worse, and does not count that much better as a reason to promote.
ECE_TOLERANCE = 0.01


#: The answers beyond the view each architecture's heads give: what the service would stop
#: giving if the model in service were replaced by one without them, or start giving with
#: one that has more (the gate weighs both: ``lost_heads``, ``gained_heads``).
ARCHITECTURE_HEADS: dict[str, frozenset[str]] = {
    "compact_invariant_64_heads": frozenset({"orientation", "unusual-image"}),
    "compact_invariant_64_heads2": frozenset({"orientation", "unusual-image"}),
    "compact_invariant_64_heads3": frozenset(
        {"orientation", "unusual-image", "chest-or-not", "PA/AP"}
    ),
}


def heads_of(architecture: str) -> frozenset[str]:
    """The heads ``architecture`` has beyond the view (none for a view-only network)."""
    return ARCHITECTURE_HEADS.get(architecture, frozenset())


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]
    candidate: dict[str, float]
    active: dict[str, float] | None
    #: Both models' PA/AP figures on the held-out labelled frontals
    #: (:func:`training.projection.projection_figures`), when both have the head.
    candidate_projection: dict[str, Any] | None = None
    active_projection: dict[str, Any] | None = None
    #: Both models' chest-or-not answers on the held-out chest and not-chest films
    #: (:func:`training.scope_refit.predicted_scope_figures`), when both have the head.
    candidate_scope: dict[str, Any] | None = None
    active_scope: dict[str, Any] | None = None


#: The PA/AP figures the gate compares, higher is better for each.
PROJECTION_FIGURES = ("coverage", "balanced_accuracy", "balanced_accuracy_all")


def _projection_comparison(
    cand: Mapping[str, Any] | None, act: Mapping[str, Any] | None
) -> tuple[list[str], list[str]]:
    """``(worse, better)``: the PA/AP figures on which the candidate is worse or better
    than the active model. Empty when either lacks the head or the held-out frontals
    lack PA or AP films (nothing to compare on). The balanced accuracy of stated
    projections is compared only when both models state at least one."""
    if cand is None or act is None or not (cand.get("n_pa") and cand.get("n_ap")):
        return [], []
    worse, better = [], []
    for key in PROJECTION_FIGURES:
        if cand.get(key) is None or act.get(key) is None:
            continue
        c, a = float(cand[key]), float(act[key])
        if c < a:
            worse.append(f"PA/AP {key.replace('_', ' ')} {c:.4f} < {a:.4f}")
        elif c > a:
            better.append(f"PA/AP {key.replace('_', ' ')} {c:.4f} > {a:.4f}")
    return worse, better


#: Chest films of the evaluation split a candidate may flag as unusual beyond those the
#: active model flags: this share of them (rounded up; at least one film) ...
SCOPE_FALSE_ALARM_MARGIN = 0.005
#: ... and never more than this share of them in all, or one film where that share of a
#: small split is less than one (unless no more than the active model flags: a candidate
#: is not refused for the active model's own false alarms).
SCOPE_FALSE_ALARM_CAP = 0.01


def _scope_comparison(
    cand: Mapping[str, Any] | None, act: Mapping[str, Any] | None
) -> tuple[list[str], list[str]]:
    """``(worse, better)`` on the chest-or-not answers of the evaluation split. Worse:
    more chest films flagged than the active model beyond the margin or the cap, or
    fewer not-chest films detected. Better: more not-chest films detected, or fewer
    chest films flagged. Empty when either model lacks the head."""
    if cand is None or act is None:
        return [], []
    worse, better = [], []
    n_chest = int(cand.get("n_chest") or 0)
    c_flag, a_flag = int(cand.get("chest_flagged") or 0), int(act.get("chest_flagged") or 0)
    if n_chest and c_flag > a_flag:
        margin = max(1, math.ceil(SCOPE_FALSE_ALARM_MARGIN * n_chest))
        if c_flag > a_flag + margin:
            worse.append(
                f"chest films flagged unusual {c_flag}/{n_chest} > {a_flag} + {margin} "
                "(the active model's, plus the margin)"
            )
        elif c_flag > max(1.0, SCOPE_FALSE_ALARM_CAP * n_chest):
            worse.append(
                f"chest films flagged unusual {c_flag}/{n_chest} > "
                f"{SCOPE_FALSE_ALARM_CAP:.0%} (active {a_flag})"
            )
    elif n_chest and c_flag < a_flag:
        better.append(f"chest films flagged unusual {c_flag}/{n_chest} < {a_flag}")
    n_non = int(cand.get("n_not_chest") or 0)
    c_det, a_det = int(cand.get("not_chest_detected") or 0), int(act.get("not_chest_detected") or 0)
    if n_non and c_det < a_det:
        worse.append(f"not-chest films detected {c_det}/{n_non} < {a_det}")
    elif n_non and c_det > a_det:
        better.append(f"not-chest films detected {c_det}/{n_non} > {a_det}")
    return worse, better


def _figures(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in ("balanced_accuracy", "lateral_recall", "ece")}


def gate(
    candidate: Mapping[str, Any],
    active: Mapping[str, Any] | None,
    *,
    lost_heads: Sequence[str] = (),
    gained_heads: Sequence[str] = (),
    candidate_projection: Mapping[str, Any] | None = None,
    active_projection: Mapping[str, Any] | None = None,
    candidate_scope: Mapping[str, Any] | None = None,
    active_scope: Mapping[str, Any] | None = None,
) -> GateDecision:
    """Promote only a candidate that beats the active model on the same evaluation set.
    (Choosing among sibling candidates before release is :func:`selection_key`.)

    Never one that lacks a head the active model has (``lost_heads``: e.g. a view-only
    retrain against a model that also says which way up and flags unusual images).
    A candidate that ties the active model on the view and adds heads
    (``gained_heads``: e.g. a release's model that keeps the view network weight for
    weight and adds chest-or-not and PA/AP) is promoted: it gives every answer the
    active model gives, as well, and more.

    It must be no worse in balanced accuracy and lateral recall, no worse in
    calibration (ECE, within ``ECE_TOLERANCE``), and strictly better in balanced
    accuracy or lateral recall, or, with both tied, better calibrated by more than
    ``ECE_TOLERANCE``: the ECE of an evaluation set of a few hundred images moves by
    that much between equally good models, and a tie-break on noise would swap the model
    in service night after night (one 2026-11-27 candidate would have replaced the
    shipped model on an ECE 0.0012 lower, then missed a lateral on the held-out patients
    that the model in service gets right).

    PA/AP (``candidate_projection``, ``active_projection``: both models' figures on the
    held-out labelled frontals, when both have the head and those frontals hold PA and
    AP films): the candidate must be no worse in coverage, in the balanced accuracy of
    the projections it states, and in the balanced accuracy of every frontal at p_ap
    0.5; being better in one of them, with the view tied, is a reason to promote (the
    nightly refit of the PA/AP head: the same view weights, a better head).

    Chest or not (``candidate_scope``, ``active_scope``: both models' answers, as the
    service gives them, on the evaluation split's chest films and the films its
    reviewers labelled not_chest, when both have the head): the candidate may flag no
    more chest films as unusual than the active model plus
    :data:`SCOPE_FALSE_ALARM_MARGIN` of them (at least one film), and no more than
    :data:`SCOPE_FALSE_ALARM_CAP` of them (at least one film: 1 % of a split of 57 chest
    films is none) unless it flags no more than the active model;
    it must detect at least as many not-chest films. Detecting more, or flagging fewer
    chest films, with the view tied, is a reason to promote (the nightly refit of the
    chest-or-not head on a site's not_chest labels).
    """
    cand = _figures(candidate)
    proj = (
        dict(candidate_projection) if candidate_projection is not None else None,
        dict(active_projection) if active_projection is not None else None,
        dict(candidate_scope) if candidate_scope is not None else None,
        dict(active_scope) if active_scope is not None else None,
    )
    if lost_heads:
        # A better view figure does not pay for answers the service would stop giving.
        return GateDecision(
            False,
            [f"lacks the active model's {', '.join(lost_heads)} head(s)"],
            cand,
            _figures(active) if active is not None else None,
            *proj,
        )
    if any(math.isnan(v) for v in cand.values()):
        return GateDecision(
            False,
            ["candidate figures undefined (evaluation set lacks a class?)"],
            cand,
            None,
            *proj,
        )
    if active is None:
        return GateDecision(True, ["no active model to compare with"], cand, None, *proj)
    act = _figures(active)
    projection_worse, projection_better = _projection_comparison(*proj[:2])
    scope_worse, scope_better = _scope_comparison(*proj[2:])
    reasons: list[str] = []
    if cand["balanced_accuracy"] < act["balanced_accuracy"]:
        reasons.append(
            f"balanced accuracy {cand['balanced_accuracy']:.4f} < {act['balanced_accuracy']:.4f}"
        )
    if cand["lateral_recall"] < act["lateral_recall"]:
        reasons.append(f"lateral recall {cand['lateral_recall']:.4f} < {act['lateral_recall']:.4f}")
    if cand["ece"] > act["ece"] + ECE_TOLERANCE:
        reasons.append(
            f"calibration worse: ECE {cand['ece']:.4f} > {act['ece']:.4f} + {ECE_TOLERANCE}"
        )
    reasons += projection_worse + scope_worse
    if reasons:
        return GateDecision(False, reasons, cand, act, *proj)
    better = (
        cand["balanced_accuracy"] > act["balanced_accuracy"]
        or cand["lateral_recall"] > act["lateral_recall"]
        or cand["ece"] < act["ece"] - ECE_TOLERANCE
    )
    if not better and gained_heads:
        return GateDecision(
            True,
            [f"ties the active model on the view and adds the {', '.join(gained_heads)} head(s)"],
            cand,
            act,
            *proj,
        )
    if not better and projection_better:
        return GateDecision(
            True,
            [
                "ties the active model on the view and is better on PA/AP: "
                + ", ".join(projection_better),
                *scope_better,
            ],
            cand,
            act,
            *proj,
        )
    if not better and scope_better:
        return GateDecision(
            True,
            [
                "ties the active model on the view and is better on chest or not: "
                + ", ".join(scope_better)
            ],
            cand,
            act,
            *proj,
        )
    if not better:
        return GateDecision(False, ["ties the active model: nothing to gain"], cand, act, *proj)
    return GateDecision(
        True, ["beats the active model", *projection_better, *scope_better], cand, act, *proj
    )


def selection_key(validation: dict[str, Any]) -> tuple[float, float, float]:
    """Order candidates by validation over the 16 views: lateral recall, balanced accuracy,
    then NLL after each one's temperature scaling (lower is better; uncalibrated NLL for
    cards that predate it); larger keys are better. (The gate, :func:`gate`, decides
    whether a candidate replaces the model in service.)"""
    nll = validation.get("nll_calibrated_mean", validation.get("nll_mean", float("inf")))
    return (
        float(validation.get("lateral_recall_mean", 0.0)),
        float(validation.get("balanced_accuracy_mean", 0.0)),
        -float(nll),
    )
