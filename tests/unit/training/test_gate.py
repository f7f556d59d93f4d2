"""The promotion gate: only a model that beats the active one goes into service."""

from __future__ import annotations

import pytest

from training.gate import ECE_TOLERANCE, gate
from training.lifecycle import in_eval_split


def _m(bal: float, lat: float, ece: float) -> dict[str, float]:
    return {"balanced_accuracy": bal, "lateral_recall": lat, "ece": ece}


@pytest.mark.parametrize(
    ("candidate", "active", "promote"),
    [
        (_m(0.99, 1.0, 0.02), _m(0.98, 1.0, 0.02), True),
        (_m(0.98, 1.0, 0.02), _m(0.98, 0.9, 0.02), True),
        (_m(0.98, 1.0, 0.01), _m(0.98, 1.0, 0.03), True),
        (_m(0.98, 1.0, 0.02), _m(0.98, 1.0, 0.02), False),  # a tie gains nothing
        # tied decisions, ECE lower by less than its noise: not a reason to swap models
        (_m(1.0, 1.0, 0.0321), _m(1.0, 1.0, 0.0333), False),
        (_m(0.99, 0.9, 0.02), _m(0.98, 1.0, 0.02), False),  # lateral recall worse
        (_m(0.97, 1.0, 0.01), _m(0.98, 1.0, 0.02), False),  # balanced accuracy worse
        (_m(0.99, 1.0, 0.02 + ECE_TOLERANCE + 0.01), _m(0.98, 1.0, 0.02), False),
        (_m(float("nan"), 1.0, 0.0), _m(0.5, 0.5, 0.5), False),
        (_m(0.9, 0.9, 0.1), None, True),
    ],
    ids=[
        "better-bal",
        "better-lat",
        "better-ece",
        "tie",
        "ece-noise",
        "worse-lat",
        "worse-bal",
        "worse-ece",
        "undefined",
        "no-active",
    ],
)
def test_gate(candidate: dict[str, float], active: dict[str, float] | None, promote: bool) -> None:
    decision = gate(candidate, active)
    assert decision.promote is promote, decision.reasons
    assert decision.reasons


def test_eval_split_is_a_fixed_function_of_the_patient() -> None:
    members = [in_eval_split(f"patient-{i}") for i in range(2000)]
    assert members == [in_eval_split(f"patient-{i}") for i in range(2000)]
    assert 0.17 < sum(members) / len(members) < 0.23


def test_gate_refuses_a_candidate_that_would_drop_a_head() -> None:
    better = {"balanced_accuracy": 1.0, "lateral_recall": 1.0, "ece": 0.0}
    worse = {"balanced_accuracy": 0.5, "lateral_recall": 0.5, "ece": 0.3}
    decision = gate(better, worse, lost_heads=["orientation"])
    assert not decision.promote and "orientation" in decision.reasons[0]
    assert gate(better, worse).promote


def test_gate_promotes_a_tie_that_adds_heads_and_nothing_worse() -> None:
    """A release that keeps the view weight for weight (the same figures) and adds
    heads goes into service through the gate; worse on the view, it still does not."""
    same = {"balanced_accuracy": 0.98, "lateral_recall": 1.0, "ece": 0.02}
    decision = gate(same, same, gained_heads=["PA/AP", "chest-or-not"])
    assert decision.promote and "adds the PA/AP, chest-or-not head(s)" in decision.reasons[0]
    worse = {**same, "lateral_recall": 0.95}
    assert not gate(worse, same, gained_heads=["PA/AP"]).promote
    assert not gate(same, same).promote


def test_heads_of_each_architecture() -> None:
    from cxr_orient.architectures import ARCHITECTURES
    from training.gate import ARCHITECTURE_HEADS, heads_of

    assert set(ARCHITECTURE_HEADS) <= set(ARCHITECTURES)
    assert heads_of("compact_invariant_64_heads3") - heads_of("compact_invariant_64_heads2") == {
        "chest-or-not",
        "PA/AP",
    }
    assert heads_of("compact_invariant_64") == frozenset()


def _pa_ap(
    coverage: float, stated: float | None, every: float, *, n_pa: int = 10, n_ap: int = 10
) -> dict[str, float | int | None]:
    return {
        "n": n_pa + n_ap,
        "n_pa": n_pa,
        "n_ap": n_ap,
        "coverage": coverage,
        "balanced_accuracy": stated,
        "balanced_accuracy_all": every,
    }


@pytest.mark.parametrize(
    ("candidate", "active", "promote", "reason"),
    [
        (_pa_ap(0.3, 0.95, 0.85), _pa_ap(0.3, 0.95, 0.80), True, "better on PA/AP"),
        (_pa_ap(0.4, 0.95, 0.80), _pa_ap(0.3, 0.95, 0.80), True, "coverage 0.4000 > 0.3000"),
        (_pa_ap(0.2, 1.0, 0.90), _pa_ap(0.3, 0.95, 0.80), False, "coverage 0.2000 < 0.3000"),
        (_pa_ap(0.4, 0.90, 0.90), _pa_ap(0.3, 0.95, 0.80), False, "balanced accuracy 0.9000"),
        (_pa_ap(0.3, 0.95, 0.75), _pa_ap(0.3, 0.95, 0.80), False, "accuracy all 0.7500"),
        # the active model states nothing: its stated accuracy is not compared
        (_pa_ap(0.2, 0.90, 0.70), _pa_ap(0.0, None, 0.50), True, "better on PA/AP"),
        # no AP film held out: nothing to compare PA/AP on, and the view ties
        (_pa_ap(0.4, 1.0, 1.0, n_ap=0), _pa_ap(0.1, 1.0, 0.5, n_ap=0), False, "nothing to gain"),
        (_pa_ap(0.3, 0.95, 0.80), _pa_ap(0.3, 0.95, 0.80), False, "nothing to gain"),
    ],
    ids=[
        "better-all",
        "more-stated",
        "fewer-stated",
        "stated-worse",
        "all-worse",
        "active-states-none",
        "no-ap-held-out",
        "tie",
    ],
)
def test_gate_compares_pa_ap_when_the_view_ties(
    candidate: dict[str, float], active: dict[str, float], promote: bool, reason: str
) -> None:
    """The nightly refit of the PA/AP head: the same view weights, so the view ties;
    the PA/AP figures on the held-out frontals decide, none may be worse."""
    view = {"balanced_accuracy": 0.98, "lateral_recall": 1.0, "ece": 0.02}
    decision = gate(view, view, candidate_projection=candidate, active_projection=active)
    assert decision.promote is promote, decision.reasons
    assert any(reason in r for r in decision.reasons), decision.reasons
    assert decision.candidate_projection == candidate


def test_gate_refuses_a_better_view_that_is_worse_on_pa_ap() -> None:
    better = {"balanced_accuracy": 1.0, "lateral_recall": 1.0, "ece": 0.01}
    active = {"balanced_accuracy": 0.98, "lateral_recall": 1.0, "ece": 0.02}
    same = _pa_ap(0.3, 0.95, 0.80)
    assert gate(better, active, candidate_projection=same, active_projection=same).promote
    decision = gate(
        better,
        active,
        candidate_projection=_pa_ap(0.3, 0.95, 0.70),
        active_projection=same,
    )
    assert not decision.promote and "PA/AP balanced accuracy all" in decision.reasons[0]
