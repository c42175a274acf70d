"""The global view in Chromium: every head's tile drawn, a head opened in detail, hover naming a
token in its text, a search, and a click through to that text and token in the head view. The
atlas is computed first by the command line into the server's cache (a small corpus on minilm).
Then the corpora the server builds while the page waits: "My analyses" and "Analysed here"."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import parse_qs, urlencode, urlparse

import numpy as np
import pytest

from tests.browser.conftest import VIEWPORT
from tests.browser.helpers import INK_PIXELS, wait_ready
from tests.browser.server import REPO_ROOT, running_server
from tests.integration.test_globalview import TEXTS, fetch_json, write_corpus
from tests.wire import decode_array, decode_strings

pytestmark = [pytest.mark.browser, pytest.mark.real_model]
LAYERS, HEADS = 6, 12  # minilm

# Ink pixels in each tile of the tiles canvas (device pixels), from its published geometry.
TILE_INK = """() => {
  const canvas = document.querySelector("[data-testid=global-tiles]");
  const g = JSON.parse(canvas.dataset.geometry);
  const ratio = canvas.width / parseFloat(canvas.style.width);
  const ctx = canvas.getContext("2d");
  const counts = [];
  for (let row = 0; row < (g.headsAcross ? 6 : 12); row++) {
    for (let col = 0; col < (g.headsAcross ? 12 : 6); col++) {
      const x = (g.label + col * g.pitch + 2) * ratio, y = (g.header + row * g.pitch + 2) * ratio;
      const side = (g.cell - 4) * ratio;
      const data = ctx.getImageData(x, y, side, side).data;
      let ink = 0;
      for (let i = 0; i < data.length; i += 4) if (data[i + 3] > 0 && data[i] + data[i + 1] + data[i + 2] < 600) ink++;
      counts.push(ink);
    }
  }
  return counts;
}"""


@pytest.fixture(scope="module")
def atlas_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("global-view")
    corpus = write_corpus(folder)
    cache = folder / "cache"
    done = subprocess.run(
        [sys.executable, "-m", "app", "--cache-dir", str(cache), "atlas", "--model", "minilm", "--corpus", str(corpus)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    corpus_id = done.stdout.split("(corpus ")[1][:16]
    with running_server(cache, folder / "server.log", {"ATLAS_ANALYSED_TEXTS": "500"}) as url:  # "Analysed here" on
        yield url, corpus_id


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    errors: list[str] = []
    page = context.new_page()
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(60_000)
    yield page
    context.close()
    assert not errors, errors


def test_tiles_hover_and_click_through_to_the_head_view(page, atlas_server):
    url, corpus = atlas_server
    state = {"model": "minilm", "text": TEXTS[0], "view": "global", "corpus": corpus}
    page.goto(f"{url}/?{urlencode(state)}")
    wait_ready(page)
    page.wait_for_selector(f"[data-testid=global-tiles][data-tiles='{LAYERS * HEADS}']")
    assert min(page.evaluate(TILE_INK)) > 20  # every head's tile has points

    box = page.locator("[data-testid=global-tiles]").bounding_box()
    g = json.loads(page.get_attribute("[data-testid=global-tiles]", "data-geometry"))
    layer, head = 2, 7
    row, col = (layer, head) if g["headsAcross"] else (head, layer)
    page.mouse.click(
        box["x"] + g["label"] + col * g["pitch"] + g["cell"] / 2,
        box["y"] + g["header"] + row * g["pitch"] + g["cell"] / 2,
    )
    page.wait_for_selector("[data-testid=global-detail][data-points]")
    query = parse_qs(urlparse(page.url).query)
    assert query["focus"] == ["head"] and query["layer"] == [str(layer)] and query["head"] == [str(head)]
    assert page.evaluate(INK_PIXELS, "[data-testid=global-detail]") > 500

    # hover the query of a known token: the tooltip names it in its text
    answer = fetch_json(f"{url}/api/atlas/minilm/{layer}/{head}?corpus={corpus}")
    tiles = fetch_json(f"{url}/api/atlas/minilm?corpus={corpus}")
    tokens, positions = decode_strings(tiles["tokens"]), decode_array(tiles["position"])
    points = decode_array(answer["points"]).astype(np.float32)
    first_text = int(decode_array(tiles["starts"])[1])
    gaps = np.linalg.norm(points[:first_text, None] - points[None], axis=-1)  # [first text's queries, all points]
    gaps[np.arange(first_text), np.arange(first_text)] = np.inf
    token = int(gaps.min(axis=1).argmax())  # the first text's most isolated query: a pointer finds it alone
    start, end = decode_array(tiles["spans"])[token]
    shown = f"{TEXTS[0][:start]}⟦{TEXTS[0][start:end]}⟧{TEXTS[0][end:]}" if end > start else f"⟦{tokens[token]}⟧"
    page.locator("[data-testid=global-detail]").scroll_into_view_if_needed()
    detail = page.locator("[data-testid=global-detail]").bounding_box()
    size = detail["width"]
    half = size / 2 - 6
    x, y = float(size / 2 + half * points[token, 0]), float(size / 2 - half * points[token, 1])
    page.mouse.move(detail["x"] + x, detail["y"] + y)
    tooltip = page.locator(".tooltip")
    tooltip.wait_for(state="visible")
    assert tooltip.inner_text().startswith("query “") and shown in tooltip.inner_text()

    page.mouse.click(detail["x"] + x, detail["y"] + y)
    assert shown in page.inner_text("[data-testid=global-context]")
    page.fill("[data-control=search]", "the")
    page.press("[data-control=search]", "Enter")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=global-legend]').textContent.includes('“the” occurs')"
    )

    page.click("[data-control=open-in-head]")
    page.wait_for_function("() => new URLSearchParams(location.search).get('view') === 'head'")
    wait_ready(page)
    query = parse_qs(urlparse(page.url).query)
    assert query["text"] == [TEXTS[0]] and query["layer"] == [str(layer)] and query["head"] == [str(head)]
    assert query["token"] == [str(positions[token])]


def test_the_prompts_analysed_here_are_computed_while_the_page_waits(page, atlas_server):
    """ "Analysed here": the page analyses its prompt, the server computes the atlas of the prompts
    analysed on it in the background while the page shows how far it has come, then the tiles;
    the link then names that corpus by its id, so it opens the same picture later."""
    url, _ = atlas_server
    text = "Seven swans swam across the quiet lake at dawn."
    page.goto(f"{url}/?{urlencode({'model': 'minilm', 'text': text, 'view': 'global', 'corpus': 'analysed'})}")
    wait_ready(page)
    page.wait_for_selector("[data-testid=global-computing]:not([hidden]) progress")
    assert "global view of minilm on the prompts analysed on this server" in page.inner_text(
        "[data-testid=global-computing]"
    )
    page.wait_for_selector("[data-testid=global-tiles][data-tiles]", timeout=120_000)
    assert page.is_hidden("[data-testid=global-computing]")
    assert min(page.evaluate(TILE_INK)) > 5
    assert page.get_attribute("[data-control=corpus] [data-value=analysed]", "aria-pressed") == "true"
    assert "the prompts analysed on this server" in page.inner_text("[data-testid=global-legend]")
    page.wait_for_function("() => /^[0-9a-f]{16}$/.test(new URLSearchParams(location.search).get('corpus'))")
    corpus = parse_qs(urlparse(page.url).query)["corpus"][0]
    assert text in decode_strings(fetch_json(f"{url}/api/atlas/minilm?corpus={corpus}")["texts"])


MINE = (
    "Three owls watched the farmer plough the field.",
    "The river froze early that winter, so the boats stayed home.",
    "Tom lent Sara his bicycle because hers was broken.",
)


def test_my_analyses_are_computed_while_the_page_waits_and_the_link_opens_them_anywhere(page, atlas_server, browser):
    """ "My analyses": the page remembers the prompts it analysed; choosing the corpus sends their
    keys, the server builds their atlas in the background while the page shows its progress, then
    the tiles, with what it left out (a key it no longer has); the link names the corpus by its id
    and opens the same picture in a fresh browser that analysed nothing."""
    url, _ = atlas_server
    page.goto(f"{url}/?{urlencode({'model': 'minilm', 'text': MINE[0]})}")
    wait_ready(page)
    for text in MINE[1:]:
        page.fill("#prompt", text)
        page.click("#analyze")
        page.wait_for_function("(text) => new URLSearchParams(location.search).get('text') === text", arg=text)
        wait_ready(page)
    page.evaluate(  # an analysis this browser ran that the server has since dropped
        """() => {
          const all = JSON.parse(localStorage.getItem("attention-atlas.my-analyses"));
          all.minilm.unshift("0".repeat(64));
          localStorage.setItem("attention-atlas.my-analyses", JSON.stringify(all));
        }"""
    )
    page.click("[role=tab][data-view=global]")
    page.click("[data-control=corpus] [data-value=mine]")
    page.wait_for_selector("[data-testid=global-computing]:not([hidden]) progress")
    computing = page.inner_text("[data-testid=global-computing]")
    assert "global view of minilm on your analyses (1 left out: 1 no longer on the server)" in computing, computing
    page.wait_for_selector("[data-testid=global-tiles][data-tiles]", timeout=120_000)
    assert min(page.evaluate(TILE_INK)) > 5
    assert page.get_attribute("[data-control=corpus] [data-value=mine]", "aria-pressed") == "true"
    legend = page.inner_text("[data-testid=global-legend]")
    assert legend.startswith("minilm on your analyses (1 left out: 1 no longer on the server): 3 texts"), legend
    corpus = parse_qs(urlparse(page.url).query)["corpus"][0]
    assert decode_strings(fetch_json(f"{url}/api/atlas/minilm?corpus={corpus}")["texts"]) == sorted(MINE)

    fresh = browser.new_context(viewport=VIEWPORT).new_page()
    try:
        fresh.goto(page.url)
        wait_ready(fresh)
        fresh.wait_for_selector("[data-testid=global-tiles][data-tiles]")
        assert min(fresh.evaluate(TILE_INK)) > 5
        assert fresh.inner_text("[data-testid=global-legend]").startswith("minilm on your analyses: 3 texts")
    finally:
        fresh.context.close()
