"""The chest-or-not head's anchored refit (training.scope_refit) on synthetic features:
the anchor holds, a new direction is learnt when the films teach it, the threshold rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.gate import gate
from training.scope_refit import (
    CHEST_QUANTILE,
    ScopeSet,
    anchored_logistic,
    choose_logit_threshold,
    fit_scope_head,
    split_scope,
)

D = 12


def _base() -> tuple[np.ndarray, float]:
    """A base head that reads feature 0 only (the development body parts)."""
    coef = np.zeros(D)
    coef[0] = 3.0
    return coef, -1.5


def _films(rng: np.random.Generator, n_chest: int, n_non: int, copies: int = 3):
    """``(copies, N, D)`` features and labels: chest films low on feature 0 and 1, the
    site's not-chest films (a new body part) low on feature 0 like chest films, high on
    feature 1 only (a direction the base never learnt)."""
    chest = rng.normal(0.0, 1.0, (copies, n_chest, D))
    non = rng.normal(0.0, 1.0, (copies, n_non, D))
    non[..., 1] += 6.0
    x = np.concatenate([chest, non], axis=1)
    y = np.concatenate([np.zeros(n_chest), np.ones(n_non)])
    return x, y


def test_a_huge_lambda_keeps_the_base_weights() -> None:
    rng = np.random.default_rng(0)
    x, y = _films(rng, 200, 30)
    base_coef, base_bias = _base()
    coef, _ = anchored_logistic(x.reshape(-1, D), np.tile(y, 3), base_coef, base_bias, 1e9)
    np.testing.assert_allclose(coef, base_coef, atol=1e-4)


def test_a_small_lambda_learns_the_sites_direction() -> None:
    rng = np.random.default_rng(1)
    x, y = _films(rng, 200, 30)
    base_coef, base_bias = _base()
    coef, bias = anchored_logistic(x.reshape(-1, D), np.tile(y, 3), base_coef, base_bias, 1e-3)
    assert coef[1] > 1.0 > abs(coef[2])  # the new direction, not noise
    z = x.reshape(-1, D) @ coef + bias
    labels = np.tile(y, 3)
    assert z[labels == 1].min() > np.quantile(z[labels == 0], 0.99)


def test_anchor_pulls_towards_the_base_not_towards_zero() -> None:
    """The same data and penalty, two anchors: the fits differ in the anchor's direction
    (a plain L2 fit would not depend on the base at all)."""
    rng = np.random.default_rng(2)
    x, y = _films(rng, 100, 20)
    base_coef, base_bias = _base()
    far = base_coef.copy()
    far[5] = 4.0
    near_fit, _ = anchored_logistic(x.reshape(-1, D), np.tile(y, 3), base_coef, base_bias, 1.0)
    far_fit, _ = anchored_logistic(x.reshape(-1, D), np.tile(y, 3), far, base_bias, 1.0)
    assert far_fit[5] > near_fit[5] + 1.0


def test_fit_chooses_a_lambda_that_detects_the_validation_films() -> None:
    rng = np.random.default_rng(3)
    train_x, train_y = _films(rng, 300, 40)
    val_x, val_y = _films(rng, 150, 15)
    base_coef, base_bias = _base()
    base_chest = val_x[:, val_y == 0] @ base_coef + base_bias
    base_non = val_x[:, val_y == 1] @ base_coef + base_bias
    base_threshold = choose_logit_threshold(base_chest)
    assert (base_non > base_threshold).mean() < 0.2  # the base misses the new part
    fit = fit_scope_head(train_x, train_y, val_x, val_y, base_coef, base_bias)
    assert not math.isinf(fit.lam)
    assert fit.validation["not_chest_detected_all_copies"]["rate"] > 0.9
    assert fit.validation["chest_flagged_stored"]["rate"] <= 0.01
    assert fit.validation["base_detected_at_budget"] < 0.2


def test_fit_keeps_the_base_when_the_films_teach_nothing() -> None:
    """Site labels that the base already separates: ties go to the base (lambda inf)."""
    rng = np.random.default_rng(4)
    train_x, train_y = _films(rng, 200, 20)
    val_x, val_y = _films(rng, 100, 10)
    for x, y in ((train_x, train_y), (val_x, val_y)):
        x[:, y == 1, 0] += 8.0  # the base's own direction
        x[:, y == 1, 1] -= 6.0
    base_coef, base_bias = _base()
    fit = fit_scope_head(train_x, train_y, val_x, val_y, base_coef, base_bias)
    assert math.isinf(fit.lam)
    np.testing.assert_array_equal(fit.coef, base_coef)


def test_the_threshold_is_the_quantile_but_flags_at_most_one_percent_of_stored_films() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(size=(5, 400))
    t = choose_logit_threshold(z)
    assert t == pytest.approx(np.quantile(z, CHEST_QUANTILE))
    assert (z[0] > t).mean() <= 0.01
    # The stored films' tail heavier than the copies': the threshold rises to them.
    z2 = z.copy()
    z2[0, :20] = 50.0 + np.arange(20)
    t2 = choose_logit_threshold(z2)
    assert t2 > np.quantile(z2, CHEST_QUANTILE)
    assert (z2[0] > t2).sum() == 4  # floor(1 % of 400)
    with pytest.raises(ValueError, match="chest and not-chest"):
        fit_scope_head(z[:, :, None], np.zeros(400), z[:, :, None], np.zeros(400), np.ones(1), 0.0)


def test_split_keeps_patients_whole_and_the_eval_split_out() -> None:
    patients = [f"p{i // 2}" for i in range(100)]
    y = np.array([float(i % 10 == 2) for i in range(100)])
    films = ScopeSet(np.zeros((100, 4, 4), np.uint8), y, patients)
    held = [int(p[1:]) % 5 == 0 for p in patients]
    train, val, held_out = split_scope(films, held_out=held, seed=0)
    assert set(held_out.patients) == {p for p, h in zip(patients, held, strict=True) if h}
    assert not set(train.patients) & set(val.patients)
    assert not (set(train.patients) | set(val.patients)) & set(held_out.patients)
    assert len(train) + len(val) + len(held_out) == 100
    assert val.counts["not_chest"] > 0 and train.counts["not_chest"] > 0


def _view() -> dict[str, float]:
    return {"balanced_accuracy": 0.98, "lateral_recall": 1.0, "ece": 0.02}


def _scope(flagged: int, detected: int, n_chest: int = 400, n_non: int = 20) -> dict[str, int]:
    return {
        "n_chest": n_chest,
        "n_not_chest": n_non,
        "chest_flagged": flagged,
        "not_chest_detected": detected,
    }


@pytest.mark.parametrize(
    ("candidate", "active", "promote", "reason"),
    [
        (_scope(2, 15), _scope(2, 5), True, "not-chest films detected 15/20 > 5"),
        (_scope(4, 15), _scope(2, 5), True, "not-chest films detected"),  # within the margin
        (_scope(5, 15), _scope(2, 5), False, "chest films flagged unusual 5/400 > 2 + 2"),
        (_scope(5, 20), _scope(4, 5, n_chest=400), False, "> 1%"),  # margin ok, cap not
        (_scope(2, 4), _scope(2, 5), False, "not-chest films detected 4/20 < 5"),
        (_scope(1, 5), _scope(2, 5), True, "chest films flagged unusual 1/400 < 2"),
        (_scope(2, 5), _scope(2, 5), False, "ties the active model"),
        (_scope(9, 9), _scope(10, 5), True, "not-chest"),  # fewer than the active's own
        # A small split: 1 % of 57 is no film; one false alarm more is the least allowed.
        (_scope(1, 10, n_chest=57), _scope(0, 5, n_chest=57), True, "detected 10/20 > 5"),
        (_scope(2, 10, n_chest=57), _scope(0, 5, n_chest=57), False, "2/57 > 0 + 1"),
        (_scope(2, 10, n_chest=57), _scope(1, 5, n_chest=57), False, "2/57 > 1%"),
    ],
    ids=[
        "detects-more",
        "within-margin",
        "beyond-margin",
        "beyond-cap",
        "detects-fewer",
        "fewer-false-alarms",
        "tie",
        "active-above-cap",
        "small-split-one-more",
        "small-split-two-more",
        "small-split-over-cap",
    ],
)
def test_gate_judges_the_chest_or_not_head(
    candidate: dict[str, int], active: dict[str, int], promote: bool, reason: str
) -> None:
    decision = gate(_view(), _view(), candidate_scope=candidate, active_scope=active)
    assert decision.promote is promote, decision.reasons
    assert any(reason in r for r in decision.reasons), decision.reasons
    assert decision.candidate_scope == candidate and decision.active_scope == active


def test_gate_ignores_the_chest_or_not_head_when_a_model_lacks_it() -> None:
    assert not gate(_view(), _view(), candidate_scope=_scope(0, 20), active_scope=None).promote


def _plan(n_not_chest: int, architecture: str = "compact_invariant_64_heads3", **kw):
    """:func:`training.head_refit.refit_plan` on blank films: 40 chest films (no
    projection labels), ``n_not_chest`` not-chest films outside the evaluation split and
    2 inside (patients ``E*``)."""
    from training.head_refit import refit_plan

    img = np.zeros((8, 8), np.uint8)
    patients = [f"{'E' if i % 5 == 0 else 'P'}{i}" for i in range(40)]
    non = [f"N{i}" for i in range(n_not_chest)] + ["E-n1", "E-n2"]
    return refit_plan(
        [img] * 40,
        kw.get("projections", [None] * 40),
        patients,
        [img] * len(non),
        non,
        architecture=architecture,
        in_eval=lambda p: p.startswith("E"),
        seed=0,
    )


def test_refit_plan_says_why_each_head_is_not_refitted() -> None:
    few = _plan(4)
    assert few.projection is None and few.scope is None
    assert any("PA/AP head not refitted" in r for r in few.reasons), few.reasons
    assert any(
        "4 film(s) labelled not_chest outside the fixed evaluation split (need 10)" in r
        for r in few.reasons
    ), few.reasons
    # The evaluation split's chest and not-chest films are the gate's either way.
    assert few.scope_test is not None and few.scope_test.counts == {"chest": 8, "not_chest": 2}

    enough = _plan(12)
    assert enough.projection is None and enough.scope is not None
    train, val, held_out = enough.scope
    assert train.counts["not_chest"] + val.counts["not_chest"] == 12
    assert held_out.counts == {"chest": 8, "not_chest": 2}
    assert enough.not_chest_films == 12
    assert [r for r in enough.reasons if "chest-or-not" in r] == []

    view_only = _plan(12, architecture="compact_invariant_64")
    assert view_only.scope is None and view_only.scope_test is None
    assert any("compact_invariant_64 has none" in r for r in view_only.reasons)


@pytest.mark.slow
def test_refit_candidate_refits_both_heads_and_keeps_every_other_weight(tmp_path) -> None:
    """Both heads at once on the shipped v4 (the bundled chest films, turned and framed
    into several films each, as PA/AP frontals; pydicom-data's non-chest images): one
    checkpoint whose card and reports tell both refits, with only those layers moved."""
    import json

    from cxr_orient.imaging import load_image_file
    from cxr_orient.modelstore import load_checkpoint, read_card
    from cxr_orient.settings import SHIPPED_MODEL
    from recipes.common.nonchest import pydicom_test_images
    from training.head_refit import refit_candidate
    from training.projection import ProjectionSet
    from training.scope_refit import scope_set

    samples = SHIPPED_MODEL.parents[1] / "samples"
    films = [load_image_file(p, size=256) for p in sorted(samples.glob("study*/*.dcm"))]
    chest = [np.roll(np.rot90(f, k % 4), 9 * k, axis=k % 2) for k in range(5) for f in films]
    patients = [f"c{i}" for i in range(len(chest))]
    y = np.array([float(i % 2) for i in range(len(chest))])  # PA/AP: only the wiring

    def frontals(idx: range) -> ProjectionSet:
        return ProjectionSet(
            np.stack([chest[i] for i in idx]), y[list(idx)], [patients[i] for i in idx]
        )

    others = pydicom_test_images()
    non = [others[k] for k in sorted(others)]
    every = scope_set(chest, patients, non, [f"n{i}" for i in range(len(non))])
    thirds = [np.arange(len(every))[j::3] for j in range(3)]
    run = refit_candidate(
        SHIPPED_MODEL,
        base_sha256=read_card(SHIPPED_MODEL).sha256,
        name="v4-both",
        out_dir=tmp_path,
        seed=0,
        projection=(frontals(range(0, 16)), frontals(range(16, 24)), frontals(range(24, 30))),
        scope=(every.subset(thirds[0]), every.subset(thirds[1]), every.subset(thirds[2])),
        extra_training={"refitted": "pa-ap-scope"},
    )
    card = read_card(run.checkpoint)
    assert set(run.report) == {"projection", "scope"}
    assert card.metrics["projection_refit"]["threshold"] == card.projection_threshold
    scope = card.metrics["scope_refit"]
    assert card.training["not_chest_logit_threshold"] == scope["logit_threshold"]
    assert {"projection_refit", "scope_refit"} <= set(card.training)
    assert scope["films"]["held_out"] == every.subset(thirds[2]).counts | {
        "patients": len(set(every.subset(thirds[2]).patients))
    }
    for what in ("projection", "scope"):
        written = json.loads((tmp_path / "v4-both-report" / f"{what}.json").read_text())
        assert set(written["held_out"]) == {"candidate", "compact-invariant-64-v4"}
    new, old = load_checkpoint(run.checkpoint), load_checkpoint(SHIPPED_MODEL)
    moved = {
        layer.name
        for layer in new.layers
        if not all(
            np.array_equal(a, b)
            for a, b in zip(
                layer.get_weights(), old.get_layer(layer.name).get_weights(), strict=True
            )
        )
    }
    assert moved <= {"projection", "not_chest_logit", "scope_unusual"} and "projection" in moved
    kept = new.get_layer("scope_unusual").get_weights()[0][0]
    assert kept == old.get_layer("scope_unusual").get_weights()[0][0]
