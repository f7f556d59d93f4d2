"""``cxr-orient acceptance plan``: size the sample for the intervals the site asks for,
draw it from the site's answered films, and store it as a plan whose items wait in a
review queue of their own (``/review/acceptance/{plan id}``)."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from cxr_orient.acceptance.sampling import Candidate, Draw, draw
from cxr_orient.acceptance.stats import size_for_half_width, size_for_lower_bound
from cxr_orient.errors import CxrError
from db import crud

__all__ = ["AcceptanceError", "PlanOutcome", "PlanTargets", "create_plan"]

logger = logging.getLogger(__name__)


class AcceptanceError(CxrError):
    code = "acceptance"


@dataclass(frozen=True)
class PlanTargets:
    """What the intervals must show, per class: the exact interval's half-width at the
    expected proportion, or (``lower_bound`` set) that its lower bound clears it."""

    expected: float = 0.98
    half_width: float = 0.05
    lower_bound: float | None = None
    confidence: float = 0.95
    #: Films each other stratum (header, confidence, unusual, modality, device) gets.
    per_stratum: int = 20
    #: A core size chosen by hand instead of the per-class rule.
    core_size: int | None = None

    def per_class(self) -> int:
        """Films per class the intervals need (docs/acceptance.md, "Sample size")."""
        if self.lower_bound is not None:
            return size_for_lower_bound(self.expected, self.lower_bound, self.confidence)
        return size_for_half_width(self.expected, self.half_width, self.confidence)

    def as_dict(self) -> dict[str, Any]:
        rule = "lower_bound" if self.lower_bound is not None else "half_width"
        return {
            "rule": rule,
            "expected": self.expected,
            "half_width": self.half_width,
            "lower_bound": self.lower_bound,
            "confidence": self.confidence,
            "per_stratum": self.per_stratum,
            "core_size": self.core_size,
        }


@dataclass(frozen=True)
class PlanOutcome:
    plan_id: int
    name: str
    seed: int
    per_class: int
    drawn: Draw


def create_plan(
    session: Session, *, name: str, actor: str, targets: PlanTargets, seed: int | None = None
) -> PlanOutcome:
    """Draw and store the plan ``name`` (its seed recorded: given, or a random one)."""
    if not name.strip():
        raise AcceptanceError("a plan needs a name")
    if crud.find_acceptance_plan(session, name=name) is not None:
        raise AcceptanceError(f"a plan named {name!r} exists already")
    try:
        per_class = targets.per_class()
    except ValueError as exc:
        raise AcceptanceError(str(exc)) from exc
    seed = secrets.randbits(31) if seed is None else seed
    films = [Candidate(**f.__dict__) for f in crud.answered_films(session)]
    if not films:
        raise AcceptanceError("no answered films to sample (nothing is done yet)")
    drawn = draw(
        films,
        seed=seed,
        per_class=per_class,
        per_stratum=targets.per_stratum,
        core_size=targets.core_size,
    )
    design = {
        "targets": targets.as_dict(),
        "per_class": per_class,
        "core_size": drawn.core_size,
        "strata_population": drawn.strata_population,
        "strata_sampled": drawn.strata_sampled,
    }
    plan = crud.add_acceptance_plan(
        session,
        name=name,
        actor=actor,
        seed=seed,
        population=drawn.population,
        design=design,
        items=[
            (i.candidate.instance_id, i.candidate.prediction_id, i.core, list(i.strata))
            for i in drawn.items
        ],
    )
    logger.info(
        "acceptance: plan %d %r by %s: %d films of %d (core %d, seed %d)",
        plan.id,
        name,
        actor,
        len(drawn.items),
        drawn.population,
        drawn.core_size,
        seed,
    )
    return PlanOutcome(plan.id, name, seed, per_class, drawn)
