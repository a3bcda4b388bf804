"""Formatting for the dashboard: durations from milliseconds, shares as percentages."""

from django import template

register = template.Library()


@register.filter
def duration_ms(value) -> str:
    if value is None or value == "":
        return "–"
    value = float(value)
    if value < 1000:
        return f"{value:.0f} ms"
    if value < 60_000:
        return f"{value / 1000:.2f} s"
    if value < 3_600_000:
        return f"{value / 60_000:.1f} min"
    return f"{value / 3_600_000:.1f} h"


@register.filter
def percent(value) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.1f}%"


@register.filter
def bar_width(value) -> str:
    """A share as a CSS width, never 0 wide for a non-zero count."""
    if not value:
        return "0%"
    return f"{max(value * 100, 0.5):.1f}%"
