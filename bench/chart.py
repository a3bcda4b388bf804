"""Draw latency percentiles against load: SVGs for the README (no plotting dependency)
and one PNG with both charts (matplotlib).

    python bench/chart.py bench/results/ingest.json bench/results/ingest-latency.svg
    python bench/chart.py --first-touch bench/results/ingest.json bench/results/first-touch-latency.svg
    python bench/chart.py --png bench/results/ingest.json bench/results/latency.png
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
    """POST /api/v1/leads latency (client side, from the scheduled send time)."""
    title = f"POST /api/v1/leads latency vs load ({report['machine']['cpus']} cores, whole stack on one machine)"
    return _render(report, lambda s: s["ingest_latency_ms"], title, target_ms)


def render_first_touch(report: dict, *, target_ms: float = 2000.0) -> str:
    """Submit -> provider-accepted (capture to WhatsApp's answer), with the fakes' own delay as the floor."""
    steps = [s for s in report["steps"] if "first_touch" in s]
    floor = steps[0]["first_touch"]["fake_delay_ms"] if steps else None
    title = f"First touch: submit → WhatsApp accepted vs load ({report['machine']['cpus']} cores, fakes included)"
    return _render({**report, "steps": steps}, lambda s: s["first_touch"]["submit_to_accepted_ms"], title, target_ms,
                   floor_ms=floor, floor_label="fakes' own delay (model + WhatsApp)")


def _render(report: dict, figures, title: str, target_ms: float, *, floor_ms: float | None = None, floor_label: str = "") -> str:
    steps = report["steps"]
    rates = [s["target_leads_per_min"] for s in steps]
    values = [figures(s)[p] for s in steps for p, _ in SERIES if figures(s)[p]]
    y_min = 10 ** math.floor(math.log10(max(min(values + [floor_ms or math.inf]), 0.5)))
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
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
    ]
    decade = y_min
    while decade <= y_max:
        for mult in (1, 2, 5):
            tick = decade * mult
            if y_min <= tick <= y_max:
                out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eee"/>')
                label = f"{tick / 1000:g} s" if tick >= 1000 else f"{tick:g} ms"
                out.append(f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{label}</text>')
        decade *= 10
    out.append(
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(target_ms):.1f}" y2="{y(target_ms):.1f}" stroke="#555" stroke-dasharray="6 4"/>'
        f'<text x="{WIDTH - RIGHT - 4}" y="{y(target_ms) - 5:.1f}" text-anchor="end" fill="#555">p99 target {target_ms:g} ms</text>'
    )
    if floor_ms:
        out.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(floor_ms):.1f}" y2="{y(floor_ms):.1f}" stroke="#1971c2" stroke-dasharray="2 3"/>'
            f'<text x="{WIDTH - RIGHT - 4}" y="{y(floor_ms) + 14:.1f}" text-anchor="end" fill="#1971c2">{floor_label} {floor_ms:g} ms</text>'
        )
    for i, rate in enumerate(rates):
        out.append(f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">{rate:,.0f}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 18}" text-anchor="middle">leads per minute (open-loop, 60 s per step)</text>')
    for n, (name, color) in enumerate(SERIES):
        points = [(x(i), y(figures(s)[name])) for i, s in enumerate(steps) if figures(s)[name]]
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in points)}"/>')
        out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>' for a, b in points]
        out.append(f'<text x="{LEFT + 10 + n * 60}" y="{TOP + 14}" fill="{color}">■ {name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render_png(report: dict, path: Path) -> None:
    """Ingest latency and submit → accepted, p50/p95/p99 against load, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    steps = report["steps"]
    ft_steps = [s for s in steps if "first_touch" in s]
    panels = [
        ("POST /api/v1/leads (client side)", steps, lambda s: s["ingest_latency_ms"], 50.0, None),
        ("submit → WhatsApp accepted", ft_steps, lambda s: s["first_touch"]["submit_to_accepted_ms"], 2000.0,
         ft_steps[0]["first_touch"]["fake_delay_ms"] if ft_steps else None),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    for ax, (title, rows, figures, target, floor) in zip(axes, panels):
        rates = [s["target_leads_per_min"] for s in rows]
        for name, color in SERIES:
            ax.plot(rates, [figures(s)[name] for s in rows], marker="o", color=color, label=name)
        ax.axhline(target, color="#555", linestyle="--", linewidth=1, label=f"p99 target {target:g} ms")
        if floor:
            ax.axhline(floor, color="#1971c2", linestyle=":", linewidth=1, label=f"fakes' own delay {floor:g} ms")
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        # Between the decades only 2 and 5 (20, 50, 200 ...): every minor label overlaps on a wide range.
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))
        ax.set_title(title)
        ax.set_xlabel("leads per minute (open loop)")
        ax.set_ylabel("ms")
        ax.grid(True, which="both", color="#eee")
        ax.legend(fontsize=8)
    fig.suptitle(f"Latency against load: whole stack, services, fakes and load generator on {report['machine']['cpus']} cores")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    args = sys.argv[1:]
    source, target = Path(args[-2]), Path(args[-1])
    if args[0] == "--png":
        render_png(json.loads(source.read_text()), target)
    else:
        draw = render_first_touch if args[0] == "--first-touch" else render
        target.write_text(draw(json.loads(source.read_text())))
    print(f"chart written to {target}")
