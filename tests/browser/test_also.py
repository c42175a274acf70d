"""Issue 18's "Also" list in a real browser: compare opens on its most changed head and says its
example replaces prompt A; the logit lens and the statistics scatter carry colour legends; the
projector view starts in the top third of a 1080-line screen."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from tests.browser.helpers import PROMPT, open_view, query_state, wait_ink

pytestmark = pytest.mark.browser

DIFFERENCE = "[data-testid=compare-difference]"


def test_compare_opens_on_the_most_changed_head(page, live_server):
    open_view(page, live_server, model="minilm", text=PROMPT, view="compare")
    preset = page.locator("#view-compare [data-control=preset]")
    assert "replaces prompt A" in preset.text_content()
    preset.click()
    page.wait_for_selector(f"{DIFFERENCE}[data-ready=true]", timeout=60_000)
    top = page.locator("[data-testid=changed-heads] button[data-layer]").first
    page.wait_for_function("() => new URLSearchParams(location.search).get('head') !== null")
    state = query_state(page)
    assert (state["layer"], state["head"]) == (top.get_attribute("data-layer"), top.get_attribute("data-head"))
    assert (state["layer"], state["head"]) != ("0", "0")


PAGE_RAMP = """async () => {
  const { SEQUENTIAL } = await import("/static/js/palette.js");
  return Array.from({ length: SEQUENTIAL.length / 4 }, (_, i) => [0, 1, 2].map((c) => SEQUENTIAL[i * 4 + c]));
}"""


def test_lens_and_statistics_have_colour_legends(page, live_server):
    open_view(page, live_server, model="smollm2", text="The capital of France is", view="lens")
    page.wait_for_selector("[data-testid=lens-table] td")
    assert page.is_visible("[data-testid=lens-legend]") and wait_ink(page, "[data-testid=lens-legend]", minimum=500)
    page.click("[role=tab][data-view=stats]")
    page.wait_for_selector("[data-testid=stats-plot][data-state=ready]", timeout=30_000)
    key = page.get_attribute("html", "data-analysis")
    plot = json.dumps(json.loads(urllib.request.urlopen(f"{live_server}/api/analysis/{key}/stats").read()))
    bars = re.findall(r'"type": "object", "name": "ColorBar".{0,2000}?"title": "(\w+)"', plot)
    assert {"entropy", "layer"} <= set(bars), bars  # the scatter's colours (layers) have their key too
    # one palette family: both plots' colours are the page's own sequential ramp, as the page loaded it
    ramp = page.evaluate(PAGE_RAMP)  # [256, 3]
    palettes = [json.loads(f"[{found}]") for found in re.findall(r'"palette": \[([^\]]*)\]', plot)]
    assert len(palettes) == 2, palettes
    for palette in palettes:
        rgb = [[int(colour[i : i + 2], 16) for i in (1, 3, 5)] for colour in palette]
        offset = len(ramp) - len(rgb)  # the scatter's dots skip the palest entries
        assert max(abs(a - b) for ours, theirs in zip(rgb, ramp[offset:]) for a, b in zip(ours, theirs)) <= 1


def test_projector_mode_puts_the_view_first(page, live_server):
    page.set_viewport_size({"width": 1920, "height": 1080})
    open_view(page, live_server, model="minilm", text=PROMPT, view="model")
    page.click("#projector")
    page.wait_for_selector("html.projector")
    box = page.locator("#view-model").bounding_box()
    assert box["y"] < 1080 / 3, box
    assert page.evaluate("() => document.querySelector('#prompt').getBoundingClientRect().height") < 60
    page.fill("#prompt", "Still editable in one line.")
    assert page.input_value("#prompt") == "Still editable in one line."
