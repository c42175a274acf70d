"""A student following on a phone or tablet (issue 18, point 3): the page fits the width (nothing
pans sideways), the view comes first (the prompt collapsed to a line, the tabs one scrollable
row), and the views' content is complete at that width: the neuron view's columns, every head
of the model grid."""

from __future__ import annotations

import json

import pytest

from tests.browser.helpers import PROMPT, open_view, wait_ready
from tests.browser.test_classroom import follower_sees

pytestmark = pytest.mark.browser

VIEWS = ["model", "head", "token", "neuron", "matrix", "rollout"]
# The page's width and the rightmost edge of anything shown that is not inside a scrolling row of tabs.
WIDTHS = """() => {
  const width = document.documentElement.clientWidth;
  let right = 0;
  for (const node of document.querySelectorAll("main *:not(.tabs *), header *")) {
    if (node.offsetParent === null) continue;
    right = Math.max(right, node.getBoundingClientRect().right);
  }
  return { width, scroll: document.documentElement.scrollWidth, right: Math.round(right) };
}"""


@pytest.mark.parametrize("size", [(390, 844), (768, 1024)], ids=["phone", "tablet"])
def test_a_follower_on_a_small_screen_sees_the_view_first_and_whole(size, page, live_server, browser):
    width, height = size
    open_view(page, live_server, model="minilm", text=PROMPT)
    page.click("[data-testid=open-classroom]")
    page.click("[data-testid=start-presenting]")
    code = page.text_content("[data-testid=presenter-code]")
    context = browser.new_context(viewport={"width": width, "height": height}, is_mobile=True, has_touch=True)
    try:
        student = context.new_page()
        errors: list[str] = []
        student.on("pageerror", lambda error: errors.append(str(error)))
        student.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        student.goto(f"{live_server}/?join={code}")
        wait_ready(student)

        tabs = student.eval_on_selector_all("[role=tab]", "(tabs) => tabs.map((tab) => tab.offsetTop)")
        assert len(set(tabs)) == 1, "the tabs are one row"
        assert not student.is_visible("#analyze") and not student.is_visible("#model")  # the prompt is one line
        for view in VIEWS:
            page.click(f"[role=tab][data-view={view}]")
            follower_sees(student, view=view)
            student.wait_for_selector(f"#view-{view} canvas", state="attached")
            student.wait_for_timeout(400)
            measured = student.evaluate(WIDTHS)
            assert measured["scroll"] <= measured["width"], f"{view}: the page pans sideways ({measured})"
            assert measured["right"] <= measured["width"] + 1, f"{view}: something sticks out ({measured})"
            panel_top = student.eval_on_selector(f"#view-{view}", "(el) => el.getBoundingClientRect().top")
            assert panel_top < height / 2, f"{view}: the view starts below the first half screen"
            if view == "model":
                grid = json.loads(student.get_attribute("[data-testid=model-canvas]", "data-grid"))
                assert grid["headsAcross"] and grid["left"] + 12 * grid["pitch"] <= measured["width"]
            if view == "neuron":
                canvas = student.locator("[data-testid=neuron-canvas]").bounding_box()
                assert canvas["x"] + canvas["width"] <= measured["width"]
        assert not errors, errors
    finally:
        context.close()
