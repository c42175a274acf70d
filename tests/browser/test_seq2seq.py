"""An encoder-decoder model in the browser: the decoder text box, layers named by stack and
kind, cross-attention in the head, token and neuron views, and a share link that restores the
decoder text. The model is a tiny random BART saved as a user's model folder."""

from __future__ import annotations

import pytest

from tests.browser.conftest import watch
from tests.browser.helpers import analyze, query_state, wait_ink, wait_ready

pytestmark = pytest.mark.browser

SOURCE = "The house is wonderful."
TARGET = "Das Haus ist wunderbar."
CROSS = 3  # encoder 0, encoder 1, decoder 0 self, decoder 0 cross


def test_cross_attention_in_every_view_and_a_link_that_keeps_the_decoder_text(page, live_server, open_context):
    analyze(page, live_server, text=SOURCE, model="tiny-bart")
    page.wait_for_selector("#target-field:not([hidden])")
    assert page.input_value("#target")  # the model's own output, shown for editing
    assert "target" not in query_state(page)  # the default needs no field in the link
    assert wait_ink(page, "[data-testid=model-canvas]", minimum=2_000)

    page.fill("#target", TARGET)
    page.click("#analyze")
    page.wait_for_function("(target) => new URLSearchParams(location.search).get('target') === target", arg=TARGET)
    wait_ready(page)
    assert "source +" in page.text_content("#run-info") and "decoder blocks" in page.text_content("#run-info")

    page.click("[role=tab][data-view=head]")
    page.select_option("#view-head select[name=layer]", str(CROSS))
    page.wait_for_selector(f"[data-testid=head-canvas][data-ready=true][data-layer='{CROSS}']")
    assert page.text_content(f"#view-head select[name=layer] option[value='{CROSS}']") == "decoder 0 cross"
    assert wait_ink(page, "[data-testid=head-canvas]", minimum=2_000)

    page.click("[role=tab][data-view=neuron]")
    page.wait_for_selector("[data-testid=neuron-canvas][data-query]")
    assert page.input_value("#view-neuron select[name=layer]") == str(CROSS)
    assert wait_ink(page, "[data-testid=neuron-canvas]", minimum=2_000)

    page.click("[role=tab][data-view=token]")
    page.wait_for_selector("[data-testid=token-outgoing][data-token]")
    assert wait_ink(page, "[data-testid=token-outgoing]", minimum=500)

    link = page.url
    context, log = open_context()
    fresh = watch(context.new_page(), log)
    fresh.goto(link)
    wait_ready(fresh)
    fresh.wait_for_selector("#target-field:not([hidden])")
    assert fresh.input_value("#target") == TARGET and fresh.input_value("#prompt") == SOURCE
    assert fresh.get_attribute("html", "data-analysis") == page.get_attribute("html", "data-analysis")
    assert "from cache" in fresh.text_content("#run-info")
    assert not log.errors and not log.external_requests()
