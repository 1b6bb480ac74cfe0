"""Template filters of the research pages: figures that may be missing or infinite."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from django import template

register = template.Library()

MISSING = "—"


def _finite(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if not math.isnan(number) else None


@register.filter
def pct(value: object, digits: int = 1) -> str:
    """A fraction as a percentage: 0.1234 → "12.3 %"; missing → "—"."""
    number = _finite(value)
    if number is None:
        return MISSING
    if math.isinf(number):
        return "∞" if number > 0 else "−∞"
    return f"{number * 100:,.{int(digits)}f} %".replace("-", "−")


@register.filter
def fixed(value: object, digits: int = 2) -> str:
    """A number with ``digits`` decimals; infinite ratios as ∞ (no losing trade); missing "—"."""
    number = _finite(value)
    if number is None:
        return MISSING
    if math.isinf(number):
        return "∞" if number > 0 else "−∞"
    return f"{number:,.{int(digits)}f}".replace("-", "−")


@register.filter
def prob(value: object) -> str:
    """A probability with three decimals (0.900), missing "—"."""
    return fixed(value, 3)


@register.filter
def prob_class(value: object) -> str:
    """A badge class for a PSR/DSR: significant at 95 %, weak, or not at all."""
    number = _finite(value)
    if number is None:
        return "badge"
    if number >= 0.95:
        return "badge badge-ok"
    if number >= 0.5:
        return "badge badge-warn"
    return "badge badge-error"


_SCALES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


@register.filter
def si(value: object) -> str:
    """Large counts at a glance: 12_345_678 → "12.3 M"."""
    number = _finite(value)
    if number is None:
        return MISSING
    for scale, suffix in _SCALES:
        if abs(number) >= scale:
            return f"{number / scale:.3g} {suffix}"
    return f"{number:,.0f}"


@register.filter
def duration(seconds: object) -> str:
    """Seconds of CPU time as the largest sensible unit: "42 s", "7.5 min", "3.2 h", "4.1 d"."""
    number = _finite(seconds)
    if number is None:
        return MISSING
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "min")):
        if number >= size:
            return f"{number / size:.1f} {unit}"
    return f"{number:.0f} s"


@register.filter
def from_unix(seconds: object) -> datetime | None:
    """Unix seconds → an aware UTC datetime, for the ``date`` filter."""
    number = _finite(seconds)
    return datetime.fromtimestamp(number, tz=UTC) if number is not None else None


@register.filter
def plain(value: object) -> str:
    """A setting's value in words: lists joined with commas, tuples with slashes."""
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, list | tuple) for v in value):
            return ", ".join("/".join(str(x) for x in v) for v in value)
        return ", ".join(str(v) for v in value)
    if value is None:
        return MISSING
    return str(value)
