"""Charts drawn on the server as inline SVG: no JavaScript, no CDN, nothing to vendor.

Two shapes are all the dashboard needs: bars (a histogram, leads per minute)
and lines (percentiles over time). Each chart carries a <title> and an
aria-label, and the page shows the same numbers in a table for screen readers.
"""

from __future__ import annotations

import math

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 28, 12, 40
SERIES_COLOURS = ("#2459d6", "#b54708", "#b42318")
MAX_X_LABELS = 12


def bars(labels: list[str], values: list[float], *, title: str, unit: str = "") -> SafeString:
    top = _nice_top(max(values, default=0))
    slot = (WIDTH - LEFT - RIGHT) / max(len(values), 1)
    shapes = []
    for index, value in enumerate(values):
        height = (HEIGHT - TOP - BOTTOM) * (value / top)
        x, y = LEFT + index * slot + slot * 0.12, HEIGHT - BOTTOM - height
        shapes.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.76:.1f}" height="{height:.1f}" fill="{SERIES_COLOURS[0]}">'
            f"<title>{escape(labels[index])}: {_number(value)}{escape(unit)}</title></rect>"
        )
    return _svg(title, _axes(top, unit) + _x_labels(labels, slot, centred=True) + "".join(shapes))


def lines(labels: list[str], series: dict[str, list[float | None]], *, title: str, unit: str = "") -> SafeString:
    top = _nice_top(max((v for values in series.values() for v in values if v is not None), default=0))
    slot = (WIDTH - LEFT - RIGHT) / max(len(labels) - 1, 1)
    shapes, legend_x = [], LEFT
    for colour, (name, values) in zip(SERIES_COLOURS, series.items()):
        for run in _runs(values):  # a gap (no answered lead in a bucket) breaks the line
            points = " ".join(f"{LEFT + i * slot:.1f},{_y(v, top):.1f}" for i, v in run)
            if len(run) == 1:
                i, v = run[0]
                shapes.append(f'<circle cx="{LEFT + i * slot:.1f}" cy="{_y(v, top):.1f}" r="2.5" fill="{colour}"/>')
            else:
                shapes.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        shapes.append(
            f'<rect x="{legend_x}" y="{HEIGHT - 12}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{HEIGHT - 3}" font-size="11">{escape(name)}</text>'
        )
        legend_x += 70
    return _svg(title, _axes(top, unit) + _x_labels(labels, slot, centred=False, y=HEIGHT - 20) + "".join(shapes))


def _svg(title: str, body: str) -> SafeString:
    return mark_safe(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif"><title>{escape(title)}</title>{body}</svg>'
    )


def _axes(top: float, unit: str) -> str:
    parts = []
    for step in range(5):
        value = top * step / 4
        y = _y(value, top)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e7ec"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#667085">{_number(value)}{escape(unit)}</text>'
        )
    return "".join(parts)


def _x_labels(labels: list[str], slot: float, *, centred: bool, y: float = HEIGHT - BOTTOM + 16) -> str:
    every = max(1, math.ceil(len(labels) / MAX_X_LABELS))
    offset = slot / 2 if centred else 0
    return "".join(
        f'<text x="{LEFT + i * slot + offset:.1f}" y="{y:.1f}" font-size="10" text-anchor="middle" fill="#667085">{escape(label)}</text>'
        for i, label in enumerate(labels) if i % every == 0
    )


def _y(value: float, top: float) -> float:
    return HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (value / top)


def _runs(values: list[float | None]) -> list[list[tuple[int, float]]]:
    runs, current = [], []
    for index, value in enumerate(values):
        if value is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((index, value))
    return runs + ([current] if current else [])


def _nice_top(value: float) -> float:
    """The axis maximum: 1, 2, 2.5 or 5 times a power of ten, at or above `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(power * m for m in (1, 2, 2.5, 5, 10) if power * m >= value)


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:.{2 if value < 10 else 1}f}".rstrip("0").rstrip(".")
