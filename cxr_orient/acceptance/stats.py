"""Exact binomial intervals and the sample-size rules an acceptance plan is sized by.

The interval is Clopper-Pearson's (1934): for ``x`` successes in ``n`` trials at
confidence ``1 - alpha``, the lower bound is the ``alpha/2`` quantile of
Beta(x, n - x + 1) (0 when x = 0) and the upper bound the ``1 - alpha/2`` quantile of
Beta(x + 1, n - x) (1 when x = n). It never covers less than its nominal confidence,
whatever the true proportion (it is conservative near 0 and 1, where acceptance
figures live). The beta quantiles are scipy's (``scipy.stats.beta.ppf``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import beta

__all__ = [
    "MAX_SAMPLE",
    "Proportion",
    "clopper_pearson",
    "size_for_half_width",
    "size_for_lower_bound",
]

#: The largest sample a rule searches (beyond it a target is not worth reviewing for).
MAX_SAMPLE = 100_000


@dataclass(frozen=True)
class Proportion:
    """``x`` of ``n``, the share and its exact interval (None for all three when n = 0)."""

    x: int
    n: int
    value: float | None
    low: float | None
    high: float | None
    confidence: float = 0.95

    def as_dict(self) -> dict[str, object]:
        return {
            "x": self.x,
            "n": self.n,
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
        }


def clopper_pearson(x: int, n: int, confidence: float = 0.95) -> Proportion:
    """``x`` successes of ``n`` with the exact (Clopper-Pearson) two-sided interval."""
    if n < 0 or not 0 <= x <= n:
        raise ValueError(f"need 0 <= x <= n, got x={x}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} is not between 0 and 1")
    if n == 0:
        return Proportion(0, 0, None, None, None, confidence)
    alpha = 1 - confidence
    low = 0.0 if x == 0 else float(beta.ppf(alpha / 2, x, n - x + 1))
    high = 1.0 if x == n else float(beta.ppf(1 - alpha / 2, x + 1, n - x))
    return Proportion(x, n, x / n, low, high, confidence)


def _check(expected: float, confidence: float) -> None:
    if not 0 < expected <= 1:
        raise ValueError(f"expected proportion {expected} is not in (0, 1]")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} is not between 0 and 1")


def size_for_half_width(expected: float, half_width: float, confidence: float = 0.95) -> int:
    """The smallest ``n`` whose exact interval, at the anticipated proportion
    (``x = round(n * expected)``), reaches no further than ``half_width`` from the
    estimate on either side: ``max(p - low, high - p) <= half_width``."""
    _check(expected, confidence)
    if not 0 < half_width < 1:
        raise ValueError(f"half-width {half_width} is not between 0 and 1")
    for n in range(1, MAX_SAMPLE + 1):
        found = clopper_pearson(round(n * expected), n, confidence)
        assert found.value is not None and found.low is not None and found.high is not None
        if max(found.value - found.low, found.high - found.value) <= half_width:
            return n
    raise ValueError(f"half-width {half_width} needs more than {MAX_SAMPLE} films")


def size_for_lower_bound(expected: float, lower_bound: float, confidence: float = 0.95) -> int:
    """The smallest ``n`` whose exact lower bound, at the anticipated proportion
    (``x = round(n * expected)``), is at least ``lower_bound``: the sample that shows
    "recall >= lower_bound" if the model is as good as ``expected``."""
    _check(expected, confidence)
    if not 0 <= lower_bound < expected:
        raise ValueError(
            f"lower bound {lower_bound} must be below the expected proportion {expected}"
        )
    # x = n at expected = 1: the bound is (alpha/2) ** (1/n); a closed form starts the walk.
    start = max(
        1,
        math.floor(math.log((1 - confidence) / 2) / math.log(lower_bound))
        if lower_bound > 0
        else 1,
    )
    for n in range(start, MAX_SAMPLE + 1):
        low = clopper_pearson(round(n * expected), n, confidence).low
        if low is not None and low >= lower_bound:
            return n
    raise ValueError(f"lower bound {lower_bound} at {expected} needs more than {MAX_SAMPLE} films")
