"""Charts as inline SVG, drawn on the server: nothing to load from outside a closed network.

Each chart is drawn at its own pixel size (text stays 12 px whatever the number of bars), with
a value axis on round numbers, a legend, and a tooltip (<title>) on every bar."""

from __future__ import annotations

import math
from collections import defaultdict
from html import escape
from typing import Any

COLORS = {"up": "#0b6e99", "down": "#2e9e6b", "teleconsult": "#8e5cc4"}
KINDS = ("up", "down", "teleconsult")
EMPTY = '<svg class="chart" role="img" aria-label="no data" width="10" height="10"></svg>'
FONT = 12


def _svg(label: str, width: int, height: int) -> str:
    return (
        f'<svg class="chart" role="img" aria-label="{escape(label)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'font-size="{FONT}" font-family="sans-serif">'
    )


def _rect(x: float, y: float, w: float, h: float, color: str, tip: str) -> str:
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{color}">'
        f"<title>{escape(tip)}</title></rect>"
    )


def _text(x: float, y: float, text: str, anchor: str = "start", fill: str = "#1d2733") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}">{escape(text)}</text>'
    )


def _line(x1: float, y1: float, x2: float, y2: float, color: str = "#d8dee6") -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}"/>'


def nice_ticks(top: float, count: int = 5) -> list[int]:
    """Round tick values from 0 to at least `top` (1, 2 or 5 times a power of ten apart)."""
    if top <= 0:
        return [0, 1]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = max(1, int(step))
    return list(range(0, math.ceil(top / step) * step + 1, step))


def _legend(parts: list[str], x: float, y: float, labels: dict[str, str], kinds: list[str]) -> None:
    for kind in kinds:
        parts.append(_rect(x, y - 10, 12, 12, COLORS[kind], labels[kind]))
        parts.append(_text(x + 16, y, labels[kind]))
        x += 24 + FONT * max(2, len(labels[kind])) * 0.9


def stacked_months(pairs: list[dict[str, Any]], labels: dict[str, str]) -> str:
    """Requests sent per month, up-referrals, down-referrals and teleconsults stacked, on a
    value axis, with a legend."""
    months: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
    for p in pairs:
        months[p["month"]][p["direction"]] += p["sent"]
    if not months:
        return EMPTY
    keys = sorted(months)
    kinds = [k for k in KINDS if any(m[k] for m in months.values())]
    ticks = nice_ticks(max(sum(m.values()) for m in months.values()))
    left, plot_h, bar, gap = 44, 200, 28, 18
    width = left + len(keys) * (bar + gap) + gap
    height = plot_h + 64
    scale = plot_h / ticks[-1]
    parts = [_svg("requests per month", max(width, 360), height)]
    for tick in ticks:
        y = 10 + plot_h - tick * scale
        parts.append(_line(left, y, width, y))
        parts.append(_text(left - 6, y + 4, str(tick), "end", "#5f6b7a"))
    for i, month in enumerate(keys):
        x = left + gap + i * (bar + gap)
        y = 10 + plot_h
        for kind in kinds:
            n = months[month][kind]
            if n:
                h = n * scale
                y -= h
                parts.append(_rect(x, y, bar, h, COLORS[kind], f"{month} {labels[kind]} {n}"))
        parts.append(_text(x + bar / 2, 10 + plot_h + 16, month[2:], "middle", "#5f6b7a"))
    _legend(parts, left, height - 8, labels, kinds)
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(items: list[tuple[str, int]], label: str, color: str = "#c2410c") -> str:
    """Horizontal bars, one per item, labelled at the left, the count at the bar's end."""
    if not items:
        return EMPTY
    ticks = nice_ticks(max(n for _, n in items))
    text_w = min(260, 10 + FONT * max(len(name) for name, _ in items))
    plot_w, row = 240, 24
    width = text_w + plot_w + 40
    height = row * len(items) + 28
    scale = plot_w / ticks[-1]
    parts = [_svg(label, width, height)]
    for tick in ticks:
        x = text_w + tick * scale
        parts.append(_line(x, 4, x, height - 20))
        parts.append(_text(x, height - 6, str(tick), "middle", "#5f6b7a"))
    for i, (name, n) in enumerate(items):
        y = 6 + i * row
        w = n * scale
        parts.append(_text(text_w - 6, y + 13, name, "end"))
        parts.append(_rect(text_w, y, w, 16, color, f"{name} {n}"))
        parts.append(_text(text_w + w + 4, y + 13, str(n)))
    parts.append("</svg>")
    return "".join(parts)
