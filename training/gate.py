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


def _figures(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in ("balanced_accuracy", "lateral_recall", "ece")}


def gate(
    candidate: Mapping[str, Any],
    active: Mapping[str, Any] | None,
    *,
    lost_heads: Sequence[str] = (),
    gained_heads: Sequence[str] = (),
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
    """
    cand = _figures(candidate)
    if lost_heads:
        # A better view figure does not pay for answers the service would stop giving.
        return GateDecision(
            False,
            [f"lacks the active model's {', '.join(lost_heads)} head(s)"],
            cand,
            _figures(active) if active is not None else None,
        )
    if any(math.isnan(v) for v in cand.values()):
        return GateDecision(
            False, ["candidate figures undefined (evaluation set lacks a class?)"], cand, None
        )
    if active is None:
        return GateDecision(True, ["no active model to compare with"], cand, None)
    act = _figures(active)
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
    if reasons:
        return GateDecision(False, reasons, cand, act)
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
        )
    if not better:
        return GateDecision(False, ["ties the active model: nothing to gain"], cand, act)
    return GateDecision(True, ["beats the active model"], cand, act)


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
