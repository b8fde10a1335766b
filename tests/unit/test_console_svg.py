"""The console's SVG renderers: every text escaped, nothing but attributes for style,
empty and one-point series, lines scaled to the plot, the region graph's marks."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from markupsafe import Markup

from crawlers.console.svg import Node, line_chart, number_label, region_graph, ticks, time_ticks

EVIL = '<script>alert("x")</script>'
SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: Markup) -> ET.Element:
    """Well-formed XML, or the test fails; never a style attribute (the CSP forbids them)."""
    root = ET.fromstring(str(svg))
    assert all("style" not in element.attrib for element in root.iter())
    return root


def _points(root: ET.Element, series: str) -> list[tuple[float, float]]:
    line = next(e for e in root.iter(f"{SVG}polyline") if e.get("data-series") == series)
    return [(float(x), float(y)) for x, y in (p.split(",") for p in line.get("points", "").split())]


def test_names_and_titles_are_escaped() -> None:
    svg = line_chart({EVIL: [(0, 1), (1, 2)]}, title=EVIL, x_label=str)
    assert isinstance(svg, Markup)
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    root = _parse(svg)
    assert [t.text for t in root.iter(f"{SVG}text") if t.text == EVIL] == [EVIL]  # the legend
    assert root.get("aria-label") == EVIL
    graph = region_graph([Node(EVIL, "active", ('"><b>',)), Node('"><b>', "quarantined")])
    assert "<script>" not in graph and '"><b>' not in graph
    names = {g.get("data-region") for g in _parse(graph).iter(f"{SVG}g") if g.get("data-region")}
    assert names == {EVIL, '"><b>'}


def test_no_points_is_a_message_not_a_broken_chart() -> None:
    empties: list[dict[str, list[tuple[float, float]]]] = [
        {}, {"a": []}, {"a": [(float("nan"), 1.0), (1.0, float("inf"))]},
    ]  # fmt: skip
    for series in empties:
        root = _parse(line_chart(series, empty="Nothing <yet>"))
        texts = [t.text for t in root.iter(f"{SVG}text")]
        assert texts == ["Nothing <yet>"]
        assert not list(root.iter(f"{SVG}polyline"))
    assert "No regions." in region_graph([])


def test_one_point_is_a_dot_in_the_middle() -> None:
    root = _parse(line_chart({"only": [(1_700_000_000.0, 5.0)]}, width=400))
    assert not list(root.iter(f"{SVG}polyline"))
    (dot,) = root.iter(f"{SVG}circle")
    assert dot.get("data-series") == "only"
    left, right = 56, 400 - 12
    assert abs(float(dot.get("cx", 0)) - (left + right) / 2) < 0.2
    assert len([t for t in root.iter(f"{SVG}text")]) >= 3  # y ticks, x ticks, legend


def test_lines_are_scaled_to_the_plot_and_share_the_axes() -> None:
    series = {
        "up": [(10.0, 0.0), (20.0, 50.0), (30.0, 100.0)],
        "flat": [(10.0, 25.0), (30.0, 25.0)],
    }
    root = _parse(line_chart(series, width=600, height=300, x_label=lambda x: f"{x:g}s"))
    up, flat = _points(root, "up"), _points(root, "flat")
    (x0, y0), (x1, y1), (x2, y2) = up
    assert x0 < x1 < x2 and y0 > y1 > y2  # SVG's y grows downwards
    assert abs((x1 - x0) - (x2 - x1)) < 0.2 and abs((y0 - y1) - (y1 - y2)) < 0.2
    assert (flat[0][0], flat[-1][0]) == (x0, x2)  # same x range
    assert abs((y0 - flat[0][1]) / (y0 - y2) - 0.25) < 0.01  # 25 of 100, on the same y scale
    assert all(0 <= x <= 600 and 0 <= y <= 300 for x, y in up + flat)
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "10s" in labels and "30s" in labels and "100" in labels and "0" in labels
    colours = {e.get("data-series"): e.get("stroke") for e in root.iter(f"{SVG}polyline")}
    assert colours["up"] != colours["flat"]


def test_chosen_colours_and_time_axes() -> None:
    start = 1_764_500_000.0
    root = _parse(line_chart({"ok": [(start, 1), (start + 3600, 2)]}, colours={"ok": "#00ff00"}))
    assert next(root.iter(f"{SVG}polyline")).get("stroke") == "#00ff00"
    labels = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert any(re.fullmatch(r"\d\d:\d\d", label) for label in labels), labels
    assert all(mark % 900 == 0 for mark in time_ticks(start, start + 3600))


def test_round_ticks_and_labels() -> None:
    assert ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert ticks(0, 7) == [0, 2, 4, 6]
    assert ticks(5, 5) == [5]
    assert [number_label(v) for v in (0, 950, 1500, 2_000_000, 0.25)] == [
        "0", "950", "1.5k", "2M", "0.25",
    ]  # fmt: skip


def test_the_region_graph_marks_states_and_draws_each_edge_once() -> None:
    nodes = [
        Node("north", "active", ("east", "west")),
        Node("east", "quarantined", ("north",)),
        Node("south", "idle", ("nowhere",)),
        Node("west", "strange", ()),
    ]
    root = _parse(region_graph(nodes))
    groups = {g.get("data-region"): g for g in root.iter(f"{SVG}g") if g.get("data-region")}
    assert {name: g.get("data-state") for name, g in groups.items()} == {
        "north": "active", "east": "quarantined", "south": "idle", "west": "idle",
    }  # fmt: skip
    fills = {name: next(g.iter(f"{SVG}circle")).get("fill") for name, g in groups.items()}
    assert fills["north"] != fills["east"] != fills["south"]
    assert next(groups["east"].iter(f"{SVG}circle")).get("stroke-dasharray")
    edges = sorted(line.get("data-edge") or "" for line in root.iter(f"{SVG}line"))
    assert edges == ["east north", "north west"]  # once each; unknown neighbours left out
    circles = [next(g.iter(f"{SVG}circle")) for g in groups.values()]
    spots = {(c.get("cx"), c.get("cy")) for c in circles}
    assert len(spots) == 4  # laid out apart
    (single,) = [g for g in _parse(region_graph([Node("solo", "active")])).iter(f"{SVG}g")
                 if g.get("data-region")]  # fmt: skip
    assert next(single.iter(f"{SVG}circle")).get("cx") == "210.0"  # alone: in the centre
