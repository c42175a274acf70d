"""A first visit as a new user meets it (issue 18, point 11): the example prompt opens analysed,
the tabs are grouped with the open one's description visible, arrow keys move between tabs, and a
tab the model cannot serve says why with a one-click switch to a model that can."""

from __future__ import annotations

import pytest

from tests.browser.helpers import ANALYSIS_TIMEOUT_MS, PROMPT, READY, query_state, wait_ink, wait_ready

pytestmark = pytest.mark.browser

GROUPS = """() => [...document.querySelectorAll(".tab-group")].map((group) => ({
  label: group.querySelector(".tab-group-label").textContent,
  views: [...group.querySelectorAll("[role=tab]")].map((tab) => tab.dataset.view),
}))"""


def test_first_visit_opens_analysed_with_grouped_tabs(page, live_server):
    page.goto(live_server)
    wait_ready(page)  # nothing pressed: the example prompt is analysed on its own
    assert page.input_value("#prompt") == PROMPT and query_state(page)["text"] == PROMPT
    assert wait_ink(page, "[data-testid=model-canvas]", minimum=20_000)
    assert page.is_hidden("#empty-state")
    groups = page.evaluate(GROUPS)
    assert [group["label"] for group in groups] == ["Explore", "Analyse", "Decoders"]
    assert groups[0]["views"] == ["model", "head", "token", "neuron", "matrix"]
    assert groups[1]["views"][:4] == ["stats", "heads", "rollout", "mixing"] and "compare" in groups[1]["views"]
    assert groups[2]["views"] == ["lens", "generate"]
    hint = page.locator("#tab-hint")
    assert hint.is_visible() and hint.text_content() == "Model: every head of every layer"
    page.hover("[role=tab][data-view=rollout]")  # the pointed-at tab's description
    assert hint.text_content().startswith("Rollout: ")


def test_arrow_keys_move_between_tabs(page, live_server):
    page.goto(live_server)
    wait_ready(page)
    page.focus("[role=tab][data-view=model]")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.documentElement.dataset.view === 'head'")
    assert page.evaluate("() => document.activeElement.dataset.view") == "head"
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")  # wraps round to the last tab
    page.wait_for_function("() => document.documentElement.dataset.view === 'generate'")
    page.keyboard.press("Home")
    page.wait_for_function("() => document.documentElement.dataset.view === 'model'")
    assert page.get_attribute("[role=tab][data-view=model]", "tabindex") == "0"
    assert page.get_attribute("[role=tab][data-view=head]", "tabindex") == "-1"


def test_a_decoder_tab_on_an_encoder_offers_the_switch(page, live_server):
    page.goto(f"{live_server}/?model=minilm&text=The+capital+of+France+is&view=lens")
    wait_ready(page)
    notice = "#view-lens .notice"
    assert "needs a decoder" in page.text_content(notice)
    page.click(f"{notice} [data-switch-model=smollm2]")
    page.wait_for_function(READY, timeout=ANALYSIS_TIMEOUT_MS)
    page.wait_for_function("() => !document.querySelector('#view-lens .notice [data-switch-model]')")
    state = query_state(page)
    assert (state["model"], state["view"], state["text"]) == ("smollm2", "lens", "The capital of France is")
    page.wait_for_selector("#view-lens table td", timeout=60_000)  # the lens itself, on the decoder
