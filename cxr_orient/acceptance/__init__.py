"""Acceptance on a site's own films (docs/acceptance.md): a stratified sample of the
answered films sized for the intervals the site asks for (``sampling``, ``stats``,
``plan``), labelled blind in a review queue of its own (``review``), and the report with
exact intervals and the go/no-go against the site's thresholds (``report``,
``thresholds``, ``render``)."""

from cxr_orient.acceptance.plan import AcceptanceError, PlanOutcome, PlanTargets, create_plan
from cxr_orient.acceptance.render import render_html, write_report
from cxr_orient.acceptance.report import NO_PROJECTION, build_report, report_for_plan
from cxr_orient.acceptance.review import ACCEPTANCE_DECISIONS, record_acceptance_label
from cxr_orient.acceptance.sampling import CLASSES, Candidate, Draw, draw, strata_of
from cxr_orient.acceptance.stats import (
    Proportion,
    clopper_pearson,
    size_for_half_width,
    size_for_lower_bound,
)
from cxr_orient.acceptance.thresholds import (
    Requirement,
    ThresholdError,
    load_requirements,
    parse_requirement,
)

__all__ = [
    "ACCEPTANCE_DECISIONS",
    "CLASSES",
    "NO_PROJECTION",
    "AcceptanceError",
    "Candidate",
    "Draw",
    "PlanOutcome",
    "PlanTargets",
    "Proportion",
    "Requirement",
    "ThresholdError",
    "build_report",
    "clopper_pearson",
    "create_plan",
    "draw",
    "load_requirements",
    "parse_requirement",
    "record_acceptance_label",
    "render_html",
    "report_for_plan",
    "size_for_half_width",
    "size_for_lower_bound",
    "strata_of",
    "write_report",
]
