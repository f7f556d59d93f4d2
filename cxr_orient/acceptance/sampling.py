"""Drawing an acceptance sample: which strata an answered film belongs to, and the
reproducible stratified draw (a pure function of the candidates and a seed).

The design (docs/acceptance.md):

- A **core** sample, a simple random sample of all answered films, sized so that the
  rarest predicted class is expected to bring ``per_class`` films: ``core = max over
  classes c of ceil(per_class * N / N_c)``, capped at N. Because it is a simple random
  sample, per-class recall and precision, accuracy and the header error rate measured on
  it are unbiased and their exact binomial intervals hold without weights.
- **Top-ups**: every other stratum (header disagreements, low confidence, unusual, each
  modality, each device) gets random films of its own until it holds ``per_stratum``
  (or all it has). They measure the stratum (its accuracy, the unusual catches) and
  never enter the per-class figures, which would otherwise be biased towards the
  strata sampled more densely.

Films are shuffled once with ``random.Random(seed)`` after sorting by instance id, so
the same seed on the same answers draws the same plan.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["CLASSES", "Candidate", "Draw", "DrawnItem", "draw", "strata_of"]

#: The predicted classes (a stratum each, and the per-class figures).
CLASSES = ("frontal", "lateral")


@dataclass(frozen=True)
class Candidate:
    """One answered film: its current answer and what its header said."""

    instance_id: int
    prediction_id: int
    label: str
    needs_review: bool
    review_reason: str | None
    header_agrees: bool | None
    modality: str | None
    manufacturer: str | None
    manufacturer_model: str | None


def _device(candidate: Candidate) -> str:
    parts = [p for p in (candidate.manufacturer, candidate.manufacturer_model) if p]
    return " / ".join(parts) if parts else "unknown"


def strata_of(candidate: Candidate) -> list[str]:
    """Every stratum the film belongs to (``class:...``, ``header:disagrees``,
    ``low_confidence``, ``unusual``, ``modality:...``, ``device:...``)."""
    reasons = set((candidate.review_reason or "").split(","))
    out = [f"class:{candidate.label}"]
    if candidate.header_agrees is False:
        out.append("header:disagrees")
    if "low_confidence" in reasons:
        out.append("low_confidence")
    if "unusual_image" in reasons:
        out.append("unusual")
    out.append(f"modality:{candidate.modality or 'unknown'}")
    out.append(f"device:{_device(candidate)}")
    return out


@dataclass(frozen=True)
class DrawnItem:
    candidate: Candidate
    core: bool
    strata: tuple[str, ...]


@dataclass
class Draw:
    """The sample and, per stratum, how many films the population and the sample hold."""

    items: list[DrawnItem]
    core_size: int
    population: int
    strata_population: dict[str, int] = field(default_factory=dict)
    strata_sampled: dict[str, int] = field(default_factory=dict)


def draw(
    candidates: Sequence[Candidate],
    *,
    seed: int,
    per_class: int,
    per_stratum: int,
    core_size: int | None = None,
) -> Draw:
    """The stratified sample of ``candidates`` (module docstring); ``core_size`` given
    replaces the per-class rule."""
    if per_class < 0 or per_stratum < 0 or (core_size is not None and core_size < 0):
        raise ValueError("sample sizes must not be negative")
    order = sorted(candidates, key=lambda c: c.instance_id)
    random.Random(seed).shuffle(order)
    strata = {c.instance_id: strata_of(c) for c in order}
    population = Counter(s for c in order for s in strata[c.instance_id])
    n = len(order)
    if core_size is None:
        shares = [population[f"class:{c}"] for c in CLASSES if population[f"class:{c}"]]
        core_size = max((math.ceil(per_class * n / count) for count in shares), default=0)
    core_size = min(core_size, n)
    chosen = {c.instance_id: True for c in order[:core_size]}
    sampled = Counter(s for c in order[:core_size] for s in strata[c.instance_id])
    members: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in order[core_size:]:
        for stratum in strata[candidate.instance_id]:
            members[stratum].append(candidate)
    for stratum in sorted(population):
        for candidate in members[stratum]:
            if sampled[stratum] >= per_stratum:
                break
            if candidate.instance_id in chosen:
                continue
            chosen[candidate.instance_id] = False
            sampled.update(strata[candidate.instance_id])
    items = [
        DrawnItem(c, chosen[c.instance_id], tuple(strata[c.instance_id]))
        for c in sorted(order, key=lambda c: c.instance_id)
        if c.instance_id in chosen
    ]
    return Draw(
        items=items,
        core_size=core_size,
        population=n,
        strata_population=dict(sorted(population.items())),
        strata_sampled={s: sampled[s] for s in sorted(population)},
    )
