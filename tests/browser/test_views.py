"""The app in a real browser: every view paints, clicks move between views, share links and
back/forward restore view state, tokens stay text, and nothing loads from outside."""

from __future__ import annotations

import json

import pytest

from tests.browser.conftest import watch
from tests.browser.helpers import (
    PROMPT,
    analyze,
    canvas_snapshot,
    head_token_position,
    ink,
    model_cell_center,
    open_view,
    query_state,
    wait_ink,
    wait_ready,
)

pytestmark = pytest.mark.browser

MODEL_CANVAS = "[data-testid=model-canvas]"
HEAD_CANVAS = "[data-testid=head-canvas]"
NEURON_CANVAS = "[data-testid=neuron-canvas]"
MATRIX_CANVAS = "[data-testid=matrix-canvas]"


def test_model_view_paints_every_head(page, live_server):
    analyze(page, live_server)
    assert query_state(page)["view"] == "model"
    assert query_state(page)["text"] == PROMPT
    assert wait_ink(page, MODEL_CANVAS, minimum=20_000) > 20_000  # 72 thumbnails, not a blank canvas
    info = page.text_content("#run-info")
    assert "13 tokens" in info and "6 layers × 12 heads" in info


def test_thumbnail_opens_head_view_and_hover_isolates_a_token(page, live_server):
    analyze(page, live_server)
    page.click(MODEL_CANVAS, position=model_cell_center(page, layer=2, head=3))
    page.wait_for_selector(f"{HEAD_CANVAS}[data-ready=true]")
    state = query_state(page)
    assert (state["view"], state["layer"], state["head"], state["heads"]) == ("head", "2", "3", "3")
    assert page.input_value("select[name=layer]") == "2"
    assert page.get_attribute(".swatch[data-head='3']", "aria-pressed") == "true"
    assert page.get_attribute(".swatch[data-head='4']", "aria-pressed") == "false"
    wait_ink(page, HEAD_CANVAS)

    before = canvas_snapshot(page, HEAD_CANVAS)
    page.hover(HEAD_CANVAS, position=head_token_position(page, 2))  # «cat» in the query column
    page.wait_for_function(f"() => document.querySelector('{HEAD_CANVAS}').dataset.hover === 'q:2'")
    page.wait_for_function(f"(before) => document.querySelector('{HEAD_CANVAS}').toDataURL() !== before", arg=before)
    assert "«cat» (token 2) attends most to" in page.text_content("#view-head .view-status")

    page.mouse.move(2, 2)  # leaving the canvas shows every link again
    page.wait_for_function(f"() => document.querySelector('{HEAD_CANVAS}').dataset.hover === ''")


def test_neuron_view_paints_vectors_and_softmax(page, live_server):
    open_view(page, live_server, model="minilm", text=PROMPT, view="neuron", layer=1, head=4, token=3)
    page.wait_for_selector(f"{NEURON_CANVAS}[data-query='3']")
    assert wait_ink(page, NEURON_CANVAS, minimum=5_000)
    assert wait_ink(page, "[data-testid=neuron-header]", minimum=500)
    assert "Layer 1, head 4" in page.text_content("#view-neuron .view-info")
    page.click("#view-neuron .token-strip button[data-index='5']")  # another query token
    page.wait_for_selector(f"{NEURON_CANVAS}[data-query='5']")
    assert query_state(page)["token"] == "5"


def test_share_link_restores_the_view_in_a_fresh_browser(page, live_server, open_context):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    analyze(page, live_server)
    page.click(MODEL_CANVAS, position=model_cell_center(page, layer=4, head=7))
    page.wait_for_selector(f"{HEAD_CANVAS}[data-ready=true]")
    page.click(HEAD_CANVAS, position=head_token_position(page, 3))  # choose «sat»
    page.click("[role=tab][data-view=neuron]")
    page.wait_for_selector(f"{NEURON_CANVAS}[data-query='3']")
    page.click("#copy-link")
    page.wait_for_selector("#share:not([hidden])")
    link = page.input_value("#share-field")
    assert link == page.url
    assert page.evaluate("() => navigator.clipboard.readText()") == link

    context, log = open_context()  # a new profile: no state, no history
    fresh = watch(context.new_page(), log)
    fresh.goto(link)
    wait_ready(fresh)
    fresh.wait_for_selector(f"{NEURON_CANVAS}[data-query='3']")
    state = query_state(fresh)
    assert (state["view"], state["layer"], state["head"], state["token"]) == ("neuron", "4", "7", "3")
    assert fresh.get_attribute("html", "data-view") == "neuron"
    assert fresh.input_value("#view-neuron select[name=layer]") == "4"
    assert fresh.input_value("#view-neuron select[name=head]") == "7"
    assert fresh.get_attribute("#view-neuron .token-strip [aria-pressed=true]", "data-index") == "3"
    assert fresh.input_value("#prompt") == PROMPT
    assert wait_ink(fresh, NEURON_CANVAS, minimum=5_000)
    assert "from cache" in fresh.text_content("#run-info")  # the link re-used the server's analysis
    assert not log.errors and not log.external_requests()


