"""``cxr-orient acceptance report``: the reviewers' labels of a plan turned into figures
with exact intervals, and the go/no-go against the site's thresholds.

Which films each figure is measured on (docs/acceptance.md, "What the report says"):
per-class recall and precision, accuracy, the header error rate and the share of
non-chest films on the **core** items only (a simple random sample of the answered
films: the exact binomial intervals hold as they are); per-stratum accuracy, the
unusual-image catches and the header disagreements on every labelled item of the
stratum (a random sample within it). Films labelled "not a chest radiograph" have no
view and are left out of the view figures.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from cxr_orient.acceptance.plan import AcceptanceError
from cxr_orient.acceptance.sampling import CLASSES
from cxr_orient.acceptance.stats import Proportion, clopper_pearson
from cxr_orient.acceptance.thresholds import Requirement, evaluate
from cxr_orient.imaging import view_to_label
from db import crud
from db.crud import ReportRow
from db.models import utcnow

__all__ = ["NO_PROJECTION", "PAUSE_S", "build_report", "proportion", "report_for_plan"]

#: What the projection section says when the answers carry no PA/AP.
NO_PROJECTION = "not measured: the model in service gives no projection"
#: A gap between a reviewer's consecutive labels longer than this is a pause, not a film.
PAUSE_S = 600.0


def _views(rows: Sequence[ReportRow]) -> list[ReportRow]:
    return [r for r in rows if r.truth in CLASSES]


def _share(hits: int, n: int, confidence: float) -> dict[str, Any]:
    return clopper_pearson(hits, n, confidence).as_dict()


def _per_class(core: Sequence[ReportRow], confidence: float) -> dict[str, Any]:
    out = {}
    for c in CLASSES:
        truly = [r for r in core if r.truth == c]
        said = [r for r in core if r.predicted == c]
        out[c] = {
            "recall": _share(sum(r.predicted == c for r in truly), len(truly), confidence),
            "precision": _share(sum(r.truth == c for r in said), len(said), confidence),
        }
    return out


def _confusion(rows: Sequence[ReportRow]) -> dict[str, dict[str, int]]:
    """truth -> predicted -> films (truth frontal, lateral, not_chest)."""
    return {
        t: {p: sum(r.truth == t and r.predicted == p for r in rows) for p in CLASSES}
        for t in (*CLASSES, "not_chest")
    }


def _headers(
    core: Sequence[ReportRow], labelled: Sequence[ReportRow], confidence: float
) -> dict[str, Any]:
    claims = [(view_to_label(r.header_view), r.truth) for r in _views(core)]
    known = [(h, t) for h, t in claims if h is not None]
    disagreeing = [r for r in _views(labelled) if r.header_agrees is False]
    return {
        "wrong": _share(sum(h != t for h, t in known), len(known), confidence),
        "without_view": len(claims) - len(known),
        "model_right_when_disagreeing": _share(
            sum(r.predicted == r.truth for r in disagreeing), len(disagreeing), confidence
        ),
    }


def _unusual(
    core: Sequence[ReportRow], labelled: Sequence[ReportRow], confidence: float
) -> dict[str, Any]:
    def flagged(r: ReportRow) -> bool:
        return "unusual_image" in (r.review_reason or "").split(",")

    not_chest = [r for r in labelled if r.truth == "not_chest"]
    unusual = [r for r in labelled if flagged(r)]
    return {
        "not_chest_share": _share(sum(r.truth == "not_chest" for r in core), len(core), confidence),
        "caught": _share(sum(flagged(r) for r in not_chest), len(not_chest), confidence),
        "flagged_not_chest": _share(
            sum(r.truth == "not_chest" for r in unusual), len(unusual), confidence
        ),
    }


def _projection(labelled: Sequence[ReportRow], measured: bool, confidence: float) -> dict[str, Any]:
    frontals = [r for r in labelled if r.truth == "frontal" and r.truth_projection]
    if not measured:
        return {"measured": False, "note": NO_PROJECTION, "reviewed_frontals": len(frontals)}
    answered = [r for r in frontals if r.predicted_projection]
    return {
        "measured": True,
        "note": None,
        "reviewed_frontals": len(frontals),
        "without_projection": len(frontals) - len(answered),
        "accuracy": _share(
            sum(r.predicted_projection == r.truth_projection for r in answered),
            len(answered),
            confidence,
        ),
    }


def _strata(
    rows: Sequence[ReportRow], design: dict[str, Any], confidence: float
) -> list[dict[str, Any]]:
    population = design.get("strata_population", {})
    members: dict[str, list[ReportRow]] = defaultdict(list)
    for r in rows:
        for s in r.strata:
            members[s].append(r)
    out = []
    for name in sorted(set(population) | set(members)):
        views = _views([r for r in members[name] if r.truth is not None])
        out.append(
            {
                "stratum": name,
                "population": population.get(name),
                "sampled": len(members[name]),
                "labelled": sum(r.truth is not None for r in members[name]),
                "accuracy": _share(
                    sum(r.predicted == r.truth for r in views), len(views), confidence
                ),
            }
        )
    return out


def _load(rows: Sequence[ReportRow]) -> dict[str, Any]:
    by_reviewer: dict[str, list[datetime]] = defaultdict(list)
    for r in rows:
        if r.labelled_at is not None:
            by_reviewer[r.annotator or "?"].append(r.labelled_at)
    gaps = [
        (b - a).total_seconds()
        for times in by_reviewer.values()
        for a, b in zip(sorted(times), sorted(times)[1:], strict=False)
    ]
    timed = [g for g in gaps if g <= PAUSE_S]
    return {
        "films": len(rows),
        "labelled": sum(r.truth is not None for r in rows),
        "reviewers": {k: len(v) for k, v in sorted(by_reviewer.items())},
        "timed_films": len(timed),
        "median_seconds_per_film": statistics.median(timed) if timed else None,
        "active_minutes": sum(timed) / 60 if timed else None,
    }


def _flat(report: dict[str, Any]) -> dict[str, float]:
    """The figures a threshold may name (``lateral_recall_lb``...)."""
    out: dict[str, float] = {}

    def put(name: str, p: dict[str, Any]) -> None:
        if p.get("value") is not None:
            out[name], out[f"{name}_lb"], out[f"{name}_ub"] = p["value"], p["low"], p["high"]
            out[f"{name}_n"] = p["n"]

    for c, figures in report["per_class"].items():
        put(f"{c}_recall", figures["recall"])
        put(f"{c}_precision", figures["precision"])
    put("accuracy", report["accuracy"])
    put("header_wrong_rate", report["headers"]["wrong"])
    put("not_chest_share", report["unusual"]["not_chest_share"])
    put("unusual_catch_rate", report["unusual"]["caught"])
    if report["projection"]["measured"]:
        put("projection_accuracy", report["projection"]["accuracy"])
    out["unlabelled"] = report["unlabelled"]
    return out


def build_report(
    rows: Sequence[ReportRow],
    *,
    plan: dict[str, Any],
    requirements: Sequence[Requirement],
    projection_measured: bool,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The report of a plan (JSON-ready): its figures, the thresholds and the decision.

    ``plan``: id, name, seed, actor, created_at, population, design (as stored)."""
    labelled = [r for r in rows if r.truth is not None]
    core = [r for r in labelled if r.core]
    views = _views(core)
    report: dict[str, Any] = {
        "plan": plan,
        "confidence": confidence,
        "items": len(rows),
        "core_items": sum(r.core for r in rows),
        "labelled": len(labelled),
        "unlabelled": len(rows) - len(labelled),
        "per_class": _per_class(views, confidence),
        "confusion_core": _confusion(core),
        "accuracy": _share(sum(r.predicted == r.truth for r in views), len(views), confidence),
        "headers": _headers(core, labelled, confidence),
        "unusual": _unusual(core, labelled, confidence),
        "projection": _projection(labelled, projection_measured, confidence),
        "strata": _strata(rows, plan.get("design", {}), confidence),
        "review_load": _load(rows),
    }
    report["metrics"] = _flat(report)
    outcomes = [evaluate(r, report["metrics"]) for r in requirements]
    report["requirements"] = [o.as_dict() for o in outcomes]
    reasons = [o.reason for o in outcomes if not o.passed]
    if report["unlabelled"]:
        reasons.append(f"{report['unlabelled']} of {len(rows)} films not labelled yet")
    if not requirements:
        decision = "undecided"
        reasons.append("no thresholds given (--require or --thresholds)")
    else:
        decision = "no-go" if reasons else "go"
    report["decision"], report["reasons"] = decision, reasons
    return report


def proportion(value: dict[str, Any]) -> Proportion:
    """A report's share back as a :class:`Proportion` (for rendering)."""
    return Proportion(
        value["x"], value["n"], value["value"], value["low"], value["high"], value["confidence"]
    )


def report_for_plan(
    session: Session, *, plan_id: int, requirements: Sequence[Requirement], confidence: float = 0.95
) -> dict[str, Any]:
    """:func:`build_report` on the plan's stored items and labels."""
    plan = crud.get_acceptance_plan(session, plan_id=plan_id)
    if plan is None:
        raise AcceptanceError(f"no acceptance plan {plan_id}")
    about = {
        "id": plan.id,
        "name": plan.name,
        "seed": plan.seed,
        "actor": plan.actor,
        "created_at": plan.created_at.isoformat(),
        "population": plan.population,
        "design": plan.design,
    }
    rows = crud.acceptance_report_rows(session, plan_id=plan.id)
    # Measured when the answers come from a model with a PA/AP head: it gives p_ap for
    # every frontal, even where it states no projection.
    report = build_report(
        rows,
        plan=about,
        requirements=requirements,
        projection_measured=any(r.p_ap is not None for r in rows),
        confidence=confidence,
    )
    return {"generated_at": utcnow().isoformat(), **report}
