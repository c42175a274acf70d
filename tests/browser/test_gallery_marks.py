"""A gallery item's caption points at what it talks about (issue 18, point 6): the tokens its
"what to look for" names (quoted words, "token N") are chips in the caption that choose them,
and are marked in the view's token strip; the heads it names ("layer L head H", or the role its
link filters) are outlined over the model and head-roles grids, and the cells it names ("from
token Q to token K") over the matrix."""

from __future__ import annotations

import json

import pytest

from tests.browser.helpers import model_cell_center, open_view, query_state

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


INDUCTION = "Zorp 17 blue kettle Vimbly 42 marsh. Zorp 17 blue kettle Vimbly 42 marsh."  # gallery "induction"
PREVIOUS = "Alice walked to the market, bought three apples and a loaf of bread, and walked home again."


def centre(box: dict) -> tuple[float, float]:
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_caption_marks_the_cell_and_head_it_names(page, live_server):
    """ "from token 19 to token 5" is outlined over that matrix cell; "layer 18 head 6" is a chip that opens it."""
    open_view(page, live_server, model="smollm2", text=INDUCTION, view="matrix", layer=18, head=6)
    mark = "[data-testid=matrix-canvas-marks] div[data-query='19'][data-key='5']"
    page.wait_for_selector(mark)
    grid = json.loads(page.get_attribute("[data-testid=matrix-canvas]", "data-grid"))
    canvas = page.locator("[data-testid=matrix-canvas]").bounding_box()
    x, y = centre(page.locator(mark).bounding_box())
    assert grid["rows"] > 19  # one cell per token: no pooling at this length
    assert abs(x - (canvas["x"] + grid["left"] + 5.5 * grid["cell"])) < 1.5
    assert abs(y - (canvas["y"] + grid["top"] + 19.5 * grid["cellH"])) < 1.5
    page.click("[data-testid=gallery-chips] button[data-head='18,6']")
    page.wait_for_function("() => new URLSearchParams(location.search).get('layer') === '18'")
    assert query_state(page)["head"] == "6"
    page.click("[data-testid=gallery-caption] button[aria-label='Hide this caption']")  # hidden: no marks
    page.wait_for_selector("[data-testid=matrix-canvas-marks]", state="detached")


def test_caption_marks_its_role_heads_in_the_head_grids(page, live_server):
    """The previous-token item filters PREVIOUS: those heads are outlined in the head-roles grid and,
    with the head summary fetched for the caption, in the model view's grid too."""
    open_view(page, live_server, model="smollm2", text=PREVIOUS, view="heads", filter="PREVIOUS")
    heads_marks = "[data-testid=heads-canvas-marks] div"
    page.wait_for_selector(f"{heads_marks}[data-layer='16'][data-head='0']", timeout=60_000)
    marked = [(m.get_attribute("data-layer"), m.get_attribute("data-head")) for m in page.locator(heads_marks).all()]
    assert len(set(marked)) == len(marked)  # named by number and by role: marked once
    roles = page.evaluate(
        "() => [...document.querySelectorAll('[data-testid=roles-legend] [data-role=PREVIOUS]')]"
        ".map((b) => b.textContent)"
    )
    assert roles and roles[0].endswith(f"· {len(marked)}")  # every PREVIOUS head, and only those
    page.click("[role=tab][data-view=model]")
    model_mark = "[data-testid=model-canvas-marks] div[data-layer='16'][data-head='0']"
    page.wait_for_selector(model_mark)
    assert page.locator("[data-testid=model-canvas-marks] div").count() == len(marked)
    canvas = page.locator("[data-testid=model-canvas]").bounding_box()
    cell = model_cell_center(page, layer=16, head=0)
    x, y = centre(page.locator(model_mark).bounding_box())
    assert abs(x - canvas["x"] - cell["x"]) < 1.5 and abs(y - canvas["y"] - cell["y"]) < 1.5


def test_caption_role_heads_when_the_link_opens_the_model_view(page, live_server):
    """Opened straight on the model view, the caption asks for the head summary itself."""
    open_view(page, live_server, model="smollm2", text=PREVIOUS, view="model", filter="PREVIOUS")
    page.wait_for_selector("[data-testid=model-canvas-marks] div[data-layer='16'][data-head='0']", timeout=60_000)
