"""Template filters of the community pages."""

from django import template

from apps.web.svg_charts import format_number

register = template.Library()


@register.filter
def compact(value: float | int | None) -> str:
    """1234567 → "1.23M": figures that only need their size at a glance."""
    if value is None:
        return "–"
    return format_number(float(value))


@register.filter
def percent_of(done: float | int | str, total: float | int | str) -> int:
    """``done`` as a whole percentage of ``total`` (0 when the total is 0), capped at 100.

    Either may be a string: ``{% widthratio … as name %}`` gives one.
    """
    done, total = float(done or 0), float(total or 0)
    if not total:
        return 0
    return max(0, min(100, round(100 * done / total)))
