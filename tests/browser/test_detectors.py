"""The head-roles view's induction probe: one click analyses the model's seeded repeated
random-word sequence and ranks every head by its induction score, INDUCTION heads labelled."""

from __future__ import annotations

from tests.browser.helpers import PROMPT, open_view, query_state, wait_ink

HEADS_CANVAS = "[data-testid=heads-canvas]"


def test_find_induction_heads_opens_the_probe_ranked_by_induction(page, live_server):
    open_view(page, live_server, model="smollm2", text=PROMPT, view="heads")
    assert wait_ink(page, HEADS_CANVAS, minimum=20_000)
    page.click("[data-testid=induction-probe]")
    page.wait_for_function("() => new URL(location.href).searchParams.get('measure') === 'induction'")
    page.wait_for_selector(f"{HEADS_CANVAS}[data-measure=induction]", timeout=180_000)
    state = query_state(page)
    words = state["text"].split(" ")
    assert len(words) == 48 and words[:24] == words[24:]  # the default 24 words, twice
    assert state["model"] == "smollm2" and state["sort"] == "rank"
    ranked = page.locator("[data-testid=ranked-heads] button")
    assert "INDUCTION" in ranked.first.text_content()
    assert "INDUCTION" in page.text_content("#view-heads")
