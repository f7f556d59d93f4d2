"""The nightly retrain's candidate when the model in service has a PA/AP or chest-or-not
head: that very model, weight for weight, with its PA/AP head refitted on the labelled
frontals and/or its chest-or-not head on the films reviewers labelled ``not_chest``
(:mod:`training.scope_refit`, :func:`refit_candidate`).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.augment import augmented_copies
from training.data import split_around_held_out
from training.gate import heads_of
from training.projection import (
    HEAD_LAYER,
    ProjectionSet,
    fit_projection_head,
    predicted_projection_figures,
    scope_features,
)
from training.report import write_json
from training.scope_refit import (
    MIN_NOT_CHEST,
    ScopeSet,
    has_scope_head,
    predicted_scope_figures,
    refit_scope_layer,
    scope_set,
    split_scope,
)

__all__ = [
    "AUGMENTED_COPIES",
    "REFIT_PROJECTION",
    "VALIDATION_FRACTION",
    "RefitPlan",
    "RefitRun",
    "has_projection_head",
    "projection_set",
    "refit_candidate",
    "refit_name",
    "refit_plan",
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


def refit_name(base: str, stamp: str, *, what: str = "pa-ap") -> str:
    """``compact-invariant-64-v4-pa-ap-<stamp>``: the base's name (a refit of a refit
    keeps the first base's), what was refitted (``pa-ap``, ``scope``, ``pa-ap-scope``)
    and when."""
    first = re.sub(r"-(pa-ap|scope|pa-ap-scope)-[0-9]{8}-[0-9]{6}$", "", base)
    return f"{first}-{what}-{stamp}"


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
    return split_around_held_out(
        frontals, held_out=held_out, validation_fraction=VALIDATION_FRACTION, seed=seed
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
    """:func:`refit_candidate` of the PA/AP head alone."""
    return refit_candidate(
        base_checkpoint,
        base_sha256=base_sha256,
        projection=(train, validation, held_out),
        name=name,
        out_dir=out_dir,
        seed=seed,
        extra_training=extra_training,
    )


def refit_candidate(
    base_checkpoint: Path,
    *,
    base_sha256: str,
    name: str,
    out_dir: Path,
    seed: int,
    projection: tuple[ProjectionSet, ProjectionSet, ProjectionSet] | None = None,
    scope: tuple[ScopeSet, ScopeSet, ScopeSet] | None = None,
    extra_training: dict[str, Any] | None = None,
) -> RefitRun:
    """The base checkpoint with its ``projection`` layer refitted (``projection``:
    train, validation, held-out frontals) and/or its chest-or-not head (``scope``:
    train, validation, held-out chest and not-chest films,
    :func:`training.scope_refit.refit_scope_layer`), saved as ``name`` in ``out_dir``
    with its card (the base's, with the new heads' thresholds and figures) and
    ``<name>-report/projection.json`` / ``scope.json``. The held-out films are only
    measured, for the report (both models at their cards' thresholds); the gate
    measures again, as the service would answer."""
    from cxr_orient.modelstore import Classifier, load_checkpoint, read_card, save_checkpoint

    if projection is None and scope is None:
        raise ValueError("nothing to refit: neither PA/AP nor chest-or-not films")
    started = time.monotonic()
    base_card = read_card(base_checkpoint)
    model = load_checkpoint(base_checkpoint, expected_sha256=base_sha256)
    base = Classifier(model, base_card)
    # The base's figures first: the heads below are refitted in place.
    base_projection = predicted_projection_figures(base, projection[2]) if projection else None
    base_scope = predicted_scope_figures(base, scope[2]) if scope else None
    card = dataclasses.replace(base_card, name=name, sha256="")
    # What stays true of the base: the view figures, and a head's refit not redone now.
    metrics = {k: base_card.metrics[k] for k in _VIEW_METRICS if k in base_card.metrics}
    for kept in ("projection_refit", "scope_refit"):
        if kept in base_card.metrics:
            metrics[kept] = base_card.metrics[kept]
    training: dict[str, Any] = dict(base_card.training)
    reports: dict[str, Any] = {}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if projection is not None:
        train, validation, held_out = projection
        fit = fit_projection_head(
            _copies_features(model, train, seed),
            train.y,
            _copies_features(model, validation, seed + 1),
            validation.y,
        )
        model.get_layer(HEAD_LAYER).set_weights(
            [fit.coef[:, None].astype(np.float32), np.array([fit.bias], dtype=np.float32)]
        )
        card.projection_threshold = fit.threshold
        reports["projection"] = {
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
        }
        training["projection_refit"] = {
            "recipe": "training.head_refit (cxr-orient retrain)",
            "base": base_card.name,
            "seed": seed,
            "trained_at": stamp,
        }
    if scope is not None:
        train_s, validation_s, held_out_s = scope
        done = refit_scope_layer(
            model, train_s, validation_s, copies=AUGMENTED_COPIES, seed=seed + 2
        )
        done["films"]["held_out"] = {
            **held_out_s.counts,
            "patients": len(set(held_out_s.patients)),
        }
        reports["scope"] = {"base": base_card.name, "base_sha256": base_sha256, **done}
        training["not_chest_logit_threshold"] = done["logit_threshold"]
        training["scope_refit"] = {
            "recipe": "training.scope_refit (cxr-orient retrain, reviewers' not_chest labels)",
            "base": base_card.name,
            "seed": seed,
            "trained_at": stamp,
        }
    refitted = Classifier(model, card)
    if projection is not None:
        reports["projection"]["held_out"] = {
            "candidate": predicted_projection_figures(refitted, projection[2]),
            base_card.name: base_projection,
        }
    if scope is not None:
        reports["scope"]["held_out"] = {
            "candidate": predicted_scope_figures(refitted, scope[2]),
            base_card.name: base_scope,
        }
    seconds = round(time.monotonic() - started, 1)
    for what, report in reports.items():
        report["seconds"] = seconds
        metrics[f"{what}_refit"] = report
    card.metrics = metrics
    card.training = {**training, **(extra_training or {})}
    checkpoint = save_checkpoint(model, card, out_dir)
    for what, report in reports.items():
        write_json(out_dir / f"{name}-report" / f"{what}.json", report)
    return RefitRun(checkpoint, reports)


@dataclass
class RefitPlan:
    """What the head refit will use: each head's (train, validation, held-out) films, or
    None with the reason in ``reasons``; and the evaluation split's films for the gate."""

    projection: tuple[ProjectionSet, ProjectionSet, ProjectionSet] | None
    scope: tuple[ScopeSet, ScopeSet, ScopeSet] | None
    held_out: ProjectionSet
    scope_test: ScopeSet | None
    reasons: list[str]
    projection_labels: int
    not_chest_films: int


def refit_plan(
    images: Sequence[np.ndarray],
    projections: Sequence[str | None],
    patients: Sequence[str],
    not_chest_images: Sequence[np.ndarray],
    not_chest_patients: Sequence[str],
    *,
    architecture: str,
    in_eval: Callable[[str], bool],
    seed: int,
) -> RefitPlan:
    """Which heads of a model of ``architecture`` the labelled films can refit: the view-
    labelled films (``images``, their ``projections`` and ``patients``) and those labelled
    not_chest; ``in_eval`` marks the fixed evaluation split's patients (held out). A head
    not refitted says why in ``reasons``."""
    reasons: list[str] = []
    frontals = projection_set(images, projections, patients)
    train, val, held_out = split_frontals(
        frontals, held_out=[in_eval(p) for p in frontals.patients], seed=seed
    )
    projection: tuple[ProjectionSet, ProjectionSet, ProjectionSet] | None = None
    if not has_projection_head(architecture):
        reasons.append(f"PA/AP head not refitted: {architecture} has none")
    elif not held_out.has_both:
        reasons.append(
            "PA/AP head not refitted: the fixed evaluation split does not yet hold PA and AP "
            f"frontals ({held_out.counts}); label more patients' projections"
        )
    elif not train.has_both:
        reasons.append(
            "PA/AP head not refitted: the training patients do not yet hold PA and AP "
            f"frontals ({train.counts}); label more patients' projections"
        )
    elif not val.has_both:
        reasons.append(
            "PA/AP head not refitted: the validation patients do not yet hold PA and AP "
            f"frontals ({val.counts})"
        )
    else:
        projection = (train, val, held_out)

    scope: tuple[ScopeSet, ScopeSet, ScopeSet] | None = None
    scope_test: ScopeSet | None = None
    outside = sum(not in_eval(p) for p in not_chest_patients)
    if not has_scope_head(architecture):
        reasons.append(f"chest-or-not head not refitted: {architecture} has none")
    else:
        everything = scope_set(images, patients, not_chest_images, not_chest_patients)
        parts = split_scope(
            everything, held_out=[in_eval(p) for p in everything.patients], seed=seed
        )
        scope_test = parts[2]
        if outside < MIN_NOT_CHEST:
            reasons.append(
                f"chest-or-not head not refitted: {outside} film(s) labelled not_chest "
                f"outside the fixed evaluation split (need {MIN_NOT_CHEST})"
            )
        elif not parts[1].has_both:
            reasons.append(
                "chest-or-not head not refitted: the validation patients hold no "
                f"{'not-chest' if parts[1].counts['chest'] else 'chest'} film "
                f"({parts[1].counts}); label more patients' films"
            )
        elif not parts[0].has_both:
            reasons.append(
                f"chest-or-not head not refitted: the training patients lack a class "
                f"({parts[0].counts})"
            )
        else:
            scope = parts
    return RefitPlan(
        projection=projection,
        scope=scope,
        held_out=held_out,
        scope_test=scope_test,
        reasons=reasons,
        projection_labels=len(frontals),
        not_chest_films=outside if scope is not None else 0,
    )
