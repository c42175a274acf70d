"""Regenerate docs/screenshots/{model,head,token,neuron,matrix,stats}.png: one picture per
view on the packaged models, taken with Debian's Chromium through Playwright.

    python scripts/screenshots.py                 # starts its own server on a free port
    python scripts/screenshots.py --url http://127.0.0.1:5000   # uses a running one

Each view is opened from a share link (the same URL a user would send), so the pictures also
show that links restore views. Fails if a view logs a console error or its canvas stays blank.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere: the app's own server starter

from tests.browser.helpers import READY, head_token_position, wait_ink  # noqa: E402
from tests.browser.server import CHROMIUM, CHROMIUM_ARGS, running_server  # noqa: E402

OUT_DIR = REPO_ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1440, "height": 960}  # CSS px
SCALE = 1  # device pixels per CSS pixel of the PNGs
SETTLE_MS = 600  # after a view reports ready, for animation frames and Bokeh layout
ANALYSIS_MS = 120_000  # smollm2's first load converts its GGUF weights

PROMPT = "The cat sat on the mat because it was tired."
DECODER_PROMPT = "When Mary and John went to the store, John gave a drink to"
# view -> (share-link state, selector of the view's element once it has painted; a canvas must not be blank)
SHOTS = {
    "model": ({"model": "minilm", "text": PROMPT, "view": "model", "layer": 2, "head": 9},
              "canvas[data-testid=model-canvas][data-grid]"),
    "head": ({"model": "minilm", "text": PROMPT, "view": "head", "layer": 2, "heads": "0,5,9", "head": 9, "token": 8},
             "canvas[data-testid=head-canvas][data-ready=true]"),
    "token": ({"model": "smollm2", "text": DECODER_PROMPT, "view": "token", "token": 12},
              "canvas[data-testid=token-incoming][data-token='12']"),
    "neuron": ({"model": "smollm2", "text": DECODER_PROMPT, "view": "neuron", "layer": 9, "head": 4, "token": 12},
               "canvas[data-testid=neuron-canvas][data-query='12']"),
    "matrix": ({"model": "smollm2", "text": DECODER_PROMPT, "view": "matrix", "layer": 9, "head": 4, "mode": "scores"},
               "canvas[data-testid=matrix-canvas][data-mode=scores]"),
    "stats": ({"model": "minilm", "text": PROMPT, "view": "stats"}, "[data-testid=stats-plot][data-state=ready]"),
}


@contextmanager
def server(url: str | None, cache_dir: str | None):
    """A running app: the one at `url`, or a fresh `python -m app serve` stopped afterwards."""
    if url:
        yield url.rstrip("/")
        return
    with tempfile.TemporaryDirectory() as scratch, running_server(cache_dir or scratch, Path(scratch) / "server.log") as base:
        yield base


def take(page, base: str, name: str, state: dict, ready: str, errors: list[str]) -> Path:
    page.goto(f"{base}/?{urlencode(state)}")
    page.wait_for_function(READY, timeout=ANALYSIS_MS)
    page.wait_for_selector(ready, timeout=30_000)
    if ready.startswith("canvas"):
        wait_ink(page, ready)
    if name == "head":  # show hover isolation: the links of the chosen token only
        page.hover(ready, position=head_token_position(page, state["token"]))
    page.wait_for_timeout(SETTLE_MS)
    if errors:
        raise SystemExit(f"{name}: the page logged errors: {errors}")
    path = OUT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="base URL of a running Attention Atlas (default: start one)")
    parser.add_argument("--cache-dir", help="cache folder for the started server (keeps converted weights)")
    parser.add_argument("--only", nargs="*", choices=sorted(SHOTS), help="just these views")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with server(args.url, args.cache_dir) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=SCALE)
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        for name in args.only or SHOTS:
            state, ready = SHOTS[name]
            print(take(page, base, name, state, ready, errors))
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
