"""Charts drawn on the server as SVG: no chart library, no script, nothing to load.

The console's Content-Security-Policy forbids inline scripts and ``style=``
attributes, so everything is drawn with presentation attributes (``fill=``,
``stroke=``) and CSS classes. Every text that reaches the markup (a series or
region name, a label) goes through :func:`markupsafe.escape`, so a name like
``<script>`` is shown, never run; numbers are formatted by this module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

#: series colours, in order (readable on white, distinguishable in print)
PALETTE = ("#2456b3", "#1d7a3a", "#b3261e", "#9a6700", "#6f42c1", "#0f7b8a", "#c2410c", "#5c6773")
#: how each region state is drawn: (fill, stroke)
NODE_COLOURS = {
    "active": ("#1d7a3a", "#14532d"),
    "quarantined": ("#fde8e7", "#b3261e"),
    "idle": ("#ffffff", "#8a96a3"),
}
#: steps for time axes, in seconds: round minutes, hours and days
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
              43200, 86400, 172800, 604800)  # fmt: skip
Points = list[tuple[float, float]]


def _n(value: float) -> str:
    """A coordinate: one decimal is finer than a pixel."""
    return f"{value:.1f}"


def number_label(value: float) -> str:
    """A tick label: 950, 1.5k, 2M, 0.25."""
    size = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def time_label(span: float) -> Callable[[float], str]:
    """Tick labels for epoch seconds (UTC): the time of day, with the date for long spans."""
    pattern = "%m-%d %H:%M" if span > 86_400 else "%H:%M:%S" if span < 600 else "%H:%M"
    return lambda t: time.strftime(pattern, time.gmtime(t))


def time_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round moments (whole minutes, hours...) from ``low`` to ``high``."""
    if high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    step = next((s for s in TIME_STEPS if s >= raw), None)
    if step is None:
        return ticks(low, high, count)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten) from ``low`` to ``high``."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def line_chart(
    series: dict[str, Points],
    *,
    width: int = 720,
    height: int = 260,
    title: str = "",
    colours: dict[str, str] | None = None,
    x_label: Callable[[float], str] | None = None,
    y_label: Callable[[float], str] = number_label,
    empty: str = "No data yet.",
) -> Markup:
    """Named series of ``(x, y)`` points as lines over a shared x axis (epoch seconds unless
    ``x_label`` says otherwise), y from zero, with tick labels and a legend. Points that
    are not finite numbers are left out; a series of one point is drawn as a dot."""
    clean = {
        name: sorted((x, y) for x, y in points if math.isfinite(x) and math.isfinite(y))
        for name, points in series.items()
    }
    every = [point for points in clean.values() for point in points]
    label = escape(title or "chart")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" aria-label="{label}">'
        f"<title>{label}</title>"
    ]
    if not every:
        out.append(
            f'<text class="empty" x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" '
            f'fill="#5c6773" font-size="13">{escape(empty)}</text></svg>'
        )
        return Markup("".join(out))
    left, right, top, bottom = 56, 12, 30, 26
    xs, ys = [x for x, _ in every], [y for _, y in every]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:  # one moment: put it in the middle
        x_low, x_high = x_low - 1, x_high + 1
    y_low, y_high = min(0.0, min(ys)), max(ys)
    if y_high == y_low:
        y_high = y_low + 1
    y_marks = ticks(y_low, y_high)
    y_high = max(y_high, y_marks[-1])
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y_low) / (y_high - y_low) * plot_h

    out.append('<g class="axes" font-size="11" fill="#5c6773">')
    for mark in y_marks:
        y = _n(sy(mark))
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y}" y2="{y}" stroke="#e6e9ee"/>'
            f'<text x="{left - 6}" y="{y}" text-anchor="end" dominant-baseline="middle">'
            f"{escape(y_label(mark))}</text>"
        )
    fmt = x_label or time_label(x_high - x_low)
    x_marks = (time_ticks if x_label is None else ticks)(x_low, x_high, 5)
    for mark in x_marks if len(x_marks) > 1 else [x_low, x_high]:
        x = _n(sx(mark))
        # a label near an edge is anchored inside the picture, so it is never cut
        anchor = "end" if sx(mark) > width - right - 40 else "start" if sx(mark) < 40 else "middle"
        out.append(
            f'<line x1="{x}" x2="{x}" y1="{top + plot_h}" y2="{top + plot_h + 4}" '
            f'stroke="#8a96a3"/><text x="{x}" y="{height - 8}" text-anchor="{anchor}">'
            f"{escape(fmt(mark))}</text>"
        )
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" '
        f'stroke="#8a96a3"/><line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" '
        f'stroke="#8a96a3"/></g>'
    )
    legend_x = left
    for index, (name, points) in enumerate(clean.items()):
        colour = escape((colours or {}).get(name) or PALETTE[index % len(PALETTE)])
        text = escape(name)
        out.append(
            f'<g class="legend" font-size="12"><rect x="{legend_x}" y="8" width="12" height="12" '
            f'fill="{colour}"/><text x="{legend_x + 16}" y="18" fill="#1d232b">{text}</text></g>'
        )
        legend_x += 30 + 7 * len(name)
        if len(points) == 1:
            ((px, py),) = points
            out.append(
                f'<circle class="series" data-series="{text}" cx="{_n(sx(px))}" cy="{_n(sy(py))}" '
                f'r="3" fill="{colour}"/>'
            )
        elif points:
            coords = " ".join(f"{_n(sx(px))},{_n(sy(py))}" for px, py in points)
            out.append(
                f'<polyline class="series" data-series="{text}" points="{coords}" fill="none" '
                f'stroke="{colour}" stroke-width="2" stroke-linejoin="round"/>'
            )
    out.append("</svg>")
    return Markup("".join(out))


