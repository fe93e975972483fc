"""Charts as inline SVG, drawn on the server: nothing to load from outside a closed network."""

from __future__ import annotations

from collections import defaultdict
from html import escape
from typing import Any

COLORS = {"up": "#0b6e99", "down": "#2e9e6b"}
EMPTY = '<svg class="chart" role="img" aria-label="no data" width="10" height="10"></svg>'


def _svg(label: str, width: int, height: int) -> str:
    return (
        f'<svg class="chart" role="img" aria-label="{escape(label)}" '
        f'viewBox="0 0 {width} {height}" width="100%">'
    )


def _rect(x: float, y: float, w: float, h: float, color: str, tip: str) -> str:
    return (
        f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{color}">'
        f"<title>{escape(tip)}</title></rect>"
    )


def _text(x: float, y: float, text: str, anchor: str = "start") -> str:
    return f'<text x="{x}" y="{y}" text-anchor="{anchor}">{escape(text)}</text>'


def stacked_months(pairs: list[dict[str, Any]], labels: dict[str, str]) -> str:
    """Referrals sent per month, up and down stacked."""
    months: dict[str, dict[str, int]] = defaultdict(lambda: {"up": 0, "down": 0})
    for p in pairs:
        months[p["month"]][p["direction"]] += p["sent"]
    if not months:
        return EMPTY
    keys = sorted(months)
    top = max(m["up"] + m["down"] for m in months.values()) or 1
    width, height, bar = max(320, 60 * len(keys) + 40), 220, 34
    parts = [_svg("referrals per month", width, height + 40)]
    for i, month in enumerate(keys):
        x = 30 + i * 60
        y = height
        for direction in ("up", "down"):
            n = months[month][direction]
            if n:
                h = round(n / top * (height - 20))
                y -= h
                tip = f"{month} {labels[direction]} {n}"
                parts.append(_rect(x, y, bar, h, COLORS[direction], tip))
        total = months[month]["up"] + months[month]["down"]
        parts.append(_text(x + bar / 2, y - 4, str(total), "middle"))
        parts.append(_text(x + bar / 2, height + 16, month, "middle"))
    for j, direction in enumerate(("up", "down")):
        label = labels[direction]
        parts.append(_rect(30 + j * 90, height + 24, 12, 12, COLORS[direction], label))
        parts.append(_text(46 + j * 90, height + 34, label))
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(items: list[tuple[str, int]]) -> str:
    """Horizontal bars, one per item."""
    if not items:
        return EMPTY
    top = max(n for _, n in items) or 1
    parts = [_svg("decline reasons", 420, 26 * len(items) + 10)]
    for i, (label, n) in enumerate(items):
        y = 8 + i * 26
        w = round(n / top * 220)
        parts.append(_text(0, y + 13, label))
        parts.append(_rect(150, y, w, 18, "#c2410c", f"{label} {n}"))
        parts.append(_text(156 + w, y + 13, str(n)))
    parts.append("</svg>")
    return "".join(parts)
