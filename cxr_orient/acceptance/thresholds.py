"""The site's thresholds: ``lateral_recall_lb>=0.98`` given as options, or listed in a
small file (JSON ``{"require": [...]}`` or TOML ``require = [...]``), checked against a
report's figures. A threshold on a figure the report could not measure fails."""

from __future__ import annotations

import json
import operator
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxr_orient.errors import CxrError

__all__ = [
    "Outcome",
    "Requirement",
    "ThresholdError",
    "evaluate",
    "load_requirements",
    "parse_requirement",
]

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_PATTERN = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*(>=|<=|>|<)\s*([0-9]*\.?[0-9]+)\s*$")


class ThresholdError(CxrError):
    code = "threshold"


@dataclass(frozen=True)
class Requirement:
    metric: str
    op: str
    value: float

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_requirement(text: str) -> Requirement:
    """``lateral_recall_lb>=0.98`` -> Requirement."""
    found = _PATTERN.match(text)
    if found is None:
        raise ThresholdError(
            f"threshold {text!r}: write it as NAME>=VALUE (or <=, >, <), "
            "e.g. lateral_recall_lb>=0.98"
        )
    return Requirement(found.group(1), found.group(2), float(found.group(3)))


def load_requirements(path: Path) -> list[Requirement]:
    """The ``require`` list of a JSON or TOML file."""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise ThresholdError(f"{path}: {exc}") from exc
    listed = data.get("require") if isinstance(data, dict) else None
    if not isinstance(listed, list) or not all(isinstance(x, str) for x in listed):
        raise ThresholdError(f"{path}: needs a list of strings named 'require'")
    return [parse_requirement(x) for x in listed]


@dataclass(frozen=True)
class Outcome:
    requirement: Requirement
    measured: float | None
    passed: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {
            "require": self.requirement.text,
            "metric": self.requirement.metric,
            "measured": self.measured,
            "passed": self.passed,
            "reason": self.reason,
        }


def evaluate(requirement: Requirement, metrics: dict[str, float]) -> Outcome:
    measured = metrics.get(requirement.metric)
    if measured is None:
        return Outcome(
            requirement, None, False, f"{requirement.text}: {requirement.metric} not measured"
        )
    passed = OPERATORS[requirement.op](measured, requirement.value)
    verdict = "met" if passed else "not met"
    return Outcome(
        requirement,
        measured,
        passed,
        f"{requirement.text}: {verdict} ({requirement.metric} = {measured:.4f})",
    )
