"""The analysis views in a real browser: head roles (grid, legend, filter, click to open),
attention-sink badges, rollout and flow, comparing two prompts, the logit lens and the
generation stepper, with share links that restore compare and generation in a fresh browser."""

from __future__ import annotations

import pytest

from tests.browser.conftest import watch
from tests.browser.helpers import PROMPT, open_view, query_state, wait_ink, wait_ready

pytestmark = pytest.mark.browser

HEADS_CANVAS = "[data-testid=heads-canvas]"
DIFFERENCE = "[data-testid=compare-difference]"
GENERATED = "[data-testid=generated-text]"
BIAS_A = "The doctor asked the nurse a question. She"
BIAS_B = "The doctor asked the nurse a question. He"
FRANCE = "The capital of France is"


def current_token(page) -> str:
    return page.get_attribute(GENERATED, "data-current")


def test_head_roles_grid_legend_filter_and_sinks(page, live_server):
    open_view(page, live_server, model="minilm", text=PROMPT, view="heads")
    assert wait_ink(page, HEADS_CANVAS, minimum=20_000)  # 72 coloured cells
    roles = page.locator("[data-testid=roles-legend] button[data-role]")
    assert roles.count() >= 3 and "SINK" in page.text_content("[data-testid=roles-legend]")
    assert page.locator("[data-testid=ranked-heads] button").count() == 12
    assert "«[CLS]» (token 0" in page.text_content("[data-testid=sinks-line]")

    page.select_option("#view-heads select[name=measure]", "previous")  # colour by a measure: a scale, no legend
    page.wait_for_selector(f"{HEADS_CANVAS}[data-measure=previous]")
    assert query_state(page)["measure"] == "previous"
    page.select_option("#view-heads select[name=filter]", "PREVIOUS")  # only previous-token heads stay bright
    page.wait_for_function("() => new URL(location.href).searchParams.get('filter') === 'PREVIOUS'")
    ranked = page.locator("[data-testid=ranked-heads] button")
    assert ranked.count() >= 1 and "PREVIOUS" in ranked.first.text_content()

    layer, head = ranked.first.get_attribute("data-layer"), ranked.first.get_attribute("data-head")
    ranked.first.click()  # opens that head in the head view
    page.wait_for_selector("[data-testid=head-canvas][data-ready=true]")
    state = query_state(page)
    assert (state["view"], state["layer"], state["head"]) == ("head", layer, head)

    page.click("[role=tab][data-view=token]")  # the sink is badged wherever tokens are listed
    page.wait_for_selector("#view-token .token-strip button.sink[data-index='0']")
    assert page.locator("#view-token .token-strip button.sink").count() == 1


def test_rollout_bars_matrix_and_fusion(page, live_server):
    open_view(page, live_server, model="minilm", text=PROMPT, view="rollout", token=2)
    page.wait_for_selector("[data-testid=rollout-bars][data-flow=ready][data-position='2']")
    assert wait_ink(page, "[data-testid=rollout-bars]", minimum=3_000)
    assert wait_ink(page, "[data-testid=rollout-matrix]", minimum=3_000)
    page.click("#view-rollout [data-control=fusion] button[data-value=max]")
    page.wait_for_selector("[data-testid=rollout-bars][data-fusion=max]")
    assert query_state(page)["fusion"] == "max"


