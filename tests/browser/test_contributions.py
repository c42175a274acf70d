"""What each token contributes, in a real browser: the norm-based weight modes (Kobayashi et al.
2020) in the head, matrix and token views; the context-mixing view (Kobayashi et al. 2021) with its
per-layer ratios, its four maps, the feed-forward block's maps (Kobayashi et al. 2023) and a share
link that reopens it; and the information-flow routes (Ferrando & Voita 2024)."""

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

MAPS = "[data-testid=mixing-maps]"
RATIOS = "[data-testid=mixing-ratios]"


def test_norm_modes_in_the_head_matrix_and_token_views(page, live_server):
    open_view(page, live_server, model="minilm", text=PROMPT, view="matrix", layer=1, head=3)
    page.click("#view-matrix [data-control=mode] button[data-value=norm]")
    page.wait_for_selector("[data-testid=matrix-canvas][data-mode=norm]")
    assert wait_ink(page, "[data-testid=matrix-canvas]", minimum=5_000)
    assert query_state(page)["mode"] == "norm"

    page.click("[role=tab][data-view=head]")  # the mode carries over to the head view
    page.wait_for_selector("[data-testid=head-canvas][data-ready=true][data-mode=norm]")
    assert page.get_attribute("#view-head [data-control=mode] button[data-value=norm]", "aria-pressed") == "true"

    page.click("[role=tab][data-view=token]")
    page.wait_for_selector("[data-testid=token-outgoing][data-mode=norm]")
    assert wait_ink(page, "[data-testid=token-incoming]", minimum=2_000)
    page.click("#view-token [data-control=mode] button[data-value=attention]")
    page.wait_for_selector("[data-testid=token-outgoing][data-mode=attention]")


def test_context_mixing_view_and_share_link(page, live_server, open_context):
    open_view(page, live_server, model="minilm", text=PROMPT, view="mixing", layer=1)
    page.wait_for_selector(f"{MAPS}[data-layer='1']", timeout=90_000)  # a forward pass on demand
    assert wait_ink(page, MAPS, minimum=20_000)  # four 13 x 13 maps
    assert wait_ink(page, RATIOS, minimum=2_000)
    assert "with the residual and the norm (post-LN" in page.text_content("#view-mixing .view-info")
    page.wait_for_selector("[data-testid=mixing-ff][data-layer='1']", timeout=60_000)  # the FF block's maps
    assert wait_ink(page, "[data-testid=mixing-ff]", minimum=10_000)
    assert "after the FF block with its residual and norm" in page.text_content("#view-mixing .mixing-ff")

    box = page.locator(RATIOS).bounding_box()  # click the last layer's end of the chart
    page.mouse.click(box["x"] + box["width"] - 20, box["y"] + box["height"] * 0.6)
    page.wait_for_selector(f"{MAPS}[data-layer='5']")
    assert query_state(page)["layer"] == "5"

    context, log = open_context()  # the link alone reopens the same layer
    fresh = watch(context.new_page(), log)
    fresh.goto(page.url)
    wait_ready(fresh)
    fresh.wait_for_selector(f"{MAPS}[data-layer='5']", timeout=60_000)
    assert wait_ink(fresh, MAPS, minimum=20_000)


def test_context_mixing_on_a_decoder(page, live_server):
    open_view(page, live_server, model="smollm2", text=PROMPT, view="mixing", layer=3)
    page.wait_for_selector(f"{MAPS}[data-layer='3']", timeout=120_000)
    assert "pre-LN: the feed-forward block's input norm" in page.text_content("#view-mixing .view-info")


ROUTES = "[data-testid=routes-graph]"


def test_information_flow_routes_threshold_link_and_head(page, live_server, open_context):
    open_view(page, live_server, model="smollm2", text=PROMPT, view="routes")
    page.wait_for_selector(f"{ROUTES}[data-edges]", timeout=120_000)  # a forward pass on demand
    assert wait_ink(page, ROUTES, minimum=5_000)
    last = str(page.locator("#view-routes .token-strip button").count() - 1)
    assert page.get_attribute(ROUTES, "data-token") == last  # a decoder's routes lead to its last token
    edges = int(page.get_attribute(ROUTES, "data-edges"))

    page.locator("#view-routes input[name=tau]").fill("0.15")  # a higher threshold keeps fewer edges
    page.wait_for_selector(f"{ROUTES}[data-threshold='0.15']")
    assert int(page.get_attribute(ROUTES, "data-edges")) < edges
    assert query_state(page)["tau"] == "0.15"

    context, log = open_context()  # the link alone restores the route and its threshold
    fresh = watch(context.new_page(), log)
    fresh.goto(page.url)
    wait_ready(fresh)
    fresh.wait_for_selector(f"{ROUTES}[data-threshold='0.15']", timeout=60_000)
    assert fresh.locator("#view-routes input[name=tau]").input_value() == "0.15"

    edge = json.loads(page.get_attribute(ROUTES, "data-probe"))  # a point on an attention edge: its head opens
    page.locator(ROUTES).click(position={"x": edge["x"], "y": edge["y"]})
    page.wait_for_selector("[data-testid=head-canvas][data-ready=true]")
    state = query_state(page)
    assert state["view"] == "head" and state["layer"] == str(edge["layer"]) and state["head"] == str(edge["head"])


def test_norm_modes_in_the_model_view(page, live_server):
    """The model view's thumbnails switch to ||alpha f(x)|| per head (computed by the server from
    the stored record), the mode is in the link, and the matrix view opens in the same mode."""
    open_view(page, live_server, model="minilm", text=PROMPT, view="model")
    canvas = "[data-testid=model-canvas]"
    page.wait_for_selector(f"{canvas}[data-mode=attention]")
    assert wait_ink(page, canvas, minimum=10_000)
    attention = canvas_snapshot(page, canvas)
    page.click("#view-model [data-control=mode] button[data-value=norm]")
    page.wait_for_selector(f"{canvas}[data-mode=norm]", timeout=30_000)
    assert wait_ink(page, canvas, minimum=10_000)
    assert canvas_snapshot(page, canvas) != attention  # a different picture, not the attention again
    assert query_state(page)["mode"] == "norm"
    page.hover(canvas, position=model_cell_center(page, layer=2, head=3))
    assert "strongest ‖αf‖" in page.text_content(".tooltip")
    page.click("#view-model [data-control=mode] button[data-value=value]")
    page.wait_for_selector(f"{canvas}[data-mode=value]", timeout=30_000)
    page.click("[role=tab][data-view=matrix]")
    page.wait_for_selector("[data-testid=matrix-canvas][data-mode=value]")
    page.click("[role=tab][data-view=model]")  # back to attention, and no notice left behind
    page.click("#view-model [data-control=mode] button[data-value=attention]")
    page.wait_for_selector(f"{canvas}[data-mode=attention]")
    assert page.locator("#view-model > .notice").count() == 0
