"""Draw latency percentiles against load as an SVG (no plotting dependency).

    python bench/chart.py bench/results/ingest.json bench/results/ingest-latency.svg
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

WIDTH, HEIGHT = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 60
SERIES = (("p50", "#2b8a3e"), ("p95", "#e67700"), ("p99", "#c92a2a"))


def render(report: dict, *, target_ms: float = 50.0) -> str:
    steps = report["steps"]
    rates = [s["target_leads_per_min"] for s in steps]
    values = [s["ingest_latency_ms"][p] for s in steps for p, _ in SERIES if s["ingest_latency_ms"][p]]
    y_min = 10 ** math.floor(math.log10(max(min(values), 0.5)))
    y_max = 10 ** math.ceil(math.log10(max(max(values), target_ms * 1.5)))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * (i + 0.5) / len(rates))

    def y(ms: float) -> float:
        span = math.log10(y_max) - math.log10(y_min)
        return TOP + plot_h * (1 - (math.log10(max(ms, y_min)) - math.log10(y_min)) / span)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">POST /api/v1/leads latency vs load '
        f'({report["machine"]["cpus"]} cores, whole stack on one machine)</text>',
    ]
    decade = y_min
    while decade <= y_max:
        for mult in (1, 2, 5):
            tick = decade * mult
            if y_min <= tick <= y_max:
                out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eee"/>')
                out.append(f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g} ms</text>')
        decade *= 10
    out.append(
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(target_ms):.1f}" y2="{y(target_ms):.1f}" stroke="#555" stroke-dasharray="6 4"/>'
        f'<text x="{WIDTH - RIGHT - 4}" y="{y(target_ms) - 5:.1f}" text-anchor="end" fill="#555">p99 target {target_ms:g} ms</text>'
    )
    for i, rate in enumerate(rates):
        out.append(f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">{rate:,.0f}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 18}" text-anchor="middle">leads per minute (open-loop, 60 s per step)</text>')
    for n, (name, color) in enumerate(SERIES):
        points = [(x(i), y(s["ingest_latency_ms"][name])) for i, s in enumerate(steps) if s["ingest_latency_ms"][name]]
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in points)}"/>')
        out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>' for a, b in points]
        out.append(f'<text x="{LEFT + 10 + n * 60}" y="{TOP + 14}" fill="{color}">■ {name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    target.write_text(render(json.loads(source.read_text())))
    print(f"chart written to {target}")
