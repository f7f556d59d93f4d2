"""Intervals of a proportion, for the rates the recipes report on small sets."""

from __future__ import annotations

import math

__all__ = ["wilson_interval"]


def wilson_interval(hits: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score 95 % interval of a proportion ``hits / n`` (NaNs when ``n`` is 0)."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]
