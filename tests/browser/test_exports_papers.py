"""Exports fit for papers (issue 18, point 10): the SVG is vector (cells, lines, text; no
<image>), file names say what is drawn, the NPZ holds `tokens` as a string array, and the offline
HTML holds every layer with the model, head and token views, loading nothing from any network."""

from __future__ import annotations

import io
import urllib.request
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

from tests.browser.helpers import PROMPT, open_view, wait_ink
from tests.browser.test_classroom import new_offline_page

pytestmark = pytest.mark.browser

SVG_NS = "{http://www.w3.org/2000/svg}"


def download(page, testid: str) -> tuple[str, bytes]:
    with page.expect_download() as info:
        page.click(f"[data-testid={testid}]")
    return info.value.suggested_filename, Path(info.value.path()).read_bytes()


def tags(svg) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in svg.iter():
        name = node.tag.removeprefix(SVG_NS)
        counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.mark.parametrize(
    ("state", "name", "drawn"),
    [
        ({"view": "head", "layer": 2, "heads": "0,1,2,3,4,5,6,7,8,9,10,11"}, "minilm-head-l2-all-heads.svg", "path"),
        ({"view": "head", "layer": 1, "heads": "3", "head": 3}, "minilm-head-l1-h3.svg", "path"),
        ({"view": "matrix", "layer": 1, "head": 4}, "minilm-matrix-l1-h4.svg", "rect"),
        ({"view": "head", "layer": 2, "heads": "3", "mode": "layer"}, "minilm-head-l2-heads-summed.svg", "path"),
        ({"view": "matrix", "layer": 1, "head": 4, "mode": "layer_share"}, "minilm-matrix-l1-heads-summed.svg", "rect"),
        ({"view": "model"}, "minilm-model.svg", "rect"),
    ],
)
def test_svg_is_vector_and_named_for_what_it_draws(page, live_server, state, name, drawn):
    open_view(page, live_server, model="minilm", text=PROMPT, **state)
    page.wait_for_selector(f"#view-{state['view']} canvas")
    page.wait_for_timeout(500)  # the view's canvases drawn
    page.click("[data-testid=open-export]")
    filename, body = download(page, "export-svg")
    assert filename == f"atlas-{name}"
    svg = ElementTree.fromstring(body)
    counts = tags(svg)
    assert "image" not in counts, counts
    assert counts.get(drawn, 0) >= 10 and counts.get("text", 0) >= 13, counts  # a label per token at least
    texts = " ".join(node.text or "" for node in svg.iter(f"{SVG_NS}text"))
    assert "tired" in texts and "The cat sat" in texts


def test_npz_tokens_are_a_string_array(page, live_server):
    open_view(page, live_server, model="minilm", text=PROMPT, view="model")
    page.click("[data-testid=open-export]")
    filename, body = download(page, "export-npz")
    key = page.get_attribute("html", "data-analysis")
    assert filename == f"atlas-minilm-{key[:12]}.npz"
    with np.load(io.BytesIO(body)) as data:  # allow_pickle=False: a string array, not objects
        tokens = data["tokens"]
        assert tokens.dtype.kind == "U" and tokens.shape == (13,)
        assert list(tokens[:3]) == ["[CLS]", "The", "cat"] and tokens[-1] == "[SEP]"
    upload = urllib.request.Request(f"{live_server}/api/captures", body, {"Content-Type": "application/octet-stream"})
    assert urllib.request.urlopen(upload).status == 200  # the export uploads back as a capture


def test_offline_file_holds_every_layer_and_the_token_view(page, live_server, open_context):
    open_view(page, live_server, model="minilm", text=PROMPT, view="head", layer=0)
    page.click("[data-testid=open-export]")
    filename, body = download(page, "export-html")
    assert filename == "atlas-minilm-all-layers.html"
    assert "every layer" in page.text_content("[data-testid=export-status]")
    offline, log, requests = new_offline_page(open_context)
    offline.set_content(body.decode())
    offline.wait_for_selector("html[data-ready=true]")
    head, token = "[data-testid=head-canvas]", "#view-token canvas"
    assert wait_ink(offline, "[data-testid=model-canvas]", minimum=20_000) and wait_ink(offline, token, minimum=2_000)
    for layer in range(6):  # every layer opens in the head view, none says it is missing
        offline.select_option("#view-head select[name=layer]", str(layer))
        offline.wait_for_selector(f"{head}[data-layer='{layer}']")
        assert offline.locator("#view-head .notice").count() == 0 and wait_ink(offline, head, minimum=1_000)
    offline.click("#view-token [data-index='5']")  # another token: its row and column from the file's layers
    offline.wait_for_function("() => !document.querySelector('#view-token .notice')")
    assert wait_ink(offline, token, minimum=2_000)
    assert requests == [] and not log.errors
