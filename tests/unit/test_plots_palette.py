"""The statistics panel's Bokeh plots use the page's own sequential ramp (issue 18, "one palette
family app-wide"): app.plots.SEQUENTIAL is static/js/palette.js SEQUENTIAL colour for colour, read
by running node on palette.js, and both plots of the panel are coloured from it."""

from __future__ import annotations

import numpy as np
import pytest

from app import insights, plots
from models.capture import run_capture
from tests.unit.test_js_protocol import NODE, js_exports

PROMPT = "The quick brown fox jumps over the lazy dog."


@pytest.mark.skipif(NODE is None, reason="node is not installed: palette.js cannot be read")
def test_plots_use_the_pages_sequential_ramp():
    lut = js_exports("palette.js")["SEQUENTIAL"]  # a Uint8ClampedArray: {"0": r, "1": g, ...}, RGBA
    page = np.array([lut[str(i)] for i in range(len(lut))]).reshape(-1, 4)[:, :3]  # [256, 3]
    ours = np.array([[int(colour[i : i + 2], 16) for i in (1, 3, 5)] for colour in plots.SEQUENTIAL])
    assert ours.shape == page.shape
    assert np.abs(ours - page).max() <= 1  # rounding of halves only
    assert plots.SEQUENTIAL[0] == "#ffffff" and plots.SEQUENTIAL[-1] == "#081d58"


def test_both_plots_are_coloured_from_it(tiny_models):
    capture = run_capture(tiny_models["tiny-bert"], PROMPT)
    item = plots.head_stats_item(capture, insights.summary(capture))
    palettes = []  # of every colour mapper in the serialised document

    def find(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and node.get("name") == "LinearColorMapper":
                palettes.append(tuple(node["attributes"]["palette"]))
            for value in node.values():
                find(value)
        elif isinstance(node, list):
            for value in node:
                find(value)

    find(item["doc"])
    assert set(palettes) == {plots.SEQUENTIAL, plots.DOTS}
    assert set(plots.DOTS) <= set(plots.SEQUENTIAL)
