"""Server-rendered SVG plots (no script, no front-end build): shares per day for the
audit page, estimates with their intervals for the acceptance report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape


@dataclass(frozen=True)
class Series:
    name: str
    #: One value per day; None where there is nothing to show (no answers that day).
    values: Sequence[float | None]
    colour: str


def share_plot(
    days: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    width: int = 520,
    height: int = 240,
) -> str:
    """Shares (0..1, the y axis up to the largest value shown, at least 5 %) per day."""
    left, right, top, bottom = 48, 12, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    shown = [v for s in series for v in s.values if v is not None]
    top_value = max([0.05, *shown])
    top_value = min(1.0, top_value * 1.1)
    n = max(1, len(days) - 1)

    def x(i: int) -> float:
        return left + plot_w * (i / n if len(days) > 1 else 0.5)

    def y(v: float) -> float:
        return top + plot_h * (1 - v / top_value)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        'style="background:#fff">',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for k in range(5):
        v = top_value * k / 4
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            'stroke="#e3e6ee"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="11" '
            f'text-anchor="end">{v:.0%}</text>'
        )
    if days:
        for i in sorted({0, len(days) // 2, len(days) - 1}):
            out.append(
                f'<text x="{x(i):.1f}" y="{height - bottom + 16}" font-size="11" '
                f'text-anchor="middle">{escape(days[i])}</text>'
            )
    else:
        out.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" font-size="12" '
            'text-anchor="middle" fill="#667">no answers yet</text>'
        )
    for number, s in enumerate(series):
        points = [(x(i), y(v)) for i, v in enumerate(s.values) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(
                f'<polyline fill="none" stroke="{s.colour}" stroke-width="2" points="{path}"/>'
            )
        for px, py in points:
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{s.colour}"/>')
        lx = left + 8 + 170 * number
        out.append(
            f'<rect x="{lx}" y="{height - 14}" width="10" height="4" '
            f'fill="{s.colour}"/><text x="{lx + 14}" y="{height - 9}" '
            f'font-size="11">{escape(s.name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


@dataclass(frozen=True)
class Estimate:
    """A share with its interval (``value`` None: not measured) and, optionally, the
    threshold it is held to."""

    name: str
    value: float | None
    low: float | None
    high: float | None
    threshold: float | None = None


def interval_plot(estimates: Sequence[Estimate], *, title: str, width: int = 560) -> str:
    """One row per estimate: the point, its interval as a bar, the threshold as a red
    tick; the x axis from the lowest value shown (rounded down to 10 %) to 100 %."""
    left, right, top, row_h = 170, 24, 30, 26
    height = top + row_h * max(1, len(estimates)) + 30
    shown = [v for e in estimates for v in (e.low, e.threshold) if v is not None]
    start = min(0.9, int(10 * min(shown, default=0.9)) / 10)
    plot_w = width - left - right

    def x(v: float) -> float:
        return left + plot_w * (v - start) / (1 - start)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        'style="background:#fff">',
        f'<text x="8" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    bottom = top + row_h * max(1, len(estimates))
    for k in range(5):
        v = start + (1 - start) * k / 4
        out.append(
            f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{top}" y2="{bottom}" stroke="#e3e6ee"/>'
        )
        out.append(
            f'<text x="{x(v):.1f}" y="{bottom + 16}" font-size="11" '
            f'text-anchor="middle">{v:.0%}</text>'
        )
    for i, e in enumerate(estimates):
        cy = top + row_h * i + row_h / 2
        out.append(
            f'<text x="{left - 8}" y="{cy + 4:.1f}" font-size="12" '
            f'text-anchor="end">{escape(e.name)}</text>'
        )
        if e.value is None or e.low is None or e.high is None:
            out.append(
                f'<text x="{left + 6}" y="{cy + 4:.1f}" font-size="11" '
                'fill="#667">not measured</text>'
            )
        else:
            out.append(
                f'<line x1="{x(e.low):.1f}" x2="{x(e.high):.1f}" y1="{cy:.1f}" '
                f'y2="{cy:.1f}" stroke="#2456c7" stroke-width="3"/>'
            )
            out.append(f'<circle cx="{x(e.value):.1f}" cy="{cy:.1f}" r="4" fill="#1d2330"/>')
        if e.threshold is not None:
            out.append(
                f'<line x1="{x(e.threshold):.1f}" x2="{x(e.threshold):.1f}" '
                f'y1="{cy - 9:.1f}" y2="{cy + 9:.1f}" stroke="#c01010" '
                'stroke-width="2"/>'
            )
    out.append("</svg>")
    return "".join(out)
