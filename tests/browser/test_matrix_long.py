"""The matrix view on a long prompt (issue 18, point 8): the heatmap fills the width, and the
token labels thin out legibly: every shown label is "position token", spaced apart, with no bare
indices mixed in. Read from the view's own drawing (its vector SVG export)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree

import pytest

from tests.browser.helpers import open_view
from tests.browser.test_exports_papers import SVG_NS, download

pytestmark = pytest.mark.browser

LONG = "The committee met on Tuesday to discuss the budget, the schedule and the new building. " * 18
CANVAS = "[data-testid=matrix-canvas]"


def test_long_prompt_fills_the_width_with_thinned_token_labels(page, live_server):
    open_view(page, live_server, model="minilm", text=LONG, view="matrix", layer=3, head=1)
    page.wait_for_selector(f"{CANVAS}[data-grid]")
    page.wait_for_timeout(300)
    assert "pooled to 256 × 256" in page.text_content("#view-matrix .zoom-info")
    grid = json.loads(page.get_attribute(CANVAS, "data-grid"))
    width = page.locator(CANVAS).bounding_box()["width"]
    assert grid["left"] + 256 * grid["cell"] >= 0.9 * (width - 24)  # the cells take the width
    assert grid["cell"] >= grid["cellH"]  # wider than tall, not a small square in a corner

    page.click("[data-testid=open-export]")
    _, body = download(page, "export-svg")
    texts = [(node.text or "", node) for node in ElementTree.fromstring(body).iter(f"{SVG_NS}text")]
    numbered = [(text, node) for text, node in texts if re.fullmatch(r"\d+ \S.*", text)]
    assert len(numbered) >= 30, [text for text, _ in texts]
    assert {text for text, _ in texts if re.fullmatch(r"\d+", text)} <= {"0"}  # only the legend's 0
    rows = sorted(float(node.get("y")) for _, node in numbered if node.get("text-anchor") == "end")
    assert len(rows) >= 15 and min(b - a for a, b in zip(rows, rows[1:])) >= 12  # no label overlaps the next
    positions = [int(text.split()[0]) for text, node in numbered if node.get("text-anchor") == "end"]
    assert positions == sorted(positions) and positions[0] == 0 and positions[-1] > 200