@dataclass(frozen=True)
class Node:
    """A region in the graph: its name, state (``active``, ``quarantined``, ``idle``) and
    the regions that take over for it."""

    name: str
    state: str
    neighbours: Sequence[str] = ()


def region_graph(nodes: Sequence[Node], *, size: int = 420) -> Markup:
    """Regions on a circle, a line between neighbours, each node coloured by its state
    (``region-<state>`` classes), with a legend. An edge is drawn once, whichever side
    names the other."""
    label_room = 34
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart graph" role="img" '
        f'viewBox="0 0 {size} {size + label_room}" width="{size}" height="{size + label_room}" '
        f'aria-label="region graph"><title>region graph</title>'
    ]
    if not nodes:
        out.append(
            f'<text class="empty" x="{size / 2:.0f}" y="{size / 2:.0f}" text-anchor="middle" '
            f'fill="#5c6773" font-size="13">No regions.</text></svg>'
        )
        return Markup("".join(out))
    centre = size / 2
    radius = 0.0 if len(nodes) == 1 else size / 2 - 50
    dot = max(7.0, min(18.0, 2 * math.pi * max(radius, 1) / len(nodes) / 3))
    where: dict[str, tuple[float, float]] = {}
    for index, node in enumerate(nodes):
        angle = 2 * math.pi * index / len(nodes) - math.pi / 2
        where[node.name] = (centre + radius * math.cos(angle), centre + radius * math.sin(angle))
    edges = {
        tuple(sorted((node.name, other)))
        for node in nodes
        for other in node.neighbours
        if other in where and other != node.name
    }
    out.append('<g class="edges" stroke="#a9b4c2" stroke-width="1.5">')
    for a, b in sorted(edges):
        (x1, y1), (x2, y2) = where[a], where[b]
        out.append(
            f'<line data-edge="{escape(a)} {escape(b)}" '
            f'x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}"/>'
        )
    out.append("</g>")
    for node in nodes:
        state = node.state if node.state in NODE_COLOURS else "idle"
        fill, stroke = NODE_COLOURS[state]
        dash = ' stroke-dasharray="4 3"' if state == "quarantined" else ""
        x, y = where[node.name]
        name = escape(node.name)
        below = y >= centre or len(nodes) == 1
        label_y = y + dot + 14 if below else y - dot - 6
        out.append(
            f'<g class="region region-{state}" data-region="{name}" data-state="{state}">'
            f"<title>{name}: {escape(node.state)}</title>"
            f'<circle cx="{_n(x)}" cy="{_n(y)}" r="{_n(dot)}" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="{3 if state == "active" else 2}"{dash}/>'
            f'<text x="{_n(x)}" y="{_n(label_y)}" text-anchor="middle" font-size="12" '
            f'fill="#1d232b">{name}</text></g>'
        )
    legend_x = 10.0
    for state, (fill, stroke) in NODE_COLOURS.items():
        out.append(
            f'<g class="legend" font-size="12"><circle cx="{_n(legend_x + 6)}" '
            f'cy="{size + label_room - 12}" r="6" fill="{fill}" stroke="{stroke}"/>'
            f'<text x="{_n(legend_x + 16)}" y="{size + label_room - 8}" fill="#1d232b">'
            f"{state}</text></g>"
        )
        legend_x += 30 + 7 * len(state)
    out.append("</svg>")
    return Markup("".join(out))
