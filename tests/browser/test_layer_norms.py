"""The layer modes (Kobayashi et al. 2020's ||sum_h alpha_h f_h(x)||, one map per layer) in a real
browser: the model view draws one map per layer and opens a layer from it, the head, matrix and
token views draw the layer's map and say that its heads are summed, and a share link reopens the
mode."""

from __future__ import annotations

import json

import pytest

from tests.browser.conftest import watch
from tests.browser.helpers import (
    PROMPT,
    canvas_snapshot,
    model_cell_center,
    open_view,
    query_state,
    wait_ink,
    wait_ready,
)

pytestmark = pytest.mark.browser

MODEL = "[data-testid=model-canvas]"
HEAD = "[data-testid=head-canvas]"
MATRIX = "[data-testid=matrix-canvas]"


def test_layer_modes_in_every_view_and_the_link(page, live_server, open_context):
    open_view(page, live_server, model="minilm", text=PROMPT, view="model")
    page.wait_for_selector(f"{MODEL}[data-mode=attention]")
    per_head = canvas_snapshot(page, MODEL)
    page.click("#view-model [data-control=mode] button[data-value=layer]")
    page.wait_for_selector(f"{MODEL}[data-mode=layer]", timeout=30_000)
    assert wait_ink(page, MODEL, minimum=10_000)
    assert canvas_snapshot(page, MODEL) != per_head
    grid = json.loads(page.get_attribute(MODEL, "data-grid"))
    assert 6 % grid["across"] == 0  # minilm's six layers wrap into rows of `across`
    layer = 4
    cell = model_cell_center(page, layer=layer // grid["across"], head=layer % grid["across"])
    page.hover(MODEL, position=cell)
    assert "all heads summed" in page.text_content(".tooltip") and "layer ‖Σαf‖" in page.text_content(".tooltip")

    page.click(MODEL, position=cell)  # a layer map opens the head view of that layer, in the same mode
    page.wait_for_selector(f"{HEAD}[data-ready=true][data-mode=layer][data-layer='{layer}']")
    assert wait_ink(page, HEAD, minimum=2_000)
    assert page.is_visible("[data-testid=heads-summed]")
    state = query_state(page)
    assert state["view"] == "head" and state["mode"] == "layer" and state["layer"] == str(layer)

    page.click("[role=tab][data-view=matrix]")
    page.click("#view-matrix [data-control=mode] button[data-value=layer_share]")
    page.wait_for_selector(f"{MATRIX}[data-mode=layer_share]")
    assert wait_ink(page, MATRIX, minimum=5_000)
    assert "all heads summed (the head chosen does not apply)" in page.text_content("#view-matrix .zoom-info")

    page.click("[role=tab][data-view=token]")  # the token view has no shares: it shows attention until asked
    page.click("#view-token [data-control=mode] button[data-value=layer]")
    page.wait_for_selector("[data-testid=token-outgoing][data-mode=layer]")
    assert wait_ink(page, "[data-testid=token-incoming]", minimum=1_000)
    assert "Rows: layers" in page.text_content("#view-token .view-status")

    page.click("[role=tab][data-view=matrix]")  # the token view's mode carried over; back to shares
    page.wait_for_selector(f"{MATRIX}[data-mode=layer]")
    page.click("#view-matrix [data-control=mode] button[data-value=layer_share]")
    page.wait_for_selector(f"{MATRIX}[data-mode=layer_share]")
    assert query_state(page)["mode"] == "layer_share"
    context, log = open_context()  # the link alone reopens the layer share map
    fresh = watch(context.new_page(), log)
    fresh.goto(page.url)
    wait_ready(fresh)
    fresh.wait_for_selector(f"{MATRIX}[data-mode=layer_share]", timeout=60_000)
    pressed = "#view-matrix [data-control=mode] button[data-value=layer_share]"
    assert fresh.get_attribute(pressed, "aria-pressed") == "true"
    assert wait_ink(fresh, MATRIX, minimum=5_000)
