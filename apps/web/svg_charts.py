"""Small line charts drawn on the server as inline SVG: no script, nothing fetched, and the
figure is in the HTML itself (readable by tests and by browsers without JavaScript).

Used for series that are short once downsampled (a volunteer's credit per day).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

# Sized for a half-width card about 200 px tall, so that 13 px text stays about 11 px.
WIDTH, HEIGHT = 420, 220
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 46, 12, 10, 26
Y_TICKS = 4


def _nice_step(span: float, ticks: int) -> float:
    """A round tick step (1, 2, 2.5 or 5 × 10^k) giving about ``ticks`` intervals."""
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def format_number(value: float) -> str:
    """Compact figures for axes: 950, 1.2k, 3.4M; small values keep their decimals."""
    magnitude = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{value / limit:.3g}{suffix}"
    if magnitude >= 10 or value == 0:
        return f"{value:.0f}"
    return f"{value:.3g}"


def line_chart(*, days: Sequence[date], values: Sequence[float], label: str,
               color: str = "#1f5fbf") -> SafeString:
    """An SVG line chart of ``values`` over ``days`` (same length, days ascending)."""
    color = escape(color)
    if len(days) != len(values):
        raise ValueError(f"{len(days)} days but {len(values)} values")
    if not days:
        return format_html('<div class="chart-empty" role="img" aria-label="{}">'
                           "No credit yet</div>", label)
    top = max(max(values), 0.0)
    step = _nice_step(top, Y_TICKS) if top > 0 else 1.0
    y_max = step * math.ceil(top / step) if top > 0 else 1.0
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    first = days[0].toordinal()
    x_span = max(days[-1].toordinal() - first, 1)

    def x_of(day: date) -> float:
        if len(days) == 1:
            return MARGIN_LEFT + plot_w / 2
        return MARGIN_LEFT + plot_w * (day.toordinal() - first) / x_span

    def y_of(value: float) -> float:
        return MARGIN_TOP + plot_h * (1 - value / y_max)

    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg" '
             'font-family="system-ui, sans-serif" font-size="13">']
    tick = 0.0
    while tick <= y_max + step / 2:
        y = y_of(tick)
        parts.append(f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" '
                     f'y2="{y:.1f}" stroke="#e3e7ec"/>')
        parts.append(f'<text x="{MARGIN_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end" '
                     f'fill="#5d6878">{escape(format_number(tick))}</text>')
        tick += step
    coords = [(x_of(day), y_of(value)) for day, value in zip(days, values, strict=True)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    base = y_of(0.0)
    if len(coords) > 1:
        area = f"{coords[0][0]:.1f},{base:.1f} {line} {coords[-1][0]:.1f},{base:.1f}"
        parts.append(f'<polygon points="{area}" fill="{color}" fill-opacity="0.12"/>')
        parts.append(f'<polyline class="series" points="{line}" fill="none" stroke="{color}" '
                     'stroke-width="2" stroke-linejoin="round"/>')
    for x, y in coords[-1:] if len(coords) > 1 else coords:
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>')
    label_y = HEIGHT - MARGIN_BOTTOM + 18
    labels = [(days[0], "start")] if len(days) == 1 else [(days[0], "start"), (days[-1], "end")]
    for day, anchor in labels:
        x = x_of(day) if len(days) > 1 else MARGIN_LEFT + plot_w / 2
        anchor = "middle" if len(days) == 1 else anchor
        parts.append(f'<text x="{x:.1f}" y="{label_y}" text-anchor="{anchor}" '
                     f'fill="#5d6878">{day.isoformat()}</text>')
    parts.append("</svg>")
    # Every interpolated value above is a number, a date or escaped text.
    return mark_safe("".join(parts))
