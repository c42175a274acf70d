"""Steps the browser tests share: open the app on a prompt, wait for a view, read its state
and read back canvas pixels."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode, urlparse

PROMPT = "The cat sat on the mat because it was tired."
ANALYSIS_TIMEOUT_MS = 90_000  # smollm2's first load converts its GGUF weights (~25 s)

# Functions, not expressions: Playwright evaluates bare expressions with eval(), which the page's CSP forbids.
READY = "() => document.documentElement.dataset.analysis !== '' && document.documentElement.dataset.busy === 'false'"

# Pixels of a canvas that differ from the page background (white), from getImageData.
INK_PIXELS = """(selector) => {
  const canvas = document.querySelector(selector);
  if (!canvas || !canvas.width || !canvas.height) return 0;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let ink = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 0 && (data[i] < 245 || data[i + 1] < 245 || data[i + 2] < 245)) ink++;
  }
  return ink;
}"""


def analyze(page, base_url: str, text: str = PROMPT, model: str = "minilm") -> None:
    """Type a prompt into the page and run it; returns once the model view shows it."""
    page.goto(base_url)
    page.select_option("#model", model)
    page.fill("#prompt", text)
    page.click("#analyze")
    wait_ready(page)


def open_view(page, base_url: str, **state) -> None:
    """Open a share link (view state in the query) and wait until the analysis is shown."""
    page.goto(f"{base_url}/?{urlencode(state)}")
    wait_ready(page)


def wait_ready(page) -> None:
    page.wait_for_function(READY, timeout=ANALYSIS_TIMEOUT_MS)


def query_state(page) -> dict:
    """The page URL's view state, one value per field."""
    return {name: values[0] for name, values in parse_qs(urlparse(page.url).query).items()}


def ink(page, selector: str) -> int:
    return page.evaluate(INK_PIXELS, selector)


def wait_ink(page, selector: str, minimum: int = 200) -> int:
    """Wait until a canvas has at least `minimum` non-white pixels; returns the count."""
    page.wait_for_function(
        f"([selector, minimum]) => ({INK_PIXELS})(selector) >= minimum", arg=[selector, minimum], timeout=20_000
    )
    return ink(page, selector)


def model_cell_center(page, layer: int, head: int) -> dict:
    """Where thumbnail (layer, head) is on the model-view canvas, from its published grid."""
    grid = json.loads(page.get_attribute("[data-testid=model-canvas]", "data-grid"))
    row, col = (layer, head) if grid["headsAcross"] else (head, layer)
    return {
        "x": grid["left"] + col * grid["pitch"] + grid["cell"] / 2,
        "y": grid["top"] + row * grid["pitch"] + grid["cell"] / 2,
    }


def head_token_position(page, index: int, side: str = "q") -> dict:
    """Where token `index` is drawn in the head view's query (q) or key (k) column."""
    rows = json.loads(page.get_attribute("[data-testid=head-canvas]", "data-rows"))
    x = rows["queryX"] - 15 if side == "q" else rows["keyX"] + 15
    return {"x": x, "y": rows["pad"] + index * rows["rowHeight"] + rows["rowHeight"] / 2}


def canvas_snapshot(page, selector: str) -> str:
    return page.evaluate("(s) => document.querySelector(s).toDataURL()", selector)
