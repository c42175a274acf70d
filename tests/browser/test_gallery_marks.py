"""A gallery item's caption points at what it talks about (issue 18, point 6): the tokens its
"what to look for" names (quoted words, "token N") are chips in the caption that choose them,
and are marked in the view's token strip."""

from __future__ import annotations

import pytest

from tests.browser.helpers import open_view, query_state

pytestmark = pytest.mark.browser

AGREEMENT = "The keys to the old wooden cabinet are on the kitchen table."  # app/gallery.toml "agreement"


def test_caption_names_and_marks_its_tokens(page, live_server):
    open_view(page, live_server, model="minilm", text=AGREEMENT, view="token", token=8)
    chips = "[data-testid=gallery-chips] button[data-token]"
    page.wait_for_function(f"() => document.querySelectorAll('{chips}').length === 3")
    assert [page.get_attribute(f"{chips} >> nth={i}", "data-token") for i in range(3)] == ["2", "7", "8"]
    assert page.text_content(f"{chips} >> nth=0") == "«keys» 2"
    marked = "#view-token .token-strip button.gallery-mark"
    page.wait_for_function(f"() => document.querySelectorAll('{marked}').length === 3")
    assert [page.get_attribute(f"{marked} >> nth={i}", "data-index") for i in range(3)] == ["2", "7", "8"]
    page.click(f"{chips} >> nth=0")  # «keys»: the token view turns to it
    page.wait_for_function("() => new URLSearchParams(location.search).get('token') === '2'")
    assert query_state(page)["token"] == "2"
