"""Server-rendered SVG line plots for the audit page (no script, no front-end build)."""

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


def share_plot(days: Sequence[str], series: Sequence[Series], *, title: str,
               width: int = 520, height: int = 240) -> str:
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

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
           'style="background:#fff">',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for k in range(5):
        v = top_value * k / 4
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                   'stroke="#e3e6ee"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="11" '
                   f'text-anchor="end">{v:.0%}</text>')
    if days:
        for i in sorted({0, len(days) // 2, len(days) - 1}):
            out.append(f'<text x="{x(i):.1f}" y="{height - bottom + 16}" font-size="11" '
                       f'text-anchor="middle">{escape(days[i])}</text>')
    else:
        out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" font-size="12" '
                   'text-anchor="middle" fill="#667">no answers yet</text>')
    for number, s in enumerate(series):
        points = [(x(i), y(v)) for i, v in enumerate(s.values) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(f'<polyline fill="none" stroke="{s.colour}" stroke-width="2" '
                       f'points="{path}"/>')
        for px, py in points:
            out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{s.colour}"/>')
        lx = left + 8 + 170 * number
        out.append(f'<rect x="{lx}" y="{height - 14}" width="10" height="4" '
                   f'fill="{s.colour}"/><text x="{lx + 14}" y="{height - 9}" '
                   f'font-size="11">{escape(s.name)}</text>')
    out.append("</svg>")
    return "".join(out)
