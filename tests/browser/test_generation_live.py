"""Generation in a real browser (issue 18, point 9): each token shows as the model chooses it
("token 7 of 60") with the attention row that chose it, and Cancel stops the model work; the
next Generate runs at once."""

from __future__ import annotations

import time

import pytest

from tests.browser.helpers import open_view, wait_ink

pytestmark = pytest.mark.browser

LIVE = "[data-testid=generate-live]"
LABEL = "[data-testid=generate-live-label]"
CANVAS = "[data-testid=generate-attention]"
QUIET_SECONDS = 1.5  # a cancelled generation must add no token in this time
STEPS = "(minimum) => Number(document.querySelector('[data-testid=generate-live]').dataset.step || 0) >= minimum"
SNAPSHOT = """() => ({
  step: Number(document.querySelector('[data-testid=generate-live]').dataset.step),
  live: Number(document.querySelector('[data-testid=generate-attention]').dataset.live),
  generated: document.querySelectorAll('[data-testid=generated-text] .generated').length,
})"""


def start(page, tokens: int, seed: int) -> None:
    page.fill("#view-generate input[name=max_new_tokens]", str(tokens))
    page.click("#view-generate [data-control=sampling] button[data-value=sample]")
    page.fill("#view-generate input[name=seed]", str(seed))
    page.click("#view-generate [data-control=generate]")


def test_tokens_stream_with_their_attention_and_cancel_stops(page, live_server):
    open_view(page, live_server, model="smollm2", text="Once upon a time", view="generate")
    start(page, 200, 5)
    page.wait_for_function(STEPS, arg=3, timeout=90_000)
    label = page.text_content(LABEL)
    assert label.startswith("Generating: token ") and " of 200: «" in label, label
    # one snapshot of the page: tokens keep arriving between two separate reads
    shown = page.evaluate(SNAPSHOT)
    # the row of the token before the newest one (4 prompt tokens, then step - 1 generated ones)
    assert shown["live"] == 4 + (shown["step"] - 1) - 1, shown
    assert shown["generated"] == shown["step"], shown
    assert wait_ink(page, CANVAS, minimum=3_000)

    page.click("[data-testid=cancel-generation]")
    page.wait_for_function("(label) => document.querySelector(label).textContent.startsWith('Cancelled')", arg=LABEL)
    stopped = int(page.get_attribute(LIVE, "data-step"))
    time.sleep(QUIET_SECONDS)
    assert int(page.get_attribute(LIVE, "data-step")) == stopped and stopped < 200
    assert page.locator("[data-testid=cancel-generation]").is_hidden()

    start(page, 3, 6)  # the model is free at once: a short generation completes, stepper and all
    page.wait_for_selector("#view-generate [data-control=step-forward]", state="visible", timeout=30_000)
    page.wait_for_selector(f"{CANVAS}[data-token]")
    assert page.locator(LIVE).is_hidden()
