"""A gallery item's "what to look for" stays on screen as a caption card above the view while
its prompt is shown: opened from the gallery, or from its link in another browser (issue 18, point 6)."""

from __future__ import annotations

import pytest

from tests.browser.helpers import wait_ready
from tests.browser.test_classroom import new_page

pytestmark = pytest.mark.browser

CAPTION = "[data-testid=gallery-caption]"


def test_the_gallery_text_stays_as_a_caption_above_the_view(page, live_server, open_context):
    page.goto(live_server)
    page.click("[data-testid=open-gallery]")
    page.click(".gallery-item[data-item=agreement] [data-testid=gallery-open]")
    wait_ready(page)
    page.wait_for_selector(f"{CAPTION}[data-item=agreement]:visible")
    assert "The verb" in page.text_content(CAPTION)
    caption_top = page.eval_on_selector(CAPTION, "(el) => el.getBoundingClientRect().top")
    tabs_top = page.eval_on_selector("[role=tablist]", "(el) => el.getBoundingClientRect().top")
    assert caption_top < tabs_top

    other, _ = new_page(open_context)  # the same view from its link
    other.goto(page.url)
    wait_ready(other)
    other.wait_for_selector(f"{CAPTION}[data-item=agreement]:visible")

    page.fill("#prompt", "A prompt of my own.")
    page.click("#analyze")
    wait_ready(page)
    assert page.is_hidden(CAPTION)
