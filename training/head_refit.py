"""The nightly retrain's candidate when the model in service has a PA/AP head: that very
model, weight for weight, with its PA/AP head refitted on the labelled frontals.

Training a new view network would lose the heads on top of the old trunk (which way up,
unusual image, chest-or-not, PA/AP), and the gate refuses a candidate that lacks a head
the model in service has. The PA/AP head reads frozen, exactly invariant features, so
it can be refitted on its own from the projections reviewers give (``labels.projection``)
and, with ``cxr-orient retrain --data``, a training folder whose manifest has a ``view``
column (the development data): every other answer of the candidate is the serving
model's, and the gate compares the two on the view (a tie) and on PA/AP.

Patients are split as the rest of retraining is: the fixed evaluation split
(:func:`training.lifecycle.in_eval_split`) is held out for the gate; the other
patients are split 80/20 into training and validation, stratified by whether a patient
has an AP film. The penalty, temperature and abstention threshold are chosen on the
validation patients only (:func:`training.projection.fit_projection_head`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.augment import augmented_copies
from training.data import grouped_stratified_split
from training.gate import heads_of
from training.projection import (
    HEAD_LAYER,
    ProjectionSet,
    fit_projection_head,
    predicted_projection_figures,
    scope_features,
)
from training.report import write_json

__all__ = [
    "AUGMENTED_COPIES",
    "REFIT_PROJECTION",
    "VALIDATION_FRACTION",
    "RefitRun",
    "has_projection_head",
    "projection_set",
    "refit_name",
    "refit_projection_candidate",
    "split_frontals",
]

#: The retrain's ``architecture`` that asks for this candidate.
REFIT_PROJECTION = "refit-projection"
#: Each training and validation film as stored plus this many augmented copies, less
#: one (the recipe's 5: crops, zooms, contrast, noise; turns change nothing).
AUGMENTED_COPIES = 5
#: Share of the non-evaluation patients whose frontals choose penalty and threshold.
VALIDATION_FRACTION = 0.2


def refit_name(base: str, stamp: str) -> str:
    """``compact-invariant-64-v4-pa-ap-<stamp>``: the base's name (a refit of a refit
    keeps the first base's) and when."""
    return f"{re.sub(r'-pa-ap-[0-9]{8}-[0-9]{6}$', '', base)}-pa-ap-{stamp}"


def has_projection_head(architecture: str) -> bool:
    return "PA/AP" in heads_of(architecture)


def projection_set(
    images: Sequence[np.ndarray], projections: Sequence[str | None], patients: Sequence[str]
) -> ProjectionSet:
    """The films whose projection is known (``PA``/``AP``), as a :class:`ProjectionSet`."""
    keep = [i for i, p in enumerate(projections) if p in ("PA", "AP")]
    size = images[0].shape if len(images) else (0, 0)
    return ProjectionSet(
        images=np.stack([images[i] for i in keep]) if keep else np.zeros((0, *size), np.uint8),
        y=np.array([float(projections[i] == "AP") for i in keep]),
        patients=[patients[i] for i in keep],
    )


def split_frontals(
    frontals: ProjectionSet, *, held_out: Sequence[bool], seed: int
) -> tuple[ProjectionSet, ProjectionSet, ProjectionSet]:
    """``(train, validation, held out)`` by patient: ``held_out`` marks the fixed
    evaluation split's films, the rest are split by :data:`VALIDATION_FRACTION`."""
    mask = np.asarray(held_out, dtype=bool)
    rest = np.flatnonzero(~mask)
    inner = grouped_stratified_split(
        frontals.y[rest].astype(int),
        [frontals.patients[i] for i in rest],
        fractions=(1.0 - VALIDATION_FRACTION, VALIDATION_FRACTION, 0.0),
        seed=seed,
    )
    return (
        frontals.subset(rest[inner.train]),
        frontals.subset(rest[inner.val]),
        frontals.subset(np.flatnonzero(mask)),
    )


@dataclass
class RefitRun:
    checkpoint: Path
    report: dict[str, Any]


def _copies_features(model: Any, films: ProjectionSet, seed: int) -> np.ndarray:
    stacked = augmented_copies(films.images, AUGMENTED_COPIES, seed)
    return scope_features(model, stacked).reshape(AUGMENTED_COPIES, len(films), -1)


#: View figures of the base card that stay true (the view weights are the base's).
_VIEW_METRICS = ("held_out_test", "robustness", "validation_16_views")


def refit_projection_candidate(
    base_checkpoint: Path,
    *,
    base_sha256: str,
    train: ProjectionSet,
    validation: ProjectionSet,
    held_out: ProjectionSet,
    name: str,
    out_dir: Path,
    seed: int,
    extra_training: dict[str, Any] | None = None,
) -> RefitRun:
    """The base checkpoint with its ``projection`` layer refitted, saved as ``name`` in
    ``out_dir`` with its card (the base's, with the new head's threshold and figures)
    and ``<name>-report/projection.json``. ``held_out`` is only measured, for the report
    (both models at their cards' thresholds); the gate measures again, as the service
    would answer."""
    from cxr_orient.modelstore import Classifier, load_checkpoint, read_card, save_checkpoint

    started = time.monotonic()
    base_card = read_card(base_checkpoint)
    model = load_checkpoint(base_checkpoint, expected_sha256=base_sha256)
    base_figures = predicted_projection_figures(Classifier(model, base_card), held_out)
    fit = fit_projection_head(
        _copies_features(model, train, seed),
        train.y,
        _copies_features(model, validation, seed + 1),
        validation.y,
    )
    model.get_layer(HEAD_LAYER).set_weights(
        [fit.coef[:, None].astype(np.float32), np.array([fit.bias], dtype=np.float32)]
    )
    card = dataclasses.replace(base_card, name=name, sha256="", projection_threshold=fit.threshold)
    report: dict[str, Any] = {
        "base": base_card.name,
        "base_sha256": base_sha256,
        "rule": "class-balanced L2 logistic on frozen scope_features; penalty and "
        "temperature by validation-patient NLL; threshold the lowest confidence whose "
        "answered validation frontals reach the target balanced accuracy",
        "penalty": fit.penalty,
        "temperature": fit.temperature,
        "threshold": fit.threshold,
        "augmented_copies": AUGMENTED_COPIES,
        "frontals": {
            "train": {**train.counts, "patients": len(set(train.patients))},
            "validation": {**validation.counts, "patients": len(set(validation.patients))},
            "held_out": {**held_out.counts, "patients": len(set(held_out.patients))},
        },
        "validation": fit.validation,
        "held_out": {
            "candidate": predicted_projection_figures(Classifier(model, card), held_out),
            base_card.name: base_figures,
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    card.metrics = {
        **{k: base_card.metrics[k] for k in _VIEW_METRICS if k in base_card.metrics},
        "projection_refit": report,
    }
    card.training = {
        **base_card.training,
        "projection_refit": {
            "recipe": "training.head_refit (cxr-orient retrain)",
            "base": base_card.name,
            "seed": seed,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        **(extra_training or {}),
    }
    checkpoint = save_checkpoint(model, card, out_dir)
    write_json(out_dir / f"{name}-report" / "projection.json", report)
    return RefitRun(checkpoint, report)
