"""The interventions view in Chromium on SmolLM2: choosing heads in its grid and on the model
grid, switching them off, the before/after panel, the link restoring the intervention, every view
of the ablated run, and the patching grid."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from tests.browser.helpers import ANALYSIS_TIMEOUT_MS, model_cell_center, open_view, query_state, wait_ink

PROMPT = "Zorp 17 blue kettle. Zorp 17 blue"
CLEAN = "Mary and John: John gave it to"
CORRUPT = "Mary and John: Paul gave it to"
EFFECT = "[data-testid=ablate-effect][data-ready=true]"


def click_head(page, selector: str, layer: int, head: int) -> None:
    grid = json.loads(page.get_attribute(selector, "data-grid"))
    row, col = (layer, head) if grid["headsAcross"] else (head, layer)
    x = grid["left"] + col * grid["pitch"] + grid["cell"] / 2
    y = grid["top"] + row * grid["pitch"] + grid["cell"] / 2
    page.click(selector, position={"x": x, "y": y})


def test_switching_heads_off_and_sharing_it(page, live_server, browser):
    open_view(page, live_server, model="smollm2", text=PROMPT, view="intervene")
    page.wait_for_selector("[data-testid=ablate-roles] button[data-role]", timeout=ANALYSIS_TIMEOUT_MS)
    for layer, head in [(1, 2), (3, 4), (3, 5)]:
        click_head(page, "[data-testid=ablate-picker]", layer, head)
    click_head(page, "[data-testid=ablate-picker]", 3, 5)  # a second click keeps it on
    assert page.get_attribute("[data-testid=ablate-picker]", "data-picked") == "11,31"
    page.click("[data-control=ablate-run]")
    page.wait_for_selector(EFFECT, timeout=ANALYSIS_TIMEOUT_MS)
    summary = page.text_content("[data-testid=ablate-summary]")
    assert "2 heads zeroed" in summary and "Predicted next token" in summary and "KL" in summary
    assert page.locator("[data-testid=ablate-top] tr[data-token]").count() >= 8
    wait_ink(page, "[data-testid=ablate-difference]")
    assert query_state(page)["ablate"] == "11,31"

    other = browser.new_page(viewport={"width": 1440, "height": 900})  # the share link, in a fresh page
    try:
        other.goto(page.url)
        other.wait_for_selector(EFFECT, timeout=ANALYSIS_TIMEOUT_MS)
        assert other.text_content("[data-testid=ablate-summary]") == summary
        assert other.get_attribute("[data-testid=ablate-picker]", "data-picked") == "11,31"
    finally:
        other.close()

    page.click("[data-control=open-ablated]")  # every view of the ablated run
    page.wait_for_selector("[data-control=ablated-back]", timeout=ANALYSIS_TIMEOUT_MS)
    page.click("[role=tab][data-view=head]")
    page.wait_for_function(
        "() => document.body.textContent.includes('ABLATED RUN: 2 heads switched off (zero)')", timeout=20_000
    )
    wait_ink(page, "[data-testid=head-canvas]")
    page.click("[role=tab][data-view=intervene]")
    page.click("[data-control=ablated-back]")
    page.wait_for_selector(EFFECT, timeout=ANALYSIS_TIMEOUT_MS)
    assert "ABLATED RUN" not in page.text_content("body")


def test_a_role_and_the_model_grid_choose_heads(page, live_server):
    open_view(page, live_server, model="smollm2", text=PROMPT, view="model")
    page.click("[data-testid=model-canvas]", position=model_cell_center(page, 2, 1), modifiers=["Shift"])
    page.wait_for_function("() => new URLSearchParams(location.search).get('ablate') === '19'")
    assert query_state(page)["view"] == "model"  # shift-click chooses; it does not open the head
    page.click("[role=tab][data-view=intervene]")
    page.wait_for_selector(EFFECT, timeout=ANALYSIS_TIMEOUT_MS)
    assert "1 head zeroed" in page.text_content("[data-testid=ablate-summary]")

    role = page.locator("[data-testid=ablate-roles] button[data-role]").first
    name = role.get_attribute("data-role")
    count = int(role.text_content().rsplit("(", 1)[1].rstrip(")"))
    page.click("[data-control=ablate-mode] button[data-value=mean]")
    role.click()
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('ablateRole') === '{name}'")
    page.wait_for_selector(EFFECT, timeout=ANALYSIS_TIMEOUT_MS)
    summary = page.text_content("[data-testid=ablate-summary]")
    assert f"{count} head{'s' if count > 1 else ''} replaced by their mean" in summary


def test_patching_draws_every_head(page, live_server):
    link = urlencode({"model": "smollm2", "text": CLEAN, "view": "intervene", "corrupt": CORRUPT})
    page.goto(f"{live_server}/?{link}")
    page.wait_for_selector("[data-testid=patch-grid][data-ready=true]", timeout=ANALYSIS_TIMEOUT_MS * 2)
    assert "logit difference" in page.text_content("[data-testid=patch-summary]")
    wait_ink(page, "[data-testid=patch-grid]")
    click_head(page, "[data-testid=patch-grid]", 0, 0)  # a patched head can be chosen for switching off
    assert page.get_attribute("[data-testid=ablate-picker]", "data-picked") == "0"


def test_an_encoder_switches_heads_off_but_says_why_it_cannot_patch(page, live_server):
    open_view(
        page,
        live_server,
        model="minilm",
        text="The keys to the cabinet are here.",
        view="intervene",
        ablate="0,13",
        corrupt="The key to the cabinet is here.",
    )
    page.wait_for_selector(EFFECT, timeout=ANALYSIS_TIMEOUT_MS)
    assert "no language-model head" in page.text_content("[data-testid=ablate-summary]")
    page.wait_for_function(
        "() => document.querySelector('#view-intervene').textContent.includes('needs a causal language model')"
    )
