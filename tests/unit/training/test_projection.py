"""The PA/AP head's refit rule on frozen features (training.projection)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.projection import (
    FALLBACK_THRESHOLD,
    PROJECTION_TARGET,
    fit_projection_head,
    projection_figures,
    projection_of_view,
    read_projection_manifest,
)


def _features(rng: np.random.Generator, y: np.ndarray, copies: int, shift: float) -> np.ndarray:
    """``(copies, N, 8)`` features whose first dimension moves with the class."""
    x = rng.normal(size=(copies, len(y), 8))
    x[..., 0] += shift * (2 * y - 1)
    return x


def test_the_threshold_is_chosen_on_validation_to_reach_the_target() -> None:
    rng = np.random.default_rng(0)
    y_train, y_val = np.tile([0.0, 1.0], 40), np.tile([0.0, 1.0], 30)
    fit = fit_projection_head(
        _features(rng, y_train, 3, 1.0), y_train, _features(rng, y_val, 3, 1.0), y_val
    )
    assert fit.threshold < FALLBACK_THRESHOLD
    assert fit.validation["balanced_accuracy"] >= PROJECTION_TARGET
    assert 0 < fit.validation["coverage"] < 1


def test_features_that_say_nothing_state_almost_nothing() -> None:
    rng = np.random.default_rng(1)
    y_train, y_val = np.tile([0.0, 1.0], 40), np.tile([0.0, 1.0], 30)
    fit = fit_projection_head(
        _features(rng, y_train, 3, 0.0), y_train, _features(rng, y_val, 3, 0.0), y_val
    )
    assert fit.validation["coverage"] <= 0.05


def test_a_fit_needs_pa_and_ap_on_both_sides() -> None:
    rng = np.random.default_rng(2)
    y = np.zeros(10)
    with pytest.raises(ValueError, match="PA and AP"):
        fit_projection_head(_features(rng, y, 1, 1.0), y, _features(rng, y, 1, 1.0), y)


def test_figures_of_stated_and_all_frontals() -> None:
    y = np.array([0.0, 0.0, 1.0, 1.0])
    p_ap = np.array([0.05, 0.6, 0.95, 0.4])
    figures = projection_figures(y, p_ap, 0.9)
    assert figures["stated"] == 2 and figures["coverage"] == 0.5
    assert figures["balanced_accuracy"] == 1.0
    assert figures["balanced_accuracy_all"] == 0.5
    assert projection_figures(y, np.full(4, 0.5), 0.81)["balanced_accuracy"] is None


def test_projection_from_a_manifest_view_column(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "class,view,file,patientid\n"
        "frontal,PA,frontal/a.jpg,1\nfrontal,AP Supine,frontal/b.jpg,2\n"
        "frontal,AP,frontal/c.jpg,3\nlateral,L,lateral/d.jpg,4\n",
        encoding="utf-8",
    )
    assert read_projection_manifest(manifest) == {
        "frontal/a.jpg": "PA",
        "frontal/b.jpg": "AP",
        "frontal/c.jpg": "AP",
    }
    assert projection_of_view("L") is None
    no_view = tmp_path / "plain.csv"
    no_view.write_text("file,patientid\nfrontal/a.jpg,1\n", encoding="utf-8")
    assert read_projection_manifest(no_view) == {}
