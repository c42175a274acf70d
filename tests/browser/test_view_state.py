"""Every view setting a user can change travels: it is in the share link, a fresh browser opening
that link shows it, and a presenter's followers see it (issue 18, point 1). And the page never
overwrites a control the user just changed (point 2)."""

from __future__ import annotations

import json

import pytest

from tests.browser.helpers import PROMPT, head_token_position, open_view, query_state, wait_ready
from tests.browser.test_classroom import follower_sees, new_page

pytestmark = pytest.mark.browser

# A non-default value of every view field (store.js VIEW_FIELDS), as a share link writes it. A new
# field without a sample here fails test_every_view_field_survives_a_share_link.
SAMPLES = {
    "model": "minilm",
    "text": PROMPT,
    "target": "Le chat",
    "view": "matrix",
    "layer": "3",
    "head": "5",
    "heads": "1,4",
    "token": "7",
    "threshold": "0.25",
    "mode": "scores",
    "measure": "entropy",
    "sort": "rank",
    "filter": "PREVIOUS",
    "fusion": "max",
    "text2": "Another prompt",
    "generate": "5",
    "sampling": "sample",
    "seed": "3",
    "temperature": "0.7",
    "step": "2",
    "start": "4",
    "key": "a" * 64,
    "lock": "k6",
    "zoom": "2,9,0,7",
    "scale": "log",
    "sinks": "keep",
    "order": "top",
    "corpus": "0123abcd4567ef89",
    "projection": "tsne",
    "colour": "category",
    "focus": "head",
    "search": "the",
    "ablate": "3,17",
    "ablateRole": "INDUCTION",
    "ablateMode": "mean",
    "corrupt": "A corrupted prompt",
    "tau": "0.12",
}
# Every [data-control] the views draw, and the view field it sets (None: an action, not a setting).
CONTROLS = {
    "layer": "layer",
    "head": "head",
    "mode": "mode",
    "threshold": "threshold",
    "heads-all": "heads",
    "reset-zoom": "zoom",
    "sinks": "sinks",
    "scale": "scale",
    "fusion": "fusion",
    "measure": "measure",
    "sort": "sort",
    "filter": "filter",
    "lens-order": "order",
    "lens-previous": "start",
    "lens-next": "start",
    "text2": "text2",
    "compare": "text2",
    "max-new-tokens": "generate",
    "sampling": "sampling",
    "seed": "seed",
    "temperature": "temperature",
    "generate": "generate",
    "step": "step",
    "step-back": "step",
    "step-forward": "step",
    "lens-to-token": "view",
    "open-head": "view",
    "preset": "text2",
    "colour": "colour",
    "projection": "projection",
    "corpus": "corpus",
    "search": "search",
    "all-heads": "focus",
    "open-in-head": "view",
    "ablate-mode": "ablateMode",
    "ablate-run": "ablate",
    "ablate-clear": "ablate",
    "open-ablated": "key",
    "ablated-back": "key",
    "corrupt": "corrupt",
    "patch-run": "corrupt",
    "patch-example": "corrupt",
    "tau": "tau",
}
ROUND_TRIP = """async (samples) => {
  const { VIEW_FIELDS } = await import("/static/js/store.js");
  const { fromQuery, toQuery } = await import("/static/js/url.js");
  const state = fromQuery(new URLSearchParams(samples).toString());
  return { fields: VIEW_FIELDS, query: Object.fromEntries(new URLSearchParams(toQuery(state))) };
}"""
VIEWS = [
    "model",
    "head",
    "token",
    "neuron",
    "matrix",
    "stats",
    "heads",
    "rollout",
    "mixing",
    "routes",
    "compare",
    "intervene",
    "lens",
    "generate",
    "global",
]


def test_every_view_field_survives_a_share_link(page, live_server):
    page.goto(live_server)
    result = page.evaluate(ROUND_TRIP, SAMPLES)
    assert set(result["fields"]) == set(SAMPLES), "every view field needs a sample value in this test"
    assert result["query"] == SAMPLES


