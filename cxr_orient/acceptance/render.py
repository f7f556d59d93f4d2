"""A plan's report as files: ``report.json`` (the figures, as built) and ``report.html``
(one self-contained page: tables, SVG plots, the decision), written together."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from cxr_orient.acceptance.sampling import CLASSES
from cxr_orient.plots import Estimate, interval_plot

__all__ = ["render_html", "write_report"]

_ENVIRONMENT = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)


def _estimate(name: str, share: dict[str, Any], threshold: float | None = None) -> Estimate:
    return Estimate(name, share.get("value"), share.get("low"), share.get("high"), threshold)


def _lower_thresholds(report: dict[str, Any]) -> dict[str, float]:
    """metric -> the value a ``NAME_lb>=V`` threshold holds its lower bound to."""
    out = {}
    for r in report["requirements"]:
        metric, _, value = r["require"].partition(">=")
        if metric.endswith("_lb") and value:
            out[metric.removesuffix("_lb")] = float(value)
    return out


def plots(report: dict[str, Any]) -> dict[str, str]:
    """The report's SVG plots by name."""
    held = _lower_thresholds(report)
    rows = []
    for c in CLASSES:
        for kind in ("recall", "precision"):
            rows.append(
                _estimate(f"{c} {kind}", report["per_class"][c][kind], held.get(f"{c}_{kind}"))
            )
    rows.append(_estimate("accuracy", report["accuracy"], held.get("accuracy")))
    if report["projection"]["measured"]:
        rows.append(
            _estimate(
                "PA/AP accuracy", report["projection"]["accuracy"], held.get("projection_accuracy")
            )
        )
    strata = [_estimate(s["stratum"], s["accuracy"]) for s in report["strata"]]
    return {
        "figures": interval_plot(rows, title="Core sample: share, exact 95 % interval"),
        "strata": interval_plot(strata, title="Accuracy per stratum (labelled films)"),
    }


def render_html(report: dict[str, Any]) -> str:
    return _ENVIRONMENT.get_template("report.html").render(
        report=report, plots=plots(report), classes=CLASSES
    )


def write_report(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """``folder``/report.json and ``folder``/report.html; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / "report.json", folder / "report.html"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path
