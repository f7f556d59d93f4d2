"""The acceptance statistics and the sampler, as pure functions: exact intervals against
published Clopper-Pearson values, the sample-size rules, the stratified draw (every
stratum present, sizes, reproducible by seed) and the thresholds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cxr_orient.acceptance import (
    Candidate,
    ThresholdError,
    clopper_pearson,
    draw,
    load_requirements,
    parse_requirement,
    size_for_half_width,
    size_for_lower_bound,
    strata_of,
)
from cxr_orient.acceptance.thresholds import evaluate


@pytest.mark.parametrize(
    ("x", "n", "low", "high"),
    [
        # R's binom.test(x, n)$conf.int, and the closed forms at x = 0 (upper bound
        # 1 - 0.025 ** (1/n)) and x = n (lower bound 0.025 ** (1/n)).
        (5, 10, 0.187086, 0.812914),
        (95, 100, 0.887165, 0.983568),
        (0, 20, 0.0, 1 - 0.025 ** (1 / 20)),
        (10, 10, 0.025 ** (1 / 10), 1.0),
    ],
    ids=lambda v: str(v),
)
def test_clopper_pearson_matches_known_values(x: int, n: int, low: float, high: float) -> None:
    found = clopper_pearson(x, n)
    assert found.value == x / n
    assert found.low == pytest.approx(low, abs=1e-6)
    assert found.high == pytest.approx(high, abs=1e-6)


def _bounds(x: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    found = clopper_pearson(x, n, confidence)
    assert found.low is not None and found.high is not None
    return found.low, found.high


def _tail_at_least(x: int, n: int, p: float) -> float:
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(x, n + 1))


@pytest.mark.parametrize(("x", "n"), [(81, 263), (15, 148), (1, 29), (197, 200)], ids=str)
def test_clopper_pearson_is_the_binomial_tail_inversion(x: int, n: int) -> None:
    """The definition, summed term by term: at the lower bound P(X >= x) = 2.5 %, at the
    upper bound P(X <= x) = 2.5 %."""
    low, high = _bounds(x, n)
    assert _tail_at_least(x, n, low) == pytest.approx(0.025, abs=1e-9)
    assert 1 - _tail_at_least(x + 1, n, high) == pytest.approx(0.025, abs=1e-9)


def test_clopper_pearson_edges() -> None:
    assert clopper_pearson(0, 0).value is None
    # x = n: the lower bound is (alpha / 2) ** (1 / n), the upper one 1.
    assert clopper_pearson(50, 50).low == pytest.approx(0.025 ** (1 / 50))
    assert _bounds(3, 7, 0.99)[0] < _bounds(3, 7, 0.95)[0]
    for bad in ((-1, 3), (4, 3)):
        with pytest.raises(ValueError):
            clopper_pearson(*bad)


def test_sample_size_rules() -> None:
    # With every film right, the lower bound is (alpha/2) ** (1/n): n >= ln 0.025 / ln L.
    assert size_for_lower_bound(1.0, 0.98) == math.ceil(math.log(0.025) / math.log(0.98))
    n = size_for_lower_bound(0.995, 0.98)
    assert _bounds(round(n * 0.995), n)[0] >= 0.98
    assert _bounds(round((n - 1) * 0.995), n - 1)[0] < 0.98
    n = size_for_half_width(0.9, 0.05)
    low, high = _bounds(round(n * 0.9), n)
    assert max(0.9 - low, high - 0.9) <= 0.05 + 1e-9
    assert size_for_half_width(0.9, 0.05) < size_for_half_width(0.9, 0.03)
    with pytest.raises(ValueError):
        size_for_lower_bound(0.97, 0.98)


def _films(n: int) -> list[Candidate]:
    """n answers: a tenth lateral, a few header disagreements, low confidence and unusual
    ones, two modalities, three devices (one unknown)."""
    return [
        Candidate(
            instance_id=i + 1,
            prediction_id=100 + i,
            label="lateral" if i % 10 == 0 else "frontal",
            needs_review=i % 13 == 0 or i % 37 == 0,
            review_reason=(
                "low_confidence" if i % 13 == 0 else "unusual_image" if i % 37 == 0 else None
            ),
            header_agrees=False if i % 17 == 0 else (None if i % 5 == 0 else True),
            modality="CR" if i % 3 else "DX",
            manufacturer=("Acme" if i % 4 == 0 else "Philips" if i % 4 == 1 else None),
            manufacturer_model=("X1" if i % 4 == 0 else None),
        )
        for i in range(n)
    ]


def test_strata_of_an_answer() -> None:
    film = _films(1)[0]
    assert strata_of(film) == [
        "class:lateral",
        "header:disagrees",
        "low_confidence",
        "modality:DX",
        "device:Acme / X1",
    ]
    assert strata_of(_films(38)[37]) == [
        "class:frontal",
        "unusual",
        "modality:CR",
        "device:Philips",
    ]
    assert "device:unknown" in strata_of(_films(3)[2])


def test_the_draw_covers_every_stratum_with_its_size() -> None:
    films = _films(2000)
    drawn = draw(films, seed=7, per_class=30, per_stratum=12)
    # Laterals are 10 %: the core must be 300 to expect 30 of them.
    assert drawn.core_size == 300
    assert sum(i.core for i in drawn.items) == 300
    assert set(drawn.strata_population) == {s for f in films for s in strata_of(f)}
    for stratum, population in drawn.strata_population.items():
        held = sum(stratum in i.strata for i in drawn.items)
        assert held == drawn.strata_sampled[stratum]
        assert held >= min(12, population), stratum
    # Top-ups stop at the stratum's size: no stratum got more than needed by itself.
    top_ups = [i for i in drawn.items if not i.core]
    assert top_ups and all(i.candidate.instance_id for i in top_ups)
    assert len({i.candidate.instance_id for i in drawn.items}) == len(drawn.items)


def test_the_draw_is_reproducible_by_seed() -> None:
    films = _films(500)

    def ids(seed: int) -> list[int]:
        return [
            i.candidate.instance_id
            for i in draw(films, seed=seed, per_class=10, per_stratum=5).items
        ]

    assert (
        ids(3)
        == ids(3)
        == [
            i.candidate.instance_id
            for i in draw(list(reversed(films)), seed=3, per_class=10, per_stratum=5).items
        ]
    )
    assert ids(3) != ids(4)


def test_a_small_site_is_sampled_whole() -> None:
    films = _films(25)
    drawn = draw(films, seed=1, per_class=50, per_stratum=20)
    assert drawn.core_size == 25 and len(drawn.items) == 25


def test_thresholds(tmp_path: Path) -> None:
    required = parse_requirement("lateral_recall_lb >= 0.98")
    assert (required.metric, required.op, required.value) == ("lateral_recall_lb", ">=", 0.98)
    assert evaluate(required, {"lateral_recall_lb": 0.985}).passed
    assert not evaluate(required, {"lateral_recall_lb": 0.97}).passed
    missing = evaluate(parse_requirement("projection_accuracy_lb>=0.9"), {})
    assert not missing.passed and "not measured" in missing.reason
    with pytest.raises(ThresholdError, match="NAME>=VALUE"):
        parse_requirement("lateral recall is good")
    (tmp_path / "site.toml").write_text(
        'require = ["frontal_recall_lb>=0.95", "header_wrong_rate_ub<=0.2"]\n'
    )
    (tmp_path / "site.json").write_text('{"require": ["accuracy_lb>=0.9"]}')
    assert [r.text for r in load_requirements(tmp_path / "site.toml")] == [
        "frontal_recall_lb>=0.95",
        "header_wrong_rate_ub<=0.2",
    ]
    assert [r.text for r in load_requirements(tmp_path / "site.json")] == ["accuracy_lb>=0.9"]
    (tmp_path / "bad.json").write_text('{"thresholds": 1}')
    with pytest.raises(ThresholdError, match="require"):
        load_requirements(tmp_path / "bad.json")