def test_back_and_forward_restore_view_states(page, live_server):
    analyze(page, live_server)
    page.click(MODEL_CANVAS, position=model_cell_center(page, layer=1, head=2))
    page.wait_for_selector(f"{HEAD_CANVAS}[data-ready=true]")
    page.click("[role=tab][data-view=token]")
    page.wait_for_selector("html[data-view=token]")

    page.go_back()
    page.wait_for_selector("html[data-view=head]")
    assert page.input_value("#view-head select[name=layer]") == "1"
    assert page.get_attribute(f"{HEAD_CANVAS}", "data-layer") == "1"
    page.go_back()
    page.wait_for_selector("html[data-view=model]")
    assert "view=model" in page.url
    page.go_forward()
    page.wait_for_selector("html[data-view=head]")
    assert (query_state(page)["layer"], query_state(page)["head"]) == ("1", "2")
    page.go_forward()
    page.wait_for_selector("html[data-view=token]")


def test_token_view_shows_both_directions(page, live_server):
    open_view(page, live_server, model="minilm", text=PROMPT, view="token", token=2)
    for panel in ("outgoing", "incoming"):
        page.wait_for_selector(f"[data-testid=token-{panel}][data-token='2']")
        assert wait_ink(page, f"[data-testid=token-{panel}]", minimum=2_000)
    page.click("#view-token .token-strip button[data-index='6']")
    page.wait_for_selector("[data-testid=token-outgoing][data-token='6']")
    assert query_state(page)["token"] == "6"
    assert "«mat»" in page.text_content("#view-token h3")


def test_matrix_view_switches_to_scores_and_zooms(page, live_server):
    open_view(page, live_server, model="minilm", text=PROMPT, view="matrix", layer=0, head=0)
    page.wait_for_selector(f"{MATRIX_CANVAS}[data-block='0,13,0,13']")
    wait_ink(page, MATRIX_CANVAS, minimum=5_000)
    page.click("#view-matrix [data-control=mode] button[data-value=scores]")
    page.wait_for_selector(f"{MATRIX_CANVAS}[data-mode=scores]")
    assert query_state(page)["mode"] == "scores"

    grid = json.loads(page.get_attribute(MATRIX_CANVAS, "data-grid"))
    box = page.locator(MATRIX_CANVAS).bounding_box()

    def at(cell):
        return (
            box["x"] + grid["left"] + (cell + 0.5) * grid["cell"],
            box["y"] + grid["top"] + (cell + 0.5) * grid["cell"],
        )

    page.mouse.move(*at(2))
    page.mouse.down()
    page.mouse.move(*at(6), steps=4)
    page.mouse.up()
    page.wait_for_selector(f"{MATRIX_CANVAS}[data-block='2,7,2,7']")
    page.click("#view-matrix [data-control=reset-zoom]")
    page.wait_for_selector(f"{MATRIX_CANVAS}[data-block='0,13,0,13']")


def test_stats_view_embeds_the_bokeh_panel(page, live_server):
    open_view(page, live_server, model="minilm", text=PROMPT, view="stats")
    page.wait_for_selector("[data-testid=stats-plot][data-state=ready]", timeout=30_000)
    assert (
        page.locator(
            "[data-testid=stats-plot] .bk-Figure, [data-testid=stats-plot] .bk-GridPlot, [data-testid=stats-plot] > div"
        ).count()
        > 0
    )