def test_compare_preset_and_share_link(page, live_server, open_context):
    open_view(page, live_server, model="minilm", text=PROMPT, view="compare")
    page.click("#view-compare [data-control=preset]")  # the doctor / nurse, She / He example
    page.wait_for_selector(f"{DIFFERENCE}[data-ready=true]", timeout=60_000)
    assert page.get_attribute(DIFFERENCE, "data-changed") == "9"  # «She» -> «He», after [CLS]
    assert wait_ink(page, DIFFERENCE, minimum=10_000)
    assert wait_ink(page, "[data-testid=compare-model-b]", minimum=20_000)
    for strip in (0, 1):
        changed = page.locator("#view-compare .token-strip").nth(strip).locator("button.changed")
        assert changed.count() == 1 and changed.get_attribute("data-index") == "9"
    assert page.input_value("#prompt") == BIAS_A
    state = query_state(page)
    assert (state["text"], state["text2"]) == (BIAS_A, BIAS_B)

    context, log = open_context()  # the link alone restores the comparison
    fresh = watch(context.new_page(), log)
    fresh.goto(page.url)
    wait_ready(fresh)
    fresh.wait_for_selector(f"{DIFFERENCE}[data-ready=true]", timeout=60_000)
    assert fresh.get_attribute(DIFFERENCE, "data-changed") == "9"
    assert fresh.input_value("#view-compare textarea[name=text2]") == BIAS_B
    assert not log.errors and not log.external_requests()


def test_encoder_gets_notices_for_lens_and_generation(page, live_server):
    open_view(page, live_server, model="minilm", text=PROMPT, view="lens")
    assert "needs a decoder" in page.text_content("#view-lens .notice")
    page.click("[role=tab][data-view=generate]")
    page.wait_for_selector("#view-generate .notice")
    assert "needs a decoder" in page.text_content("#view-generate .notice")
    assert page.locator("#view-generate [data-testid=generate-form]").is_hidden()


def test_generation_stepper_steps_and_shares(page, live_server, open_context):
    """smollm2 (slow the first time: GGUF conversion): 5 greedy tokens, stepped through."""
    open_view(page, live_server, model="smollm2", text=FRANCE, view="generate")
    page.fill("#view-generate input[name=max_new_tokens]", "5")
    page.click("#view-generate [data-control=sampling] button[data-value=greedy]")
    page.click("#view-generate [data-control=generate]")
    page.wait_for_selector("[data-testid=generate-attention][data-token]", timeout=90_000)
    assert "Paris" in page.text_content(GENERATED)
    first = current_token(page)
    assert page.text_content(f"{GENERATED} .current") == " Paris"
    assert wait_ink(page, "[data-testid=generate-attention]", minimum=5_000)

    page.click("#view-generate [data-control=step-forward]")
    page.wait_for_function(f"(first) => document.querySelector('{GENERATED}').dataset.current !== first", arg=first)
    page.wait_for_selector(f"[data-testid=generate-attention][data-token='{current_token(page)}']")
    second = current_token(page)
    assert int(second) == int(first) + 1
    state = query_state(page)
    assert (state["generate"], state["step"]) == ("5", "1") and "sampling" not in state

    context, log = open_context()
    fresh = watch(context.new_page(), log)
    fresh.goto(page.url)
    wait_ready(fresh)
    fresh.wait_for_selector(f"[data-testid=generate-attention][data-token='{second}']", timeout=60_000)
    assert current_token(fresh) == second and "Paris" in fresh.text_content(GENERATED)
    assert fresh.input_value("#view-generate input[name=max_new_tokens]") == "5"
    assert not log.errors and not log.external_requests()


def test_logit_lens_table_and_jump_to_token_view(page, live_server):
    open_view(page, live_server, model="smollm2", text=FRANCE, view="lens")
    page.wait_for_selector("[data-testid=lens-table] td[data-layer]", timeout=60_000)
    cells = page.locator("[data-testid=lens-table] td[data-layer]")
    assert cells.count() == 31 * 5  # embeddings + 30 layers, x 5 positions
    top_row = page.locator("[data-testid=lens-table] tbody tr").first  # the last layer: the model's own prediction
    assert "Paris" in top_row.locator("td[data-position='4']").text_content()
    top_row.locator("td[data-position='3']").click()
    page.wait_for_selector("[data-testid=lens-table][data-selected='3']")
    assert query_state(page)["token"] == "3"
    page.click("#view-lens [data-control=lens-to-token]")
    page.wait_for_selector("[data-testid=token-outgoing][data-token='3']")