def test_every_control_of_every_view_sets_a_view_field(page, live_server):
    """A control whose setting lived only in its view would be lost from links and followers."""
    open_view(page, live_server, model="minilm", text=PROMPT)
    fields = set(page.evaluate("async () => (await import('/static/js/store.js')).VIEW_FIELDS"))
    for view in VIEWS:
        page.click(f"[role=tab][data-view={view}]")
        page.wait_for_selector(f"html[data-view={view}]")
    controls = set(
        page.eval_on_selector_all("section.view [data-control]", "(nodes) => nodes.map((n) => n.dataset.control)")
    )
    assert controls <= set(CONTROLS), f"controls without a view field: {controls - set(CONTROLS)}"
    assert {CONTROLS[name] for name in controls} <= fields


def drag_zoom(page, first: int, last: int) -> None:
    canvas = "[data-testid=matrix-canvas]"
    grid = json.loads(page.get_attribute(canvas, "data-grid"))
    box = page.locator(canvas).bounding_box()

    def at(cell):
        return box["x"] + grid["left"] + (cell + 0.5) * grid["cell"], box["y"] + grid["top"] + (cell + 0.5) * grid[
            "cell"
        ]

    page.mouse.move(*at(first))
    page.mouse.down()
    page.mouse.move(*at(last), steps=4)
    page.mouse.up()


def test_settings_reach_followers_and_a_fresh_browser(page, live_server, open_context):
    """The locked token, the matrix zoom and its scale, rollout's log scale: in the presenter's
    link, on a follower's page, and restored from the link in a browser that never saw them."""
    open_view(page, live_server, model="minilm", text=PROMPT, view="head", layer=2, head=3)
    page.click("[data-testid=open-classroom]")
    page.click("[data-testid=start-presenting]")
    code = page.text_content("[data-testid=presenter-code]")
    student, _ = new_page(open_context)
    student.goto(f"{live_server}/?join={code}")
    wait_ready(student)

    page.wait_for_selector("[data-testid=head-canvas][data-ready=true]")
    page.click("[data-testid=head-canvas]", position=head_token_position(page, 8, "q"))
    assert query_state(page)["lock"] == "q8"
    follower_sees(student, view="head", lock="q8")
    student.wait_for_selector("[data-testid=head-canvas][data-locked='q:8']")

    page.click("[role=tab][data-view=matrix]")
    page.wait_for_selector("[data-testid=matrix-canvas][data-block='0,13,0,13']")
    drag_zoom(page, 2, 6)
    page.wait_for_selector("[data-testid=matrix-canvas][data-block='2,7,2,7']")
    page.uncheck("#view-matrix [data-control=sinks]")
    follower_sees(student, view="matrix", zoom="2,7,2,7", sinks="keep")
    student.wait_for_selector("[data-testid=matrix-canvas][data-block='2,7,2,7']")
    assert not student.is_checked("#view-matrix [data-control=sinks]")

    page.click("[role=tab][data-view=rollout]")
    page.check("#view-rollout [data-control=scale]")
    follower_sees(student, view="rollout", scale="log")
    assert student.is_checked("#view-rollout [data-control=scale]")

    fresh, _ = new_page(open_context)  # the presenter's link, opened elsewhere
    fresh.goto(page.url)
    wait_ready(fresh)
    assert fresh.is_checked("#view-rollout [data-control=scale]")
    assert not fresh.is_checked("#view-rollout [data-control=sinks]")
    fresh.click("[role=tab][data-view=matrix]")
    fresh.wait_for_selector("[data-testid=matrix-canvas][data-block='2,7,2,7']")
    fresh.click("[role=tab][data-view=head]")
    fresh.wait_for_selector("[data-testid=head-canvas][data-locked='q:8']")


def test_the_model_menu_keeps_the_users_pick(page, live_server):
    """Picking a model while an analysis runs stays picked, and the next Analyze uses it."""
    open_view(page, live_server, model="minilm", text=PROMPT)
    frames: list[str] = []
    page.on("websocket", lambda socket: socket.on("framesent", lambda frame: frames.append(str(frame))))
    page.reload()
    wait_ready(page)
    page.fill("#prompt", "A different prompt, analysed while the user looks at the menu.")
    page.click("#analyze")
    page.select_option("#model", "smollm2")
    wait_ready(page)
    page.wait_for_timeout(1_500)  # the page used to write the state's model back by now
    assert page.input_value("#model") == "smollm2"
    page.click("#analyze")
    page.wait_for_function(
        "() => document.documentElement.dataset.busy === 'true' || location.search.includes('smollm2')"
    )
    assert any('"analyze"' in frame and '"smollm2"' in frame for frame in frames)