def test_prompt_is_rendered_as_text_never_html(page, live_server):
    prompt = "<img src=x onerror=alert(1)> & <b>bold</b>"
    analyze(page, live_server, text=prompt)
    page.click("[role=tab][data-view=token]")
    page.wait_for_selector("[data-testid=token-outgoing][data-token]")
    strip = page.text_content("#view-token .token-strip")
    assert "<" in strip and "img" in strip and "onerror" in strip
    assert page.locator("img").count() == 0 and page.locator("main b").count() == 0
    assert page.input_value("#prompt") == prompt
    page.wait_for_timeout(300)  # room for an injected handler to fire (the fixture fails on dialogs)


def test_errors_show_a_clear_message(page, live_server):
    analyze_text = "word " * 700  # more than minilm's 512 tokens
    page.goto(live_server)
    page.fill("#prompt", analyze_text)
    page.click("#analyze")
    page.wait_for_selector("#error-banner[data-code=too_long]:not([hidden])")
    assert "too long" in page.text_content("#error-banner").lower()
    assert "512" in page.text_content("#error-banner")
    page.click("#error-banner .dismiss")
    page.wait_for_selector("#error-banner", state="hidden")

    page.fill("#prompt", "   ")
    page.click("#analyze")
    page.wait_for_selector("#error-banner[data-code=empty_prompt]:not([hidden])")


def test_projector_mode_enlarges_labels_and_persists(page, live_server):
    open_view(page, live_server, model="minilm", text=PROMPT, view="model")
    wait_ink(page, MODEL_CANVAS)
    grid = json.loads(page.get_attribute(MODEL_CANVAS, "data-grid"))
    page.click("#projector")
    page.wait_for_selector("html.projector")
    page.wait_for_function(
        f"() => JSON.parse(document.querySelector('{MODEL_CANVAS}').dataset.grid).left > {grid['left']}"
    )
    assert page.get_attribute("#projector", "aria-pressed") == "true"
    page.reload()
    wait_ready(page)
    assert page.evaluate("() => document.documentElement.classList.contains('projector')")


def test_grouped_query_model_paints_and_names_its_key_head(page, live_server):
    """smollm2: 30 layers x 9 query heads reading 3 key/value heads (slow the first time: GGUF conversion)."""
    open_view(page, live_server, model="smollm2", text=PROMPT, view="model")
    assert "30 layers × 9 heads" in page.text_content("#run-info")
    assert wait_ink(page, MODEL_CANVAS, minimum=20_000)
    assert json.loads(page.get_attribute(MODEL_CANVAS, "data-grid"))["headsAcross"]  # layers as rows on every model
    page.click(MODEL_CANVAS, position=model_cell_center(page, layer=5, head=4))
    page.wait_for_selector(f"{HEAD_CANVAS}[data-ready=true]")
    page.click("[role=tab][data-view=neuron]")
    page.wait_for_selector(f"{NEURON_CANVAS}[data-kv-head='1']")  # query head 4 of 9 reads key head 4 // 3
    assert "query head 4 reads key head 1" in page.text_content("#view-neuron .view-info")
    assert ink(page, NEURON_CANVAS) > 1_000


def test_model_view_fills_in_while_the_model_runs(page, live_server):
    """Each layer's thumbnails are drawn as the model finishes it, then the model view shows them all."""
    page.goto(live_server)
    page.evaluate("""() => {
      const preview = document.querySelector("#live-overview");
      window.previewLayers = [];
      new MutationObserver(() => {
        window.previewLayers.push(Number(preview.dataset.layers));
        const { data } = preview.getContext("2d").getImageData(0, 0, preview.width, preview.height);
        let painted = 0;
        for (let i = 3; i < data.length; i += 4) painted += data[i] === 255;
        window.previewPainted = painted / (preview.width * preview.height); // each layer drawn once, none lost
      }).observe(preview, { attributes: true, attributeFilter: ["data-layers"] });
    }""")
    page.select_option("#model", "smollm2")
    # long enough that the forward pass outlasts stream.LIVE_AFTER_SECONDS, so layers stream
    page.fill(
        "#prompt", " ".join(["A sentence that only this test sends, so the model runs while the page watches."] * 40)
    )
    page.click("#analyze")
    wait_ready(page)
    layers = page.evaluate("() => window.previewLayers")
    assert layers and layers == sorted(layers) and layers[-1] == 30
    assert page.evaluate("() => window.previewPainted") == 1.0  # every cell of the 30 x 9 grid, no gaps
    assert page.is_hidden("#live-overview")
    assert wait_ink(page, MODEL_CANVAS, minimum=20_000)
