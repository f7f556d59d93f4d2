"""recipes.lateral_encodings: the summary of p_lateral over films, poses and encodings."""

from __future__ import annotations

import numpy as np
import pytest

from recipes.lateral_encodings import markdown, summarise

FILES = ["lateral/a.jpg", "lateral/b.jpg", "frontal/c.jpg"]
LABELS = np.array([1, 1, 0])


def _summary(p_lateral: np.ndarray) -> dict:
    return summarise(
        p_lateral,
        p_lateral < 0.9,
        LABELS,
        files=FILES,
        encodings=["explicit-le", "lossy"],
        review_threshold=0.9,
    )


def _p(reference: list[list[float]], lossy: list[list[float]]) -> np.ndarray:
    """``(films, poses, 2)`` from per-film, per-pose p_lateral of the two encodings."""
    return np.stack([np.array(reference), np.array(lossy)], axis=-1)


def test_margin_its_movement_flips_and_the_frontal_side() -> None:
    p = _p(
        [[0.95, 0.95], [0.99, 0.99], [0.02, 0.02]],
        [[0.97, 0.40], [0.88, 0.99], [0.02, 0.61]],
    )
    s = _summary(p)
    ref, lossy = s["explicit-le"], s["lossy"]
    assert ref["lateral_recall"]["x"] == ref["lateral_recall"]["n"] == 4
    assert ref["lateral_margin"] == 0.95 and ref["lateral_margin_moved"] == 0.0
    assert ref["flips"] == [] and ref["frontal_max_p_lateral"] == 0.02
    assert lossy["lateral_recall"]["x"] == 3
    # exact interval of 3 of 4
    assert lossy["lateral_recall"]["low"] == pytest.approx(0.19412, abs=1e-4)
    assert lossy["lateral_margin"] == 0.40
    assert lossy["lateral_margin_at"] == {"file": "lateral/a.jpg", "pose": 1}
    assert lossy["lateral_margin_moved"] == pytest.approx(0.40 - 0.95)
    assert lossy["lateral_largest_drop"] == pytest.approx(0.55)
    assert lossy["lateral_largest_rise"] == pytest.approx(0.02)
    assert lossy["laterals_under_review_threshold"] == 2
    assert lossy["laterals_needs_review"] == 2
    assert lossy["frontal_max_p_lateral"] == 0.61
    assert [(f["file"], f["pose"], f["true"]) for f in lossy["flips"]] == [
        ("lateral/a.jpg", 1, "lateral"),
        ("frontal/c.jpg", 1, "frontal"),
    ]


def test_the_table_has_a_row_per_encoding() -> None:
    p = _p([[0.95], [0.99], [0.02]], [[0.93], [0.99], [0.03]])
    info = {
        "explicit-le": {"setting": "", "ratio": 1.0, "stress": False},
        "lossy": {"setting": "quality 50", "ratio": 9.5, "stress": True},
    }
    lines = markdown(_summary(p), info).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| explicit-le | 1.0:1 | 2/2 ")
    assert lines[3] == (
        "| lossy (quality 50) (stress) | 9.5:1 | 2/2 [0.158, 1.000] | 0.9300 (-0.0200) "
        "| 0.0200 | 0 | 0.0300 | 0.0200 | 0 |"
    )
